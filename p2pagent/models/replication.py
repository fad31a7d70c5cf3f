"""Replication policy (pure): which model versions this node should pull, and which it may drop.

Every node runs the same function over the same replicated view (registry + live members),
so they agree on who holds what without talking:

- The ``keep_versions`` newest versions of each model are *retained*. A retained version with
  ``replicas: K`` is meant for the K live members with the highest rendezvous score
  (highest-random-weight hashing of ``manifest_id`` and node name); with ``"all"``, for every
  live member. A node that dies drops out of the ranking, and the next one in line pulls:
  re-replication needs no coordinator. A join moves about K/N of the placements, no more.
- A node pulls the retained versions it is a target of, plus any version it needs right now
  (``in_use``: loaded, or wanted by a queued task).
- A node may drop a version only when that loses nothing: it is not needed locally, and
  either it is retained but every target already holds it complete, or it is superseded and
  the newest version of its model is fully replicated on its own targets.
- Versions held locally but absent from the view are reported as ``unknown``, never dropped:
  a node that has not synced the registry yet (just restarted) must not wipe its store.
  Deletions travel as registry tombstones and are the driver's business.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from p2pagent.models.manifest import ALL, Manifest, Replicas
from p2pagent.models.registry import Entry


@dataclass(frozen=True)
class VersionInfo:
    """One version as the replicated registry sees it."""

    name: str
    manifest_id: str
    version: int
    replicas: Replicas
    #: Nodes that hold it complete (as advertised).
    holders: frozenset[str]

    @classmethod
    def of(cls, manifest: Manifest, holders: Iterable[str]) -> VersionInfo:
        return cls(
            name=manifest.name,
            manifest_id=manifest.manifest_id,
            version=manifest.version,
            replicas=manifest.replicas,
            holders=frozenset(holders),
        )


@dataclass(frozen=True)
class ReplicationPlan:
    #: Manifest ids to pull, most at-risk first (fewest live holders, then newest).
    pull: tuple[str, ...]
    #: Manifest ids held here (complete or partial) that may be deleted.
    drop: tuple[str, ...]
    #: Held here but not in the view: left alone (see module docs).
    unknown: tuple[str, ...]
    #: Retained manifest id -> the live nodes meant to hold it.
    targets: Mapping[str, tuple[str, ...]]


def rendezvous_score(manifest_id: str, node: str) -> int:
    digest = hashlib.sha256(f"{manifest_id}\x00{node}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def rendezvous_targets(manifest_id: str, live: Iterable[str], k: int) -> tuple[str, ...]:
    """The ``k`` live nodes ranked highest for ``manifest_id`` (all of them if fewer)."""
    ranked = sorted(set(live), key=lambda n: (-rendezvous_score(manifest_id, n), n))
    return tuple(ranked[:k])


def replication_targets(version: VersionInfo, live: Iterable[str]) -> tuple[str, ...]:
    members = sorted(set(live))
    if version.replicas == ALL:
        return tuple(members)
    return rendezvous_targets(version.manifest_id, members, version.replicas)


def plan_replication(
    versions: Iterable[VersionInfo],
    live: Collection[str],
    me: str,
    held: Collection[str],
    *,
    partial: Collection[str] = (),
    in_use: Collection[str] = (),
    keep_versions: int = 1,
) -> ReplicationPlan:
    """Decides this node's pulls and drops (see module docs).

    ``live``: alive members (``me`` is added if missing); ``held``: manifest ids complete
    here; ``partial``: ids with some chunks here; ``in_use``: ids this node needs now.
    """
    members = set(live) | {me}
    held_set, partial_set, needed = set(held), set(partial) - set(held), set(in_use)
    local = held_set | partial_set
    by_name: dict[str, list[VersionInfo]] = defaultdict(list)
    known: dict[str, VersionInfo] = {}
    for v in versions:
        by_name[v.name].append(v)
        known[v.manifest_id] = v

    targets: dict[str, tuple[str, ...]] = {}
    pull: list[VersionInfo] = []
    drop: list[str] = []

    def replicated(v: VersionInfo) -> bool:
        return set(targets[v.manifest_id]) <= v.holders

    for group in by_name.values():
        group.sort(key=lambda v: (v.version, v.manifest_id), reverse=True)
        retained, superseded = group[:keep_versions], group[keep_versions:]
        for v in retained:
            targets[v.manifest_id] = replication_targets(v, members)
        for v in retained:
            mid = v.manifest_id
            mine = me in targets[mid]
            if (mine or mid in needed) and mid not in held_set:
                pull.append(v)
            elif mid in local and not mine and mid not in needed and replicated(v):
                drop.append(mid)
        newest = retained[0]
        for v in superseded:
            mid = v.manifest_id
            if mid in needed and mid not in held_set:
                pull.append(v)
            elif mid in local and mid not in needed and replicated(newest):
                drop.append(mid)

    pull.sort(key=lambda v: (len(v.holders & members), -v.version, v.manifest_id))
    unknown = sorted(mid for mid in local if mid not in known)
    return ReplicationPlan(
        pull=tuple(v.manifest_id for v in pull),
        drop=tuple(sorted(drop)),
        unknown=tuple(unknown),
        targets=targets,
    )


def under_replicated(entry: Entry, live: list[str]) -> bool:
    """Fewer live holders than the version asks for (``all`` always wants more).

    The policy names the nodes meant to hold a version (rendezvous ranking); a target pulls
    only while the version is short of copies, so a publish with ``replicas: 1`` is not
    copied to a target other than the publisher until the publisher is gone.
    """
    if entry.manifest.replicas == ALL:
        return True
    return len(entry.holders & set(live)) < entry.manifest.replicas
