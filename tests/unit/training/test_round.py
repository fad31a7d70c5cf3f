"""The averaging core driven directly: members joined by an in-memory link, time passed in."""

from __future__ import annotations

import numpy as np
import pytest

from p2pagent.training import quantize
from p2pagent.training.averager import Averager
from p2pagent.training.config import TrainingConfig
from p2pagent.training.messages import Part, Phase, Refused, RoundDone, Send

RUN = "run"
SPEC = "spec"


class Mesh:
    """Averagers that deliver each other's sends at once (or never, for the dead); ``late``
    members receive nothing until they begin."""

    def __init__(self, names: list[str], config: TrainingConfig | None = None) -> None:
        self.config = config or TrainingConfig(initial_phase_timeout=1.0).validate()
        self.names = names
        self.av = {n: Averager(n, RUN, SPEC, self.config) for n in names}
        self.dead: set[str] = set()
        self.now = 0.0
        self.sent_bytes = dict.fromkeys(names, 0)
        self.done: dict[str, RoundDone] = {}
        self.refused: list[Refused] = []
        self.queue: list[tuple[str, Send]] = []

    def begin(self, name: str, vector: np.ndarray, weight: float = 1.0) -> None:
        self._out(name, self.av[name].begin(self.names, vector, weight, self.now))
        self.pump()

    def _out(self, src: str, sends: list[Send]) -> None:
        for s in sends:
            self.sent_bytes[src] += s.part.nbytes
            self.queue.append((src, s))

    def pump(self) -> None:
        while self.queue:
            _, s = self.queue.pop(0)
            if s.to in self.dead:
                continue
            self._out(s.to, self.av[s.to].handle(s.part, self.now))
        self.collect()

    def collect(self) -> None:
        for n, a in self.av.items():
            for ev in a.take_events():
                if isinstance(ev, RoundDone):
                    self.done[n] = ev
                else:
                    self.refused.append(ev)

    def advance(self, to: float) -> None:
        while True:
            due = [(a.next_deadline(), n) for n, a in self.av.items() if n not in self.dead]
            t, n = min(due)
            if t > to:
                break
            self.now = t
            self._out(n, self.av[n].tick(t))
            self.pump()
        self.now = to

    def gone(self, name: str) -> None:
        for n, a in self.av.items():
            if n not in self.dead:
                self._out(n, a.member_gone(name, self.now))
        self.pump()


def vectors(n: int, size: int = 103, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(size).astype(np.float32) for _ in range(n)]


def test_a_fault_free_round_leaves_every_member_bit_identical_at_the_weighted_mean() -> None:
    names = ["a", "b", "c", "d"]
    mesh = Mesh(names)
    vs = vectors(4)
    weights = [10.0, 20.0, 30.0, 40.0]
    for n, v, w in zip(names, vs, weights, strict=True):
        mesh.begin(n, v, w)
    assert set(mesh.done) == set(names)
    first = mesh.done["a"].vector
    for d in mesh.done.values():
        assert d.vector.tobytes() == first.tobytes()
        assert d.complete and d.kept_local == () and d.recovered == ()
    expected = sum(w * v.astype(np.float64) for v, w in zip(vs, weights, strict=True)) / 100
    np.testing.assert_allclose(first, expected, rtol=1e-6, atol=1e-6)
    assert mesh.done["a"].finished == 0.0  # nothing waited for a deadline
    assert not mesh.refused


def test_each_member_sends_the_bandwidth_optimal_share() -> None:
    names = [f"m{i}" for i in range(5)]
    mesh = Mesh(names)
    size = 1000
    for n, v in zip(names, vectors(5, size), strict=True):
        mesh.begin(n, v)
    bound = 2 * (5 - 1) / 5 * size * 4
    for n in names:
        assert mesh.sent_bytes[n] <= bound * 1.01
        assert mesh.done[n].bytes_sent == mesh.sent_bytes[n]


def test_a_member_that_dies_before_sending_is_averaged_out_and_its_slice_recovered() -> None:
    names = ["a", "b", "c", "d"]
    mesh = Mesh(names)
    vs = vectors(4)
    mesh.dead.add("c")
    for n, v in zip(names, vs, strict=True):
        if n != "c":
            mesh.begin(n, v)
    assert not mesh.done
    mesh.advance(10.0)
    survivors = ["a", "b", "d"]
    assert set(mesh.done) == set(survivors)
    first = mesh.done["a"].vector
    for n in survivors:
        d = mesh.done[n]
        assert d.vector.tobytes() == first.tobytes()
        assert d.complete
        assert "c" not in d.averaged_with
    assert any(mesh.done[n].recovered for n in survivors)
    expected = np.mean([vs[0], vs[1], vs[3]], axis=0)
    np.testing.assert_allclose(first, expected, rtol=1e-6, atol=1e-6)
    # Finished within the round's deadlines (two phases: reduce at D1, backup at D2).
    assert max(d.finished for d in mesh.done.values()) <= 2 * 1.0 + 1e-9


def test_membership_news_of_a_death_ends_the_round_before_its_deadline() -> None:
    names = ["a", "b", "c", "d"]
    mesh = Mesh(names)
    mesh.dead.add("b")
    for n, v in zip(names, vectors(4), strict=True):
        if n != "b":
            mesh.begin(n, v)
    mesh.advance(0.1)
    mesh.gone("b")
    assert set(mesh.done) == {"a", "c", "d"}
    assert all(d.finished == 0.1 for d in mesh.done.values())
    assert len({d.vector.tobytes() for d in mesh.done.values()}) == 1


def test_a_member_dying_between_its_sends_still_lets_the_survivors_finish() -> None:
    names = ["a", "b", "c", "d"]
    mesh = Mesh(names)
    vs = vectors(4)
    sends = mesh.av["c"].begin(names, vs[2], 1.0, 0.0)
    # Only c's first SCATTER gets out before it dies.
    mesh.queue.append(("c", sends[0]))
    mesh.dead.add("c")
    for n in ("a", "b", "d"):
        mesh.begin(n, vs[names.index(n)])
    mesh.advance(10.0)
    assert set(mesh.done) == {"a", "b", "d"}
    assert all(d.complete for d in mesh.done.values())
    assert max(d.finished for d in mesh.done.values()) <= 5.0


def test_a_straggler_does_not_hold_the_round_and_still_ends_with_the_average() -> None:
    names = ["a", "b", "c", "d"]
    mesh = Mesh(names)
    vs = vectors(4)
    for n in ("a", "b", "c"):
        mesh.begin(n, vs[names.index(n)])
    mesh.advance(3.0)
    assert set(mesh.done) == {"a", "b", "c"}
    assert max(d.finished for d in mesh.done.values()) <= 2.0 + 1e-9
    # d starts three seconds late: those who finished answer with what they averaged.
    mesh.begin("d", vs[3])
    mesh.advance(10.0)
    assert mesh.done["d"].vector.tobytes() == mesh.done["a"].vector.tobytes()


def test_the_next_round_number_follows_the_highest_seen() -> None:
    names = ["a", "b"]
    mesh = Mesh(names)
    vs = vectors(2)
    mesh.av["a"].finished_round = 6
    mesh.begin("a", vs[0])
    # b (restarted, at round 0) keeps a's part and learns the run's round.
    assert mesh.av["b"].next_round_no() == 7
    mesh.begin("b", vs[1])
    mesh.advance(10.0)
    assert mesh.done["b"].round_no == 7 == mesh.done["a"].round_no
    assert mesh.done["b"].vector.tobytes() == mesh.done["a"].vector.tobytes()


def test_fp16_compression_keeps_members_bit_identical() -> None:
    names = ["a", "b", "c"]
    mesh = Mesh(names, TrainingConfig(compression="fp16").validate())
    for n, v in zip(names, vectors(3), strict=True):
        mesh.begin(n, v)
    assert len({d.vector.tobytes() for d in mesh.done.values()}) == 1


def part(data: np.ndarray, **kw: object) -> Part:
    fields: dict[str, object] = {
        "run": RUN,
        "round_no": 0,
        "group": "",
        "sender": "b",
        "phase": Phase.SCATTER,
        "slice_index": 0,
        "weight": 1.0,
        "spec": SPEC,
        "data": data,
    }
    fields.update(kw)
    return Part(**fields)  # type: ignore[arg-type]


def one_owner() -> tuple[Averager, int, str, int]:
    """Member 'a' in a round of ['a', 'b', 'c'], with its slice length and group id."""
    av = Averager("a", RUN, SPEC, TrainingConfig().validate())
    av.begin(["a", "b", "c"], np.zeros(30, np.float32), 1.0, 0.0)
    rnd = av.current
    assert rnd is not None
    a, b = rnd.bounds[rnd.index]
    return av, rnd.index, rnd.group_key, b - a


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"data": np.full(10, np.nan, np.float32)}, "NaN"),
        ({"data": np.full(10, np.inf, np.float32)}, "NaN or infinite"),
        ({"data": np.zeros(11, np.float32)}, "shape"),
        ({"data": np.zeros(10, np.float64)}, "dtype"),
        ({"weight": 1e12}, "max_sample_count"),
        ({"weight": -1.0}, "positive"),
        ({"weight": float("nan")}, "positive"),
        ({"spec": "other"}, "fingerprint"),
        # (A SCATTER from outside the group asks for the averages: test_reconcile.py.)
        ({"sender": "mallory", "phase": Phase.GATHER}, "not in this member's group"),
        ({"group": "bogus"}, "another group"),
    ],
)
def test_bad_parts_are_refused_with_the_sender_named_and_never_averaged(
    change: dict[str, object], reason: str
) -> None:
    av, index, key, length = one_owner()
    assert length == 10
    fields: dict[str, object] = {"group": key, "slice_index": index}
    fields["data"] = np.ones(10, np.float32)
    fields.update(change)
    av.handle(part(**fields), 0.0)  # type: ignore[arg-type]
    refused = [e for e in av.take_events() if isinstance(e, Refused)]
    assert len(refused) == 1
    assert reason in refused[0].reason
    assert refused[0].sender == fields.get("sender", "b")
    assert av.current is not None and set(av.current.own) == {"a"}


def test_an_unknown_run_is_refused() -> None:
    av, index, key, _ = one_owner()
    av.handle(part(np.ones(10, np.float32), run="nope", group=key, slice_index=index), 0.0)
    (ev,) = av.take_events()
    assert isinstance(ev, Refused) and "unknown run" in ev.reason


def test_a_part_whose_norm_is_far_above_the_groups_is_refused_as_an_outlier() -> None:
    names = ["a", "b", "c", "d"]
    mesh = Mesh(names)
    vs = vectors(4)
    vs[3] = vs[3] * 1000
    for n, v in zip(names, vs, strict=True):
        mesh.begin(n, v)
    assert {r.sender for r in mesh.refused} == {"d"}
    assert all("median" in r.reason for r in mesh.refused)
    assert len({d.vector.tobytes() for d in mesh.done.values()}) == 1
    expected = np.mean(vs[:3], axis=0)
    np.testing.assert_allclose(mesh.done["a"].vector, expected, rtol=1e-5, atol=1e-5)


def test_early_parts_are_bounded_by_the_runs_vector_size() -> None:
    av = Averager("a", RUN, SPEC, TrainingConfig(max_rounds_ahead=1).validate(), length=100)
    big = part(np.zeros(500, np.float32), round_no=1, group="g", slice_index=0)
    av.handle(big, 0.0)
    av.handle(big, 0.0)  # 4,000 bytes kept; the budget is 2 x 2 rounds x 400 bytes = 1,600
    refused = [e for e in av.take_events() if isinstance(e, Refused)]
    assert len(refused) == 2 and "bytes" in refused[0].reason
    small = part(np.zeros(50, np.float32), round_no=1, group="g", slice_index=0)
    av.handle(small, 0.0)
    assert not av.take_events()
    assert av.next_round_no() == 1


def test_a_member_far_behind_the_run_ends_its_stale_round_at_once_and_catches_up() -> None:
    names = ["a", "b", "c"]
    mesh = Mesh(names)
    vs = vectors(3)
    for n in ("a", "b"):
        mesh.av[n].finished_round = 8
    # c restarted: it starts at round 0 while a and b run round 9.
    mesh.begin("c", vs[2])
    assert "c" not in mesh.done
    mesh.begin("a", vs[0])
    assert mesh.done["c"].round_no == 0 and not mesh.done["c"].complete
    assert mesh.done["c"].finished == 0.0  # ended at once, not at its deadlines
    # Marked as behind the run: the driver averages again at once, at the run's round.
    assert mesh.done["c"].behind
    mesh.begin("b", vs[1])
    mesh.advance(10.0)
    assert mesh.done["a"].round_no == mesh.done["b"].round_no == 9
    # Back in the run at round 9, c ends holding what a and b hold.
    del mesh.done["c"]
    mesh.begin("c", vs[2])
    mesh.advance(20.0)
    assert mesh.done["c"].round_no == 9
    assert mesh.done["c"].vector.tobytes() == mesh.done["a"].vector.tobytes()
    assert not any(d.behind for d in mesh.done.values())


def test_int8_compression_keeps_members_bit_identical_and_close_to_the_mean() -> None:
    names = ["a", "b", "c"]
    vs = vectors(3)
    mesh = Mesh(names, TrainingConfig(compression="int8").validate())
    for n, v in zip(names, vs, strict=True):
        mesh.begin(n, v)
    got = {d.vector.tobytes() for d in mesh.done.values()}
    assert len(got) == 1
    result = next(iter(mesh.done.values())).vector
    exact = np.mean(np.stack(vs), axis=0)
    scale = float(np.abs(np.stack(vs)).max())
    assert np.abs(result - exact).max() <= 2 * scale / quantize.LEVELS
