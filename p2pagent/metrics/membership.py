"""Membership metrics: members by state as this node sees them, and the SWIM counters."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from prometheus_client.metrics_core import Metric

from p2pagent.membership.messages import State
from p2pagent.metrics.families import counter, gauge, labelled_gauge


@dataclass(frozen=True)
class MembershipSnapshot:
    #: State value ("alive", "suspect", "dead", "left") -> members in it, this node included.
    members: Mapping[str, int]
    incarnation: int
    probes: int
    probe_failures: int
    suspicions: int
    refutations: int
    deaths_declared: int
    push_pulls: int
    awareness: int = 0
    late_ticks: int = 0
    corrections: int = 0


def render(s: MembershipSnapshot) -> Iterator[Metric]:
    # Every state is always present, so "dead > 0" alerts see a 0 rather than no series.
    yield labelled_gauge(
        "p2pagent_members",
        "Members this node knows, by state (itself included)",
        "state",
        [(state.value, s.members.get(state.value, 0)) for state in State],
    )
    yield gauge("p2pagent_membership_incarnation", "This node's incarnation", s.incarnation)
    yield counter("p2pagent_membership_probes", "Failure-detector probes sent", s.probes)
    yield counter(
        "p2pagent_membership_probe_failures",
        "Probes that got no answer, direct or indirect",
        s.probe_failures,
    )
    yield counter(
        "p2pagent_membership_suspicions", "Members this node began to suspect", s.suspicions
    )
    yield counter(
        "p2pagent_membership_refutations",
        "Times this node refuted a suspicion or death claim about itself",
        s.refutations,
    )
    yield counter(
        "p2pagent_membership_deaths_declared",
        "Members this node declared dead",
        s.deaths_declared,
    )
    yield counter(
        "p2pagent_membership_push_pulls", "Full state exchanges with a peer", s.push_pulls
    )
    yield gauge(
        "p2pagent_membership_awareness",
        "Lifeguard local health awareness: probe interval and timeout are stretched by 1 + it",
        s.awareness,
    )
    yield counter(
        "p2pagent_membership_late_ticks",
        "Probes extended because this node's own loop ran late (a starved CPU)",
        s.late_ticks,
    )
    yield counter(
        "p2pagent_membership_corrections",
        "Peers told a newer incarnation of a member they called suspect or dead (stale news)",
        s.corrections,
    )
