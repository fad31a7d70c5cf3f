"""The rules the SWIM core is assembled from, each tested on its own: which claim wins
(`precedence`), suspicion confirmations and the last look (`suspicion`), the member table's
peer index (`members`), the probe order (`probing`) and the join retry (`rejoin`)."""

from __future__ import annotations

import itertools
import random

import pytest

from p2pagent.membership import timing
from p2pagent.membership.config import MembershipConfig
from p2pagent.membership.members import Member, MemberTable
from p2pagent.membership.messages import State, Update
from p2pagent.membership.precedence import (
    Answer,
    alive_wins,
    answer_about_me,
    as_relayed,
    gone_wins,
    suspect_applies,
)
from p2pagent.membership.probing import ProbeOrder
from p2pagent.membership.rejoin import JOIN_RETRY_FIRST_S, JoinRetry
from p2pagent.membership.suspicion import Suspicion

CFG = MembershipConfig().validate()
A, S, D, L = State.ALIVE, State.SUSPECT, State.DEAD, State.LEFT


def member(state: State, incarnation: int = 5, name: str = "m") -> Member:
    return Member(name, name, incarnation, state, {}, 0.0)


def claim(state: State, incarnation: int = 5, origin: str = "o") -> Update:
    return Update("m", incarnation, state, origin, "m")


# ---- precedence ------------------------------------------------------------------------------

#: (known state, claim state) -> does a claim of the same incarnation take effect?
SAME_INCARNATION = {
    (A, A): False, (A, S): True, (A, D): True, (A, L): True,
    (S, A): False, (S, S): True, (S, D): True, (S, L): True,
    (D, A): False, (D, S): False, (D, D): False, (D, L): True,
    (L, A): False, (L, S): False, (L, D): False, (L, L): False,
}  # fmt: skip


def takes_effect(known: Member, c: Update) -> bool:
    if c.state is A:
        return alive_wins(known, c)
    if c.state is S:
        return suspect_applies(known, c)
    return gone_wins(known, c)


@pytest.mark.parametrize(("known", "said"), list(SAME_INCARNATION))
def test_which_claim_of_the_same_incarnation_wins(known: State, said: State) -> None:
    assert takes_effect(member(known), claim(said)) is SAME_INCARNATION[(known, said)]


@pytest.mark.parametrize(("known", "said"), list(itertools.product([A, S, D, L], repeat=2)))
def test_an_older_incarnation_never_wins_a_newer_one_revives_or_ends(
    known: State, said: State
) -> None:
    assert not takes_effect(member(known), claim(said, incarnation=4))
    newer = takes_effect(member(known), claim(said, incarnation=6))
    # A tombstone is only replaced by the member's own new life, or by its own goodbye.
    assert newer is (not known.gone or said is A or (known is D and said is L))


def test_claims_about_myself_are_answered_not_applied() -> None:
    assert answer_about_me(5, claim(A, 6), leaving=False) is Answer.OUTBID
    assert answer_about_me(5, claim(A, 5), leaving=False) is Answer.IGNORE
    assert answer_about_me(5, claim(S, 5), leaving=False) is Answer.REFUTE
    assert answer_about_me(5, claim(D, 7), leaving=False) is Answer.REFUTE
    assert answer_about_me(5, claim(S, 4), leaving=False) is Answer.REMIND
    assert answer_about_me(5, claim(D, 5), leaving=True) is Answer.IGNORE


def test_a_relayed_table_turns_deaths_into_suspicions_without_a_suspector() -> None:
    for state in (S, D):
        relayed = as_relayed(claim(state))
        assert (relayed.state, relayed.origin, relayed.incarnation) == (S, "", 5)
    assert as_relayed(claim(A)) == claim(A)
    assert as_relayed(claim(L)) == claim(L)


# ---- suspicion -------------------------------------------------------------------------------


def test_only_the_expected_independent_confirmations_shorten_a_suspicion() -> None:
    n = 100
    s = Suspicion.begin(5, "first", 10.0, CFG, n)
    assert s.k == timing.expected_confirmations(CFG.suspicion_mult, n) >= 1
    deadlines = [s.deadline()]
    assert deadlines[0] == 10.0 + s.hi
    assert not s.confirm("first")  # the suspector itself is not a confirmation
    assert not s.confirm("")  # nor a claim without a suspector
    for i in range(s.k):
        assert s.confirm(f"c{i}")
        deadlines.append(s.deadline())
    assert not s.confirm("one-too-many")
    assert s.confirmed() == s.k
    assert deadlines == sorted(deadlines, reverse=True) and len(set(deadlines)) == len(deadlines)
    assert deadlines[-1] == 10.0 + s.lo


def test_a_suspicion_without_a_suspector_counts_its_first_confirmer_as_none() -> None:
    s = Suspicion.begin(5, "", 0.0, CFG, 100)
    assert s.confirm("a") and s.confirmed() == 0
    assert s.confirm("b") and s.confirmed() == 1


def test_a_last_look_only_for_a_rumour_and_only_once() -> None:
    s = Suspicion.begin(5, "o", 0.0, CFG, 10)
    assert s.wants_last_look()
    s.checking = True
    assert not s.wants_last_look()
    s.checking, s.probed_silent = False, True
    assert not s.wants_last_look()


# ---- member table and probe order ------------------------------------------------------------


def test_the_peer_index_follows_every_state_change() -> None:
    rng = random.Random(7)
    me = member(A, name="me")
    table = MemberTable(me)
    for step in range(2000):
        name = f"n{rng.randrange(30)}"
        state = rng.choice([A, S, D, L])
        m = table.get(name)
        if m is None:
            m = member(state, name=name)
            table.add(m)
            table.moved(m, None)
        else:
            before, m.state = m.state, state
            table.moved(m, before)
        if step % 50 == 0 and rng.random() < 0.5 and not m.state.reachable:
            table.forget(name)
        known = [m for m in table if m is not me]
        assert sorted(table.peers) == sorted(m.name for m in known if m.state.reachable)
        assert set(table.dead) == {m.name for m in known if m.state is D}
        assert table.alive_count() == len(table.peers) + 1
        picked = table.sample_peers(rng, 3, exclude=table.peers[0] if table.peers else "")
        assert len(picked) == len(set(picked)) <= 3
        assert set(picked) <= set(table.peers) - set(table.peers[:1])


def test_each_probe_round_visits_every_reachable_peer_once_last_looks_first() -> None:
    table = MemberTable(member(A, name="me"))
    for name in "abcdef":
        m = member(S if name == "f" else A, name=name)
        table.add(m)
        table.moved(m, None)
    order, rng = ProbeOrder(), random.Random(3)
    rounds = [[order.next(table, rng) for _ in range(6)] for _ in range(2)]
    for r in rounds:
        assert sorted(m.name for m in r if m is not None) == list("abcdef")
    suspect = table["f"]
    suspect.suspicion = Suspicion.begin(5, "o", 0.0, CFG, 7)
    suspect.suspicion.checking = True
    order.look_again("f")
    first = order.next(table, rng)
    assert first is not None and first.name == "f"


# ---- join retry ------------------------------------------------------------------------------


def test_the_join_retry_doubles_up_to_the_cap_and_can_be_disarmed() -> None:
    retry = JoinRetry()
    assert retry.next_at == float("inf")
    retry.arm(10.0)
    assert retry.next_at == 10.0 + JOIN_RETRY_FIRST_S
    delays = []
    for _ in range(8):
        retry.again(10.0, max_delay=5.0)
        delays.append(retry.next_at - 10.0)
    assert delays[:3] == pytest.approx([JOIN_RETRY_FIRST_S * f for f in (2, 4, 8)])
    assert delays[-1] == 5.0
    retry.disarm()
    assert retry.next_at == float("inf")
