"""Load hints on the tasks side: when a node speaks, what it says, and what a liar can do."""

from __future__ import annotations

import random
from collections import Counter

from p2pagent.membership.hints import MAX_HINT_QUEUED, HintTable
from p2pagent.tasks.config import TasksConfig
from p2pagent.tasks.hinting import HintPolicy, from_hint, robbable, to_hint
from p2pagent.tasks.load import LoadReport, ModelBacklog
from p2pagent.tasks.placement import make_placement
from p2pagent.tasks.spec import Task
from p2pagent.tasks.steal import StealPolicy, victim_shun_s

SERVES = frozenset({"m"})
CFG = TasksConfig(min_victim_backlog_s=0.05, report_max_age_s=10.0, steal_backoff_base_s=0.01)


def report(node: str, n: int, cost: float = 0.02, models: tuple[str, ...] = ("m",)) -> LoadReport:
    return LoadReport(
        node, 1, n * cost, n, 0, 1, 1.0, frozenset(models),
        (ModelBacklog("m", n, n * cost),) if n else (),
    )  # fmt: skip


def test_idle_or_steady_nodes_say_nothing_and_a_burst_is_urgent() -> None:
    p = HintPolicy(CFG)
    idle = to_hint(report("a", 0))
    assert p.decide(idle, 0.0) == (True, False)  # the first: peers learn our models
    assert all(p.decide(idle, t) == (False, False) for t in (1.0, 100.0, 10_000.0))
    assert p.refresh_at() is None  # idle: nothing to refresh, ever
    assert p.decide(to_hint(report("a", 1)), 101.0) == (False, False)  # below the bar
    assert p.decide(to_hint(report("a", 10)), 102.0) == (True, True)  # robbable: at once
    assert p.decide(to_hint(report("a", 12)), 102.1) == (False, False)  # +20 %: not material
    assert p.decide(to_hint(report("a", 20)), 102.2) == (True, True)  # doubled: at once
    assert p.refresh_at() == 102.2 + CFG.report_max_age_s / 2
    assert p.decide(to_hint(report("a", 20)), 107.2) == (True, False)  # refreshed while busy
    assert p.decide(to_hint(report("a", 9)), 107.3) == (True, False)  # halved: no hurry
    assert p.decide(to_hint(report("a", 0)), 108.0) == (True, False)  # drained
    assert p.decide(to_hint(report("a", 0, models=("m", "n"))), 109.0) == (True, False)


def test_hint_is_bounded_and_converts_back_without_task_ids() -> None:
    queued = tuple(ModelBacklog(f"m{i}", 1, float(i)) for i in range(20))
    r = LoadReport("a", 3, 5.0, 20, 2, 1, 1.0, frozenset({"m"}), queued, frozenset({"t1"}))
    h = to_hint(r)
    assert len(h.queued) == MAX_HINT_QUEUED and h.queued[0].model == "m19"  # the largest
    back = from_hint(h)
    assert back.held == frozenset() and back.backlog_s == 5.0 and back.models == {"m"}
    assert robbable(h, CFG) and not robbable(to_hint(report("a", 0)), CFG)


def steal_share(liar_backlog_n: int, rounds: int = 4000, n_peers: int = 8) -> Counter[str]:
    """Attempts per victim when a thief steals repeatedly from ``n_peers`` honest peers with
    equal backlogs and one liar claiming ``liar_backlog_n`` tasks that never hands any over."""
    rng = random.Random(7)
    p = StealPolicy("thief", rng, CFG)
    peers = [report(f"h{i}", 50) for i in range(n_peers)] + [report("liar", liar_backlog_n)]
    attempts: Counter[str] = Counter()
    now = 0.0
    for _ in range(rounds):
        a = p.decide(now, 0.0, {"m"}, peers)
        if a is not None:
            attempts[a.victim] += 1
            p.on_steal_result(a.victim, 0 if a.victim == "liar" else 1, now)
        now += 0.05
    return attempts


def test_a_peer_lying_about_its_load_cannot_attract_more_than_its_share() -> None:
    honest = steal_share(liar_backlog_n=50)  # a truthful-looking liar: it never gives work
    loud = steal_share(liar_backlog_n=10_000)  # claims the most work in the mesh
    total = sum(loud.values())
    fair = total / 9
    # Two random choices: without shunning the loudest peer would draw about 2/9 of all
    # attempts; each empty answer pushes it further away, so it gets less than its share.
    assert loud["liar"] < fair and honest["liar"] < fair
    assert all(loud[f"h{i}"] > fair for i in range(8))
    assert victim_shun_s(1, CFG) < victim_shun_s(5, CFG) <= CFG.report_max_age_s


def test_a_peer_claiming_too_much_or_nothing_moves_only_its_own_share_in_placement() -> None:
    n = 6
    task = Task("t", "a", "m", 1.0)
    for liar_backlog, bound in ((1e6, 0.0), (0.0, 2.2 / n)):
        p = make_placement("least_loaded")
        rng = random.Random(3)
        got: Counter[str] = Counter()
        for seq in range(1, 3001):
            peers = [LoadReport(f"p{i}", seq, 1.0, 0, 0, 1, 1.0, SERVES) for i in range(n)]
            peers.append(LoadReport("liar", seq, liar_backlog, 0, 0, 1, 1.0, SERVES))
            own = LoadReport("a", seq, 1.0, 0, 0, 1, 1.0, SERVES)
            got[p.choose(task, own, peers, 0.0, rng)] += 1
        total = sum(got.values())
        # Too much: it takes nothing, and the others share its part evenly (each well under
        # twice a fair share). Nothing: two random choices cap it near 2/N, never "all".
        assert got["liar"] / total <= bound
        assert max(v for k, v in got.items() if k != "liar") / total < 2.0 / (n + 1)


def test_an_absurd_claim_never_reaches_the_board() -> None:
    t = HintTable()
    lie = to_hint(report("liar", 10**9, cost=1e6))  # 10^15 s of backlog
    assert not t.offer(lie, is_member=True) and t.rejected["out_of_range"] == 1
