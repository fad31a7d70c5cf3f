"""Every state transition of the pure SWIM core, driven by hand with a fake clock."""

from __future__ import annotations

import itertools
import random

import pytest

from p2pagent.membership import timing
from p2pagent.membership.broadcasts import retransmit_limit
from p2pagent.membership.config import MembershipConfig
from p2pagent.membership.messages import Kind, Message, Send, State, Update
from p2pagent.membership.swim import Swim

CFG = MembershipConfig(dead_reap_s=100.0).validate()
#: After the suspicion timeout a member probes the suspect once more itself before declaring
#: it dead: the next probe slot plus the probe itself.
LAST_LOOK = 2 * CFG.probe_interval


def core(name: str, *others: str, cfg: MembershipConfig = CFG, seed: int = 1) -> Swim:
    c = Swim(name, name, cfg, random.Random(seed), now=0.0)
    c.restore([Update(o, 1, State.ALIVE, o, o) for o in others], 0.0)
    c.take_events()
    return c


def kinds(sends: list[Send]) -> list[tuple[Kind, str]]:
    return [(s.message.kind, s.address) for s in sends]


def run_until(c: Swim, t: float, now: float = 0.0) -> list[Send]:
    """Ticks the core at each of its deadlines up to ``t``; returns everything it sent."""
    out: list[Send] = []
    while True:
        due = c.next_deadline()
        if due > t:
            return out
        out += c.tick(max(now, due))
        now = max(now, due)


def first_probe(c: Swim) -> tuple[float, Send]:
    """Advances to the first probe and returns (time, the PING)."""
    t = c.next_deadline()
    for _ in range(20):
        for s in c.tick(t):
            if s.message.kind is Kind.PING:
                return t, s
        t = c.next_deadline()
    raise AssertionError("no probe sent")


def test_join_exchanges_full_state_both_ways() -> None:
    a = Swim("a", "a", CFG, random.Random(1), seeds=["b"])
    b = core("b", "c")
    [push] = a.join(0.0)
    assert (push.message.kind, push.address, push.message.join) == (Kind.PUSH_PULL, "b", True)
    [reply] = b.handle(push.message, 0.1)
    assert reply.message.kind is Kind.PUSH_PULL_REPLY and reply.address == "a"
    assert b.state_of("a") is State.ALIVE
    a.handle(reply.message, 0.2)
    assert {m.name for m in a.members()} == {"a", "b", "c"}
    assert a.state_of("c") is State.ALIVE


def test_a_join_no_seed_answered_is_retried_soon_and_stops_once_joined() -> None:
    # Seeds started at the same moment are often not listening yet: waiting a whole re-join
    # interval (5 s) for the next attempt kept a fresh mesh apart for seconds.
    a = Swim("a", "a", CFG, random.Random(1), seeds=["b"])
    assert len(a.join(0.0)) == 1
    joins = [
        t
        for t in (0.05 * i for i in range(1, 40))
        for s in a.tick(t)
        if s.message.kind is Kind.PUSH_PULL and s.address == "b" and s.message.join
    ]
    assert joins and joins[0] <= 0.15, joins  # first retry after ~0.1 s, then doubling
    gaps = [b - a for a, b in itertools.pairwise(joins)]
    assert all(g2 >= g1 for g1, g2 in itertools.pairwise(gaps)), gaps
    b = core("b")
    [push] = a.join(2.0)  # b is up now
    [reply] = b.handle(push.message, 2.0)
    a.handle(reply.message, 2.0)
    later = [s for t in (2.0 + 0.1 * i for i in range(1, 30)) for s in a.tick(t)]
    assert not [s for s in later if s.message.join], "joined: no more join attempts"


def test_ping_is_acked_and_ack_ends_the_probe_without_suspicion() -> None:
    a, b = core("a", "b"), core("b", "a")
    t, ping = first_probe(a)
    assert ping.address == "b" and ping.message.target == "b"
    [ack] = b.handle(ping.message, t)
    assert ack.message.kind is Kind.ACK and ack.message.seq == ping.message.seq
    a.awareness = 2
    a.handle(ack.message, t + 0.01)
    assert a.awareness == 1  # Lifeguard: a timely ack is a sign of good local health
    run_until(a, t + CFG.probe_interval)
    assert a.state_of("b") is State.ALIVE


def test_misdirected_ping_is_not_acked() -> None:
    b = core("b", "a")
    msg = Message(Kind.PING, "a", "a", seq=7, target="someone-else")
    assert b.handle(msg, 0.0) == []


def test_silent_target_gets_retry_and_indirect_probes_then_suspicion() -> None:
    a = core("a", "b", "c", "d")
    t, ping = first_probe(a)
    target = ping.address
    sends = run_until(a, t + CFG.probe_timeout, now=t)
    reqs = [s for s in sends if s.message.kind is Kind.PING_REQ]
    retries = [s for s in sends if s.message.kind is Kind.PING and s.address == target]
    assert len(retries) == 1
    assert reqs and all(s.address != target and s.message.target == target for s in reqs)
    run_until(a, t + CFG.probe_interval, now=t + CFG.probe_timeout)
    assert a.state_of(target) is State.SUSPECT
    # No nacks came back from the helpers: our own messages may be the ones lost.
    assert a.awareness == len(reqs)


def test_nacks_mean_the_target_is_the_problem_not_us() -> None:
    a = core("a", "b", "c")
    t, ping = first_probe(a)
    sends = run_until(a, t + CFG.probe_timeout, now=t)
    [req] = [s for s in sends if s.message.kind is Kind.PING_REQ]
    a.handle(Message(Kind.NACK, req.address, req.address, seq=req.message.seq), t + 0.6)
    run_until(a, t + CFG.probe_interval, now=t + 0.6)
    assert a.state_of(ping.address) is State.SUSPECT
    assert a.awareness == 0


def test_indirect_probe_forwards_the_ack() -> None:
    helper, b = core("h", "a", "b"), core("b", "a", "h")
    req = Message(Kind.PING_REQ, "a", "a", seq=41, target="b", target_address="b")
    [ping] = helper.handle(req, 0.0)
    assert ping.address == "b" and ping.message.kind is Kind.PING
    [ack] = b.handle(ping.message, 0.01)
    [forwarded] = helper.handle(ack.message, 0.02)
    assert forwarded.address == "a" and forwarded.message.kind is Kind.ACK
    assert forwarded.message.seq == 41


def test_indirect_prober_nacks_when_the_target_stays_silent() -> None:
    helper = core("h", "a", "b")
    helper.handle(Message(Kind.PING_REQ, "a", "a", seq=5, target="b", target_address="b"), 0.0)
    sends = run_until(helper, 0.45)
    nacks = [s for s in sends if s.message.kind is Kind.NACK]
    assert [(s.address, s.message.seq) for s in nacks] == [("a", 5)]


def test_a_helper_with_high_awareness_still_nacks_in_the_requesters_window() -> None:
    """The requester asks at its probe timeout and counts NACKs at its interval's end, the
    probe timeout later: a helper's own awareness must not push its NACK past that."""
    helper = core("h", "a", "b")
    helper.awareness = 3
    helper.handle(Message(Kind.PING_REQ, "a", "a", seq=5, target="b", target_address="b"), 0.0)
    sends = run_until(helper, CFG.probe_interval - CFG.probe_timeout - 0.01)
    nacks = [s for s in sends if s.message.kind is Kind.NACK]
    assert [(s.address, s.message.seq) for s in nacks] == [("a", 5)]


def test_suspicion_expires_into_death() -> None:
    a = core("a", "b", "c", "d", "e")
    a.handle(Message(Kind.GOSSIP, "c", "c", updates=(Update("b", 1, State.SUSPECT, "c"),)), 0.0)
    assert a.state_of("b") is State.SUSPECT
    n = a.alive_count()
    lo = timing.suspicion_min(CFG.suspicion_mult, n, CFG.probe_interval)
    hi = lo * CFG.suspicion_max_mult
    # Nobody answers in this test, so ``a``'s own failed probe of ``b`` may confirm the
    # suspicion: death comes no earlier than the minimum and no later than the maximum.
    run_until(a, lo - 0.01)
    assert a.state_of("b") is State.SUSPECT
    run_until(a, hi + LAST_LOOK + 0.01, now=lo - 0.01)
    assert a.state_of("b") is State.DEAD
    assert [e.state for e in a.take_events() if e.name == "b"][:2] == ["suspect", "dead"]


def test_independent_confirmations_shorten_the_suspicion() -> None:
    # Nobody answers ``a``'s probes here; without local health awareness that would not slow
    # its last look at ``b``.
    a = core("a", *"bcdefghij", cfg=MembershipConfig(dead_reap_s=100.0, awareness_max=0))
    n = a.alive_count()
    k = timing.expected_confirmations(CFG.suspicion_mult, n)
    assert k == 2
    lo = timing.suspicion_min(CFG.suspicion_mult, n, CFG.probe_interval)
    for origin in "cde":  # the first suspicion plus k independent confirmations
        upd = Update("b", 1, State.SUSPECT, origin)
        a.handle(Message(Kind.GOSSIP, origin, origin, updates=(upd,)), 0.0)
    # A repeated confirmation from the same member does not count twice.
    a.handle(Message(Kind.GOSSIP, "c", "c", updates=(Update("b", 1, State.SUSPECT, "c"),)), 0.0)
    run_until(a, lo - 0.01)
    assert a.state_of("b") is State.SUSPECT
    run_until(a, lo + LAST_LOOK + 0.01, now=lo - 0.01)
    assert a.state_of("b") is State.DEAD


def test_a_suspected_member_refutes_with_a_higher_incarnation() -> None:
    b = core("b", "a")
    before = b.incarnation
    sends = b.handle(
        Message(
            Kind.PING,
            "a",
            "a",
            seq=1,
            target="b",
            updates=(Update("b", before, State.SUSPECT, "a"),),
        ),
        0.0,
    )
    assert b.incarnation == before + 1
    assert b.awareness == 1
    # The refutation rides on the very ack (buddy system), so the suspicion ends at once.
    [ack] = sends
    assert any(
        u.name == "b" and u.state is State.ALIVE and u.incarnation == before + 1
        for u in ack.message.updates
    )


def test_alive_with_higher_incarnation_clears_suspicion_lower_is_ignored() -> None:
    a = core("a", "b", "c")
    a.handle(Message(Kind.GOSSIP, "c", "c", updates=(Update("b", 3, State.SUSPECT, "c"),)), 0.0)
    a.handle(Message(Kind.GOSSIP, "c", "c", updates=(Update("b", 3, State.ALIVE, "b", "b"),)), 0.1)
    assert a.state_of("b") is State.SUSPECT  # Suspect(i) beats Alive(i)
    a.handle(Message(Kind.GOSSIP, "c", "c", updates=(Update("b", 4, State.ALIVE, "b", "b"),)), 0.2)
    assert a.state_of("b") is State.ALIVE
    run_until(a, 1000.0)  # the old suspicion timer must not fire any more
    assert a.state_of("b") is not State.DEAD or a.member("b") is None


def test_dead_beats_alive_of_the_same_incarnation_and_a_new_life_revives() -> None:
    a = core("a", "b", "c")
    a.handle(Message(Kind.GOSSIP, "c", "c", updates=(Update("b", 1, State.DEAD, "c"),)), 0.0)
    assert a.state_of("b") is State.DEAD
    a.handle(Message(Kind.GOSSIP, "c", "c", updates=(Update("b", 1, State.ALIVE, "b", "b"),)), 0.1)
    assert a.state_of("b") is State.DEAD
    a.handle(Message(Kind.GOSSIP, "b", "b", updates=(Update("b", 2, State.ALIVE, "b", "b2"),)), 0.2)
    assert a.state_of("b") is State.ALIVE
    assert a.member("b").address == "b2"  # type: ignore[union-attr]


def test_a_member_that_restarts_outbids_claims_about_its_past_life() -> None:
    b = Swim("b", "b", CFG, random.Random(1), incarnation=5)
    b.handle(Message(Kind.GOSSIP, "a", "a", updates=(Update("b", 5, State.DEAD, "a"),)), 0.0)
    assert b.incarnation == 6


def test_graceful_leave_is_told_apart_from_failure() -> None:
    a, b = core("a", "b", "c"), core("b", "a", "c")
    sends = b.leave(0.0)
    assert b.member("b").state == "left"  # type: ignore[union-attr]
    to_a = [s for s in sends if s.address == "a"]
    assert to_a, "a leaving member tells others directly"
    a.handle(to_a[0].message, 0.01)
    assert a.state_of("b") is State.LEFT
    assert all(s.message.kind is not Kind.PING for s in run_until(b, 10.0))  # stops probing
    pings = [s for s in run_until(a, 10.0) if s.message.kind is Kind.PING]
    assert pings and all(s.address != "b" for s in pings)


def test_a_leave_heard_after_we_declared_the_member_dead_wins() -> None:
    # A member that missed the leave probes the leaver, finds it silent and declares it dead;
    # the leave reaching it later must still turn that into "left", or the mesh never agrees.
    a = core("a", "b", "c")
    a.handle(Message(Kind.GOSSIP, "c", "c", updates=(Update("b", 1, State.DEAD, "c"),)), 1.0)
    assert a.state_of("b") is State.DEAD
    a.handle(Message(Kind.GOSSIP, "c", "c", updates=(Update("b", 1, State.LEFT, "b"),)), 2.0)
    assert a.state_of("b") is State.LEFT
    a.handle(Message(Kind.GOSSIP, "c", "c", updates=(Update("b", 1, State.DEAD, "c"),)), 3.0)
    assert a.state_of("b") is State.LEFT  # and not back


def test_tombstones_are_reaped_after_the_reap_period() -> None:
    a = core("a", "b", "c")
    a.handle(Message(Kind.GOSSIP, "c", "c", updates=(Update("b", 1, State.DEAD, "c"),)), 0.0)
    run_until(a, CFG.dead_reap_s - 1)
    assert a.state_of("b") is State.DEAD
    run_until(a, CFG.dead_reap_s + 1, now=CFG.dead_reap_s - 1)
    assert a.member("b") is None


def test_push_pull_turns_remote_deaths_into_suspicions() -> None:
    a = core("a", "b", "c")
    table = (Update("a", 1, State.ALIVE, "a", "a"), Update("b", 1, State.DEAD, "b", "b"))
    a.handle(Message(Kind.PUSH_PULL_REPLY, "c", "c", members=table), 0.0)
    assert a.state_of("b") is State.SUSPECT


def test_push_pull_telling_us_we_are_dead_makes_us_refute() -> None:
    a = core("a", "b")
    table = (Update("a", 1, State.DEAD, "b", "a"),)
    a.handle(Message(Kind.PUSH_PULL, "b", "b", members=table), 0.0)
    assert a.incarnation == 2


def test_probing_a_suspect_carries_the_suspicion_to_it() -> None:
    a = core("a", "b")
    a.handle(Message(Kind.GOSSIP, "x", "x", updates=(Update("b", 1, State.SUSPECT, "x"),)), 0.0)
    _, ping = first_probe(a)
    assert ping.address == "b"
    assert ping.message.updates[0] == Update("b", 1, State.SUSPECT, "a")


def test_suspicions_learned_from_push_pull_tables_confirm_nothing() -> None:
    # A push-pull table says who is suspect, not who suspected: its sender most likely only
    # relayed the rumour. Counting each sender as an independent confirmation cut the timeout
    # to the minimum (and re-broadcast each "confirmation"), so a live member that could not
    # refute within the minimum was declared dead: the false positive of issue 3.
    a = core("a", *"bcdefghij")
    n = a.alive_count()
    lo = timing.suspicion_min(CFG.suspicion_mult, n, CFG.probe_interval)
    a.handle(Message(Kind.GOSSIP, "c", "c", updates=(Update("b", 1, State.SUSPECT, "c"),)), 0.0)
    gossiped: list[Update] = []
    for sender in "defg":
        table = (Update("b", 1, State.SUSPECT, "b", "b"),)
        a.handle(Message(Kind.PUSH_PULL_REPLY, sender, sender, members=table), 0.1)
        for send in a.tick(a.next_deadline()):
            gossiped += [u for u in send.message.updates if u.name == "b"]
    assert gossiped and {u.origin for u in gossiped} == {"c"}  # no origin was made up
    # At most ``a``'s own failed probe of ``b`` confirms: the timeout stays well above lo.
    run_until(a, lo + LAST_LOOK + 0.5, now=0.1)
    assert a.state_of("b") is State.SUSPECT


def test_gossip_to_a_suspect_tells_it_so() -> None:
    # Not only the buddy probe: every message to a suspect may carry its suspicion (as in
    # memberlist), so a lost probe or two do not keep it from refuting in time.
    a = core("a", "b")
    a.handle(Message(Kind.GOSSIP, "x", "x", updates=(Update("b", 1, State.SUSPECT, "x"),)), 0.0)
    sends = [s for s in run_until(a, 1.0) if s.message.kind is Kind.GOSSIP]
    assert sends and all(s.address == "b" for s in sends)
    assert Update("b", 1, State.SUSPECT, "x") in sends[0].message.updates


def test_a_member_that_missed_the_refutation_takes_a_last_look_before_declaring_death() -> None:
    # ``b`` was suspected at incarnation 1 and refuted (it is at 2), but the refutation's
    # epidemic missed ``a``. When a's suspicion times out, ``a`` probes ``b`` itself with the
    # suspicion; ``b`` answers with its current incarnation, and ``a`` never declares it dead.
    cfg = MembershipConfig(dead_reap_s=100.0, awareness_max=0).validate()
    a = core("a", "b", "c", cfg=cfg)
    b = Swim("b", "b", cfg, random.Random(2), incarnation=2, now=0.0)
    b.restore([Update("a", 1, State.ALIVE, "a", "a"), Update("c", 1, State.ALIVE, "c", "c")], 0.0)
    a.handle(Message(Kind.GOSSIP, "c", "c", updates=(Update("b", 1, State.SUSPECT, "c"),)), 0.0)
    # Three members expect no confirmations, so the timeout is the minimum. Until then every
    # message to ``b`` is lost, but a's probes of it succeed through ``c`` (an indirect ack
    # carries no refutation): ``a`` holds the rumour only, its own probes never failed.
    timeout = timing.suspicion_min(cfg.suspicion_mult, 3, cfg.probe_interval)
    buddy = Update("b", 1, State.SUSPECT, "a")
    now, answered = 0.0, False
    while now < timeout + LAST_LOOK + 0.01 and not answered:
        now = a.next_deadline()
        for send in a.tick(now):
            if send.address != "b":
                continue
            if now < timeout:
                if send.message.kind is Kind.PING:
                    a.handle(Message(Kind.ACK, "c", "c", seq=send.message.seq), now + 0.01)
                continue
            assert a.state_of("b") is State.SUSPECT  # timed out, yet not declared dead
            if send.message.kind is Kind.PING and send.message.updates[:1] == (buddy,):
                for reply in b.handle(send.message, now):
                    answered = True
                    a.handle(reply.message, now + 0.01)
    assert answered and b.incarnation == 2  # a stale claim: no new incarnation needed
    assert a.member("b") == b.member("b")  # alive at incarnation 2
    assert "dead" not in [e.state for e in a.take_events() if e.name == "b"]


def test_updates_are_piggybacked_a_bounded_number_of_times() -> None:
    cfg = MembershipConfig(retransmit_mult=2).validate()
    a = core("a", "b", "c", cfg=cfg)
    a.handle(Message(Kind.GOSSIP, "c", "c", updates=(Update("d", 1, State.ALIVE, "d", "d"),)), 0.0)
    carried = 0
    for t in range(1, 40):
        for s in a.tick(float(t)):
            carried += sum(1 for u in s.message.updates if u.name == "d" and u.state is State.ALIVE)
    assert carried == retransmit_limit(2, 4)


def test_rejoin_targets_dead_members_so_partitions_heal() -> None:
    cfg = MembershipConfig(rejoin_interval=1.0).validate()
    a = core("a", "b", "c", cfg=cfg)
    for name in ("b", "c"):
        a.handle(Message(Kind.GOSSIP, "x", "x", updates=(Update(name, 1, State.DEAD, "x"),)), 0.0)
    sends = run_until(a, 5.0)
    pushes = {s.address for s in sends if s.message.kind is Kind.PUSH_PULL}
    assert pushes & {"b", "c"}


def test_rejoin_tries_seeds_that_are_not_members() -> None:
    cfg = MembershipConfig(rejoin_interval=1.0).validate()
    a = Swim("a", "a", cfg, random.Random(3), seeds=["s1"], now=0.0)
    sends = run_until(a, 5.0)
    assert any(s.address == "s1" and s.message.kind is Kind.PUSH_PULL for s in sends)


def test_tag_changes_spread_with_a_new_incarnation() -> None:
    a = core("a", "b")
    a.set_tags({"zone": "x"})
    assert a.incarnation == 2
    b = core("b", "a")
    sends = run_until(a, 1.0)
    for s in sends:
        if s.address == "b":
            b.handle(s.message, 1.0)
    assert b.member("a").tags == {"zone": "x"}  # type: ignore[union-attr]


@pytest.mark.parametrize("awareness", [0, 3])
def test_local_health_stretches_the_probe_interval(awareness: int) -> None:
    a, b = core("a", "b"), core("b", "a")
    a.awareness = awareness
    t, ping = first_probe(a)
    [ack] = b.handle(ping.message, t)
    a.handle(ack.message, t)
    now = t
    while True:
        now = a.next_deadline()
        if any(s.message.kind is Kind.PING for s in a.tick(now)):
            break
    assert now - t == pytest.approx(timing.scaled(CFG.probe_interval, awareness))


def test_a_stale_suspicion_is_corrected_by_the_next_member_it_reaches() -> None:
    # ``b`` was suspected at incarnation 1 and refuted (it is at 2); ``c`` heard the refutation,
    # ``a`` adopted the old rumour after the refutation's epidemic had died out. Before, nothing
    # told ``a`` until its suspicion timed out (6x the minimum with no confirmations: 43 s at
    # N = 64, the 40.8 s joins of issue 28). Now the first member ``a`` passes the rumour to
    # answers it with b's newer life, and ``a`` is corrected within its first gossip round.
    a = core("a", "b", "c")
    c = core("c", "a", "b")
    c.handle(Message(Kind.GOSSIP, "b", "b", updates=(Update("b", 2, State.ALIVE, "b", "b"),)), 0.0)
    a.handle(Message(Kind.GOSSIP, "x", "x", updates=(Update("b", 1, State.SUSPECT, "x"),)), 0.0)
    assert a.state_of("b") is State.SUSPECT
    to_c = [s for s in run_until(a, 1.0) if s.address == "c"]
    assert to_c
    answers = c.handle(to_c[0].message, 0.5)
    assert kinds(answers)[:1] == [(Kind.GOSSIP, "a")]
    assert Update("b", 2, State.ALIVE, "b", "b") == answers[0].message.updates[0]
    assert c.counters.corrections == 1
    assert c.state_of("b") is State.ALIVE  # the stale claim changed nothing at ``c``
    a.handle(answers[0].message, 0.6)
    assert a.member("b") == c.member("b")  # alive at incarnation 2, 0.6 s in
    assert a.state_of("b") is State.ALIVE


def test_only_outdated_claims_are_answered() -> None:
    # A suspicion of the incarnation we know is news, not a mistake; an alive claim of an old
    # incarnation harms nobody: neither is answered. A suspicion of this member itself is
    # refuted back to its sender directly.
    c = core("c", "a", "b")
    assert (
        c.handle(Message(Kind.GOSSIP, "a", "a", updates=(Update("b", 1, State.SUSPECT, "a"),)), 0.0)
        == []
    )
    c.handle(Message(Kind.GOSSIP, "b", "b", updates=(Update("b", 3, State.ALIVE, "b", "b"),)), 0.1)
    assert (
        c.handle(
            Message(Kind.GOSSIP, "a", "a", updates=(Update("b", 2, State.ALIVE, "b", "b"),)), 0.2
        )
        == []
    )
    assert c.counters.corrections == 0
    sends = c.handle(
        Message(Kind.GOSSIP, "a", "a", updates=(Update("c", 1, State.SUSPECT, "a"),)), 0.3
    )
    assert kinds(sends) == [(Kind.GOSSIP, "a")]
    assert sends[0].message.updates[0] == Update("c", 2, State.ALIVE, "c", "c")
    # From a sender we do not count as a member: no correction (it gets a push-pull instead).
    sends = c.handle(
        Message(Kind.GOSSIP, "z", "z", updates=(Update("b", 1, State.DEAD, "z"),)), 0.4
    )
    assert [s.message.kind for s in sends] == [Kind.PUSH_PULL]


def test_a_rumour_of_a_refuted_suspicion_ends_with_an_early_look() -> None:
    # ``b`` refuted (it is at 2); the refutation missed ``a``, which holds the rumour of
    # incarnation 1 and nothing confirms it, so its deadline is the longest timeout. Once the
    # minimum has passed, ``a`` probes ``b`` next itself (buddy included) rather than waiting
    # for its round-robin turn or the deadline, and b's answer ends the suspicion.
    cfg = MembershipConfig(dead_reap_s=100.0, awareness_max=0).validate()
    others = ["b"] + [f"m{i:02}" for i in range(28)]
    a = core("a", *others, cfg=cfg, seed=3)
    b = Swim("b", "b", cfg, random.Random(2), incarnation=2, now=0.0)
    b.restore([Update(o, 1, State.ALIVE, o, o) for o in ["a", *others[1:]]], 0.0)
    a.handle(
        Message(Kind.GOSSIP, "m00", "m00", updates=(Update("b", 1, State.SUSPECT, "m00"),)), 0.0
    )
    lo = timing.suspicion_min(cfg.suspicion_mult, 30, cfg.probe_interval)
    assert lo < 0.5 * lo * cfg.suspicion_max_mult  # the deadline is well past the minimum
    buddy = Update("b", 1, State.SUSPECT, "a")
    now, alive_at = 0.0, None
    while now < lo + 3 * cfg.probe_interval and alive_at is None:
        now = a.next_deadline()
        for send in a.tick(now):
            if send.message.kind is not Kind.PING:
                continue
            if send.address != "b":
                a.handle(Message(Kind.ACK, send.name, send.address, seq=send.message.seq), now)
            elif now < lo:  # acked by way of another member: no refutation comes with it
                a.handle(Message(Kind.ACK, "m01", "m01", seq=send.message.seq), now)
            elif send.message.updates[:1] == (buddy,):
                for reply in b.handle(send.message, now):
                    a.handle(reply.message, now + 0.01)
        if a.state_of("b") is State.ALIVE:
            alive_at = now
    assert alive_at is not None and lo <= alive_at <= lo + 2 * cfg.probe_interval
    assert a.member("b") == b.member("b")
    assert a.counters.deaths_declared == 0
