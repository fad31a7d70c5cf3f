"""Pull planner: spreading over holders, pipeline limits, corrupt and failing holders,
timeouts, resume, rarest-first swarming and the endgame."""

from __future__ import annotations

import copy
import io
import random
from collections import Counter
from collections.abc import Callable

import pytest

from p2pagent.errors import InvalidArgument
from p2pagent.models.config import ModelsConfig
from p2pagent.models.manifest import build_manifest
from p2pagent.models.transfer import ChunkResult, HolderState, PullPlan, Request

from .conftest import CHUNK, blob

N = 48
DATA = blob(CHUNK * (N - 1) + 999, seed=3)
MANIFEST = build_manifest(
    "llm", "safetensors", io.BytesIO(DATA), version=1, created_unix=0.0, chunk_size=CHUNK
)
CFG = ModelsConfig(
    pipeline_depth=4,
    batch_chunks=2,
    max_inflight_chunks=64,
    stall_timeout_s=10.0,
    holder_backoff_s=1.0,
    holder_backoff_max_s=8.0,
    max_holder_failures=3,
    endgame_copies=2,
)


def chunk(i: int) -> bytes:
    return DATA[i * CHUNK : (i + 1) * CHUNK]


Source = Callable[[str, int], bytes | None]


def honest(node: str, i: int) -> bytes | None:
    return chunk(i)


class Sim:
    """Drives one plan: requests go out, a random share of outstanding chunks arrives each
    step; checks the pipeline limits after every step."""

    def __init__(self, plan: PullPlan, source: Source = honest, seed: int = 0) -> None:
        self.plan = plan
        self.source = source
        self.rng = random.Random(seed)
        self.outstanding: list[tuple[str, int]] = []
        self.now = 0.0
        self.sent: list[Request] = []
        self.results: Counter[ChunkResult] = Counter()

    def step(self) -> None:
        reqs = self.plan.next_requests(self.now)
        for r in reqs:
            assert 1 <= len(r.indices) <= CFG.batch_chunks
            self.outstanding.extend((r.node, i) for i in r.indices)
        self.sent.extend(reqs)
        per_node = Counter(node for node, _ in self.outstanding)
        assert max(per_node.values(), default=0) <= CFG.pipeline_depth
        assert len(self.outstanding) <= CFG.max_inflight_chunks
        arriving = [x for x in self.outstanding if self.rng.random() < 0.5]
        for node, i in arriving:
            self.outstanding.remove((node, i))
            data = self.source(node, i)
            if data is None:
                self.plan.on_missing(node, [i], self.now)
                continue
            self.results[self.plan.on_chunk(node, i, self.plan.verify(i, data), self.now)] += 1
        self.now += 0.1

    def run(self, steps: int = 2000) -> None:
        for _ in range(steps):
            if self.plan.is_complete:
                return
            self.step()
        raise AssertionError(f"pull did not complete: {self.plan.progress()}")

    def fail(self, node: str) -> None:
        self.outstanding = [(n, i) for n, i in self.outstanding if n != node]
        self.plan.on_holder_failed(node, self.now)


def plan(have: set[int] | None = None, seed: int = 0, cfg: ModelsConfig = CFG) -> PullPlan:
    return PullPlan(MANIFEST, have or set(), random.Random(seed), cfg)


def test_first_round_spreads_over_all_holders() -> None:
    p = plan()
    for node in "abcd":
        p.add_holder(node)
    reqs = p.next_requests(0.0)
    per_node = Counter()
    for r in reqs:
        per_node[r.node] += len(r.indices)
    assert per_node == dict.fromkeys("abcd", CFG.pipeline_depth)
    asked = [i for r in reqs for i in r.indices]
    assert len(asked) == len(set(asked))  # no chunk asked twice outside the endgame
    assert p.progress().inflight_chunks == 16


def test_multi_source_completes_with_balanced_load() -> None:
    p = plan()
    for node in "abcd":
        p.add_holder(node)
    sim = Sim(p)
    sim.run()
    got = p.progress().received_from
    assert sum(got.values()) == N
    assert set(got) == set("abcd")
    assert min(got.values()) >= N // 8
    assert p.progress().have_bytes == len(DATA)
    assert p.next_requests(sim.now) == []


def test_global_inflight_cap() -> None:
    p = plan(cfg=ModelsConfig(pipeline_depth=8, batch_chunks=4, max_inflight_chunks=10))
    for node in "abcd":
        p.add_holder(node)
    reqs = p.next_requests(0.0)
    assert sum(len(r.indices) for r in reqs) == 10


def test_batches_wait_for_whole_slots() -> None:
    p = plan()
    p.add_holder("a")
    (r1, r2) = p.next_requests(0.0)
    assert len(r1.indices) == len(r2.indices) == 2
    assert p.on_chunk("a", r1.indices[0], True, 1.0) is ChunkResult.ACCEPTED
    assert p.next_requests(1.0) == []  # one free slot: wait for a batch's worth
    p.on_chunk("a", r1.indices[1], True, 1.0)
    (r3,) = p.next_requests(1.0)
    assert r3.node == "a" and len(r3.indices) == 2


@pytest.mark.parametrize(
    ("seed", "cfg"),
    [
        (seed, ModelsConfig(pipeline_depth=4, batch_chunks=2, max_inflight_chunks=max_inflight))
        for seed in range(4)
        for max_inflight in (6, 64)  # the pull's budget binding, and not
    ],
)
def test_may_ask_is_false_only_where_a_turn_would_send_nothing(
    seed: int, cfg: ModelsConfig
) -> None:
    """The driver skips the planning turn after a landed chunk when ``may_ask`` says no: such
    a turn must never have sent a call (checked on a copy of the plan after every chunk)."""
    p = plan(seed=seed, cfg=cfg)
    for node in "abc":
        p.add_holder(node)
    rng = random.Random(seed)
    outstanding: list[tuple[str, int]] = []
    now, skipped, asked = 0.0, 0, 0
    turn = True
    while not p.is_complete:
        if turn:
            for r in p.next_requests(now):
                outstanding.extend((r.node, i) for i in r.indices)
        rng.shuffle(outstanding)
        node, i = outstanding.pop()
        p.on_chunk(node, i, True, now)
        turn = p.may_ask(node)
        if turn:
            asked += 1
        else:
            skipped += 1
            assert copy.deepcopy(p).next_requests(now) == []
        now += 0.01
        assert now < 200, p.progress()
    if cfg.max_inflight_chunks >= 3 * cfg.pipeline_depth:
        assert skipped > asked / 4  # a turn per chunk no more


def test_corrupt_holder_is_banned_and_pull_completes() -> None:
    def evil(node: str, i: int) -> bytes | None:
        return b"\x00" * len(chunk(i)) if node == "evil" else chunk(i)

    p = plan()
    for node in ("a", "evil", "b"):
        p.add_holder(node)
    sim = Sim(p, evil)
    sim.run()
    assert "evil" in p.banned and "verification" in p.banned["evil"]
    assert p.holder_state("evil", sim.now) is HolderState.BANNED
    assert sim.results[ChunkResult.CORRUPT] >= 1
    assert "evil" not in p.progress().received_from
    first_corrupt = next(i for i, r in enumerate(sim.sent) if r.node == "evil")
    # Once caught, evil is never asked again (at most its first batches went out).
    assert sum(1 for r in sim.sent[first_corrupt:] if r.node == "evil") <= 2
    p.add_holder("evil")  # fresh holdings news does not lift the ban
    assert p.holder_state("evil", sim.now) is HolderState.BANNED


def test_holder_failure_requeues_and_backs_off() -> None:
    p = plan()
    p.add_holder("a")
    p.add_holder("b")
    reqs = p.next_requests(0.0)
    owed_by_a = {i for r in reqs if r.node == "a" for i in r.indices}
    assert owed_by_a
    p.on_holder_failed("a", 0.5)
    assert p.holder_state("a", 0.5) is HolderState.BACKOFF
    assert p.next_deadline() == 1.5
    # b is full; nothing goes to a while it backs off.
    assert p.next_requests(0.6) == []
    for r in reqs:
        if r.node == "b":
            for i in r.indices:
                p.on_chunk("b", i, True, 0.7)
    again = p.next_requests(0.7)
    assert {r.node for r in again} == {"b"}
    assert owed_by_a <= {i for r in again for i in r.indices}
    assert p.holder_state("a", 1.5) is HolderState.ACTIVE
    assert any(r.node == "a" for r in p.next_requests(1.5))
    assert p.progress().holder_failures == 1


def test_repeated_failures_ban_holder_and_stall() -> None:
    p = plan()
    p.add_holder("a")
    now = 0.0
    for _ in range(CFG.max_holder_failures):
        assert p.next_requests(now)
        p.on_holder_failed("a", now)
        now += 100.0
    assert p.holder_state("a", now) is HolderState.BANNED
    assert "3 times" in p.banned["a"]
    assert p.next_requests(now) == []
    assert p.is_stalled
    p.add_holder("b", {0, 1})
    assert not p.is_stalled


def test_failure_mid_simulation_still_completes() -> None:
    p = plan()
    for node in "abc":
        p.add_holder(node)
    sim = Sim(p, seed=4)
    for _ in range(5):
        sim.step()
    sim.fail("b")
    p.remove_holder("c")
    sim.outstanding = [(n, i) for n, i in sim.outstanding if n != "c"]
    sim.run()
    assert p.progress().received_from.keys() <= {"a", "b"}


def test_stalled_holder_times_out() -> None:
    p = plan()
    p.add_holder("slow")
    p.add_holder("b")
    reqs = p.next_requests(0.0)
    slow = {i for r in reqs if r.node == "slow" for i in r.indices}
    assert len(slow) == CFG.pipeline_depth
    assert p.next_deadline() == CFG.stall_timeout_s
    for r in reqs:
        if r.node == "b":
            for i in r.indices:
                p.on_chunk("b", i, True, 5.0)
    p.next_requests(5.0)  # b gets its next batches; its stall clock restarted at 5.0
    assert p.next_deadline() == CFG.stall_timeout_s
    assert p.next_requests(9.9) == []
    assert p.holder_state("slow", 9.9) is HolderState.ACTIVE
    assert p.next_requests(10.0) == []  # b is still full
    assert p.holder_state("slow", 10.0) is HolderState.BACKOFF
    assert p.progress().holder_failures == 1
    assert p.progress().inflight_chunks == CFG.pipeline_depth  # only b's: slow's are pending
    # The rest comes from b alone (slow backs off, then is asked again, never answers).
    now, got = 10.0, set()
    while not p.is_complete:
        for r in p.next_requests(now):
            if r.node == "b":
                for i in r.indices:
                    got.add(i)
                    p.on_chunk("b", i, True, now)
        now += 1.0
    assert slow <= got
    # A late arrival from the slow holder is still good data, just not needed any more.
    assert p.on_chunk("slow", next(iter(slow)), True, now) is ChunkResult.DUPLICATE


def test_progress_keeps_a_busy_holder_alive() -> None:
    p = plan(cfg=ModelsConfig(pipeline_depth=2, batch_chunks=1, stall_timeout_s=10.0))
    p.add_holder("a")
    now = 0.0
    while not p.is_complete:
        for r in p.next_requests(now):
            for i in r.indices:
                now += 9.0  # each chunk takes most of the timeout; the whole pull far more
                p.on_chunk("a", i, True, now)
    assert p.progress().holder_failures == 0
    assert now > 10 * CFG.stall_timeout_s


def test_resume_from_partial_have() -> None:
    have = set(range(0, N, 2))
    p = plan(have)
    assert p.progress().have_chunks == N // 2
    p.add_holder("a")
    sim = Sim(p)
    sim.run()
    asked = [i for r in sim.sent for i in r.indices]
    assert sorted(asked) == list(range(1, N, 2))


def test_missing_chunk_goes_elsewhere() -> None:
    def partial(node: str, i: int) -> bytes | None:
        return None if node == "liar" and i % 2 else chunk(i)

    p = plan()
    p.add_holder("liar")
    p.add_holder("a")
    Sim(p, partial).run()
    assert p.is_complete


def test_missing_everywhere_stalls() -> None:
    p = plan()
    p.add_holder("a", {0, 1, 2})
    reqs = p.next_requests(0.0)
    assert {i for r in reqs for i in r.indices} == {0, 1, 2}
    p.on_missing("a", [0, 1, 2], 0.1)
    assert p.is_stalled
    assert p.next_requests(0.2) == []
    assert p.next_deadline() is None


def test_rarest_first() -> None:
    p = plan()
    common = set(range(N // 2))
    p.add_holder("a")  # everything
    p.add_holder("b", common)  # half
    reqs = p.next_requests(0.0)
    from_a = {i for r in reqs if r.node == "a" for i in r.indices}
    assert from_a and not from_a & common  # a is asked for what only a has


def test_pullers_of_one_publisher_diverge() -> None:
    firsts = []
    for seed in range(4):
        p = plan(seed=seed)
        p.add_holder("publisher")
        firsts.append({i for r in p.next_requests(0.0) for i in r.indices})
    assert len(set(map(frozenset, firsts))) == 4


def test_four_pullers_exchange_chunks() -> None:
    """One publisher, four pullers advertising partial holdings: the publisher serves little
    more than one copy; the pullers serve each other the rest."""
    names = ["p0", "p1", "p2", "p3"]
    plans = {n: plan(seed=k) for k, n in enumerate(names)}
    for pl in plans.values():
        pl.add_holder("pub")
    outstanding: list[tuple[str, str, int]] = []  # puller, holder, index
    served: Counter[str] = Counter()
    for step in range(500):
        if all(pl.is_complete for pl in plans.values()):
            break
        now = step * 0.1
        for n, pl in plans.items():
            for other in names:
                if other != n:
                    pl.add_holder(other, plans[other].have)
            for r in pl.next_requests(now):
                outstanding.extend((n, r.node, i) for i in r.indices)
        # The publisher's uplink carries 4 chunks a step; each puller's 2.
        budget = {"pub": 4, **dict.fromkeys(names, 2)}
        kept = []
        for n, holder, i in outstanding:
            if budget[holder] > 0:
                budget[holder] -= 1
                served[holder] += 1
                assert plans[n].on_chunk(holder, i, True, now) is not ChunkResult.CORRUPT
            else:
                kept.append((n, holder, i))
        outstanding = kept
    assert all(pl.is_complete for pl in plans.values())
    assert served["pub"] < 2 * N  # without swarming it would be 4 * N
    assert sum(served[n] for n in names) > 2 * N


def swarm(lag_steps: int, named: bool) -> Counter[str]:
    """Four pullers of a publisher that uploads 4 chunks a step; each puller sees the
    others' holdings ``lag_steps`` late (advertisement and gossip delay). Chunks each holder
    served."""
    names = ["p0", "p1", "p2", "p3"]
    plans = {
        n: PullPlan(MANIFEST, set(), random.Random(k), CFG, name=n if named else "")
        for k, n in enumerate(names)
    }
    for pl in plans.values():
        pl.add_holder("pub")
    history: list[dict[str, frozenset[int]]] = []
    outstanding: list[tuple[str, str, int]] = []  # puller, holder, index
    served: Counter[str] = Counter()
    for step in range(1000):
        if all(pl.is_complete for pl in plans.values()):
            return served
        now = step * 0.1
        history.append({n: pl.have for n, pl in plans.items()})
        seen = history[max(0, len(history) - 1 - lag_steps)]
        for n, pl in plans.items():
            for other in names:
                if other != n and (step >= lag_steps or seen[other]):
                    # Pulls advertise at once, even with nothing yet (seen lag_steps late).
                    pl.add_holder(other, seen[other], now)
            for r in pl.next_requests(now):
                outstanding.extend((n, r.node, i) for i in r.indices)
        budget = {"pub": 4, **dict.fromkeys(names, 4)}
        kept = []
        for n, holder, i in outstanding:  # first come, first served: a FIFO uplink
            if budget[holder] > 0:
                budget[holder] -= 1
                served[holder] += 1
                assert plans[n].on_chunk(holder, i, True, now) is not ChunkResult.CORRUPT
            else:
                kept.append((n, holder, i))
        outstanding = kept
    raise AssertionError("swarm did not complete")


def test_shares_keep_the_publisher_near_one_copy_despite_lagging_holdings() -> None:
    """With holdings seen late, random order alone makes the publisher send many chunks
    twice; with shares among named fellow pullers it sends little more than one copy (the
    excess is the first steps, before the pullers know of each other)."""
    assert swarm(lag_steps=0, named=True)["pub"] == N
    assert swarm(lag_steps=2, named=True)["pub"] <= 1.2 * N
    unshared = swarm(lag_steps=5, named=False)
    shared = swarm(lag_steps=5, named=True)
    assert shared["pub"] <= 0.8 * unshared["pub"], (shared, unshared)


def test_the_publisher_is_asked_for_this_nodes_share_until_a_fellow_stops_advancing() -> None:
    cfg = ModelsConfig(pipeline_depth=N, batch_chunks=N, max_inflight_chunks=N)
    p = PullPlan(MANIFEST, set(), random.Random(0), cfg, name="p0")
    p.add_holder("pub")
    p.add_holder("p1", set(), now=0.0)  # a fellow that has nothing yet
    first = {i for r in p.next_requests(0.0) for i in r.indices}
    assert 0 < len(first) < N  # p0's share only: p1 fetches the rest
    for i in first:
        p.on_chunk("pub", i, True, 0.5)
    assert p.next_requests(1.0) == []  # the rest is p1's: wait for it
    p.add_holder("p1", {9}, now=1.0)  # p1 advances: still a fellow
    later = CFG.fellow_wait_s + 0.5
    assert {i for r in p.next_requests(later) for i in r.indices} == {9}  # from p1
    p.on_chunk("p1", 9, True, later)
    # p1 has advertised nothing new for fellow_wait_s: no fellow any more.
    rest = {i for r in p.next_requests(1.0 + cfg.fellow_wait_s) for i in r.indices}
    assert rest == set(range(N)) - first - {9}


def test_a_fellow_that_never_delivers_does_not_stall_the_pull() -> None:
    """p1 advertises one chunk and is never asked again (it stalls): p0 still completes,
    taking p1's share from the publisher once nothing else is in flight."""
    p = PullPlan(MANIFEST, set(), random.Random(0), CFG, name="p0")
    p.add_holder("pub")
    p.add_holder("p1", {0})
    sim = Sim(p, source=lambda node, i: None if node == "p1" else chunk(i))
    sim.run()
    assert p.progress().received_from.get("pub") == N


def test_endgame_duplicates_the_tail() -> None:
    p = plan(have=set(range(N - 2)))
    p.add_holder("slow")
    reqs = p.next_requests(0.0)
    assert reqs == [Request("slow", (reqs[0].indices))]
    tail = set(reqs[0].indices)
    assert tail == {N - 2, N - 1}
    p.add_holder("fast")
    dup = p.next_requests(0.1)
    assert [r.node for r in dup] == ["fast"]
    assert set(dup[0].indices) == tail
    for i in tail:
        assert p.on_chunk("fast", i, True, 0.2) is ChunkResult.ACCEPTED
    assert p.is_complete
    assert p.on_chunk("slow", N - 1, True, 0.3) is ChunkResult.DUPLICATE
    assert p.progress().duplicates == 1


def test_no_endgame_when_disabled() -> None:
    p = plan(have=set(range(N - 2)), cfg=ModelsConfig(endgame_copies=1))
    p.add_holder("slow")
    p.next_requests(0.0)
    p.add_holder("fast")
    assert p.next_requests(0.1) == []


def test_deterministic_for_a_seed() -> None:
    def trace(seed: int) -> list[Request]:
        p = plan(seed=seed)
        for node in "abc":
            p.add_holder(node)
        sim = Sim(p, seed=seed)
        sim.run()
        return sim.sent

    assert trace(5) == trace(5)
    assert trace(5) != trace(6)


def test_bad_indices_rejected() -> None:
    with pytest.raises(InvalidArgument, match="out of range"):
        plan({N})
    p = plan()
    with pytest.raises(InvalidArgument, match="advertised index 99"):
        p.add_holder("a", {1, 99})
    p.add_holder("a")
    assert p.on_chunk("a", N + 5, True, 0.0) is ChunkResult.CORRUPT
    assert "a" in p.banned


def test_unrequested_good_chunk_is_accepted() -> None:
    p = plan()
    assert p.on_chunk("stranger", 3, True, 0.0) is ChunkResult.ACCEPTED
    assert 3 in p.have


@pytest.mark.parametrize("seed", range(12))
def test_random_faults_still_complete(seed: int) -> None:
    """Partial holders, one corrupt holder, random holder failures and missing chunks: the
    pull completes from honest data and every limit holds throughout."""
    rng = random.Random(seed)

    def source(node: str, i: int) -> bytes | None:
        if node == "evil":
            return b"\x01" * len(chunk(i))
        if rng.random() < 0.05:
            return None
        return chunk(i)

    p = plan(seed=seed)
    p.add_holder("full")
    p.add_holder("evil")
    for k in range(3):
        p.add_holder(f"part{k}", {i for i in range(N) if rng.random() < 0.5})
    sim = Sim(p, source, seed=seed)
    for _ in range(3000):
        if p.is_complete:
            break
        sim.step()
        if rng.random() < 0.05:
            sim.fail(rng.choice(["full", "part0", "part1", "part2"]))
        if p.is_stalled:  # everyone lost some chunk: fresh holdings news arrives
            p.add_holder("full")
    assert p.is_complete
    assert "evil" not in p.progress().received_from
