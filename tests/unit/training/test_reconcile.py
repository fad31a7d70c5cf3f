"""Members whose membership views differ for a round: the smaller group wins, a member left
out observes the round, and members outside a group that ask get its averages."""

from __future__ import annotations

import numpy as np

from p2pagent.sim.training_rejoin import RejoinScenario, simulate_rejoin
from p2pagent.training.averager import Averager
from p2pagent.training.config import TrainingConfig
from p2pagent.training.groups import derive_groups, group_id
from p2pagent.training.messages import Phase, Refused
from p2pagent.training.observe import ObservedRound
from p2pagent.training.reconcile import Resolution, resolve
from tests.unit.training.test_round import RUN, SPEC, Mesh, part, vectors

NAMES = ["a", "b", "c", "d"]


def key_without(left_out: str, holding: str, names: list[str] = NAMES) -> str:
    rest = [n for n in names if n != left_out]
    return group_id(next(g for g in derive_groups(rest, RUN, 0, 16) if holding in g))


def settle(**kw: object) -> Resolution | None:
    fields: dict[str, object] = {
        "me": "a", "participants": NAMES, "run": RUN, "round_no": 0, "group_size": 16,
        "sender": "b",
    }  # fmt: skip
    fields["group"] = derive_groups(NAMES, RUN, 0, 16)[0]
    fields.update(kw)
    return resolve(**fields)  # type: ignore[arg-type]


def test_a_peers_group_without_one_participant_is_taken_and_without_me_is_observed() -> None:
    found = settle(sender_group=key_without("d", "b"))
    assert found is not None and not found.observe
    assert found.left_out == "d" and set(found.group) == {"a", "b", "c"}
    found = settle(sender_group=key_without("a", "b"))
    assert found is not None and found.observe
    assert set(found.group) == {"b", "c", "d"}
    # A larger group, an unrelated one, or a sender outside the group: nothing to settle.
    assert settle(sender_group=group_id(("a", "b", "c", "d", "e"))) is None
    assert settle(sender_group="bogus") is None
    assert settle(sender="e", sender_group=key_without("d", "b")) is None


class Views(Mesh):
    """The test mesh with a membership view per member."""

    def __init__(self, views: dict[str, list[str]]) -> None:
        super().__init__(sorted(views))
        self.views = views

    def begin(self, name: str, vector: np.ndarray, weight: float = 1.0) -> None:
        self._out(name, self.av[name].begin(self.views[name], vector, weight, self.now))
        self.pump()


def test_members_whose_views_differ_by_a_joining_member_settle_without_deadlines() -> None:
    # d joined: a, b and d have heard of it, c not yet.
    everyone = NAMES
    mesh = Views({"a": everyone, "b": everyone, "c": ["a", "b", "c"], "d": everyone})
    vs = vectors(4)
    weights = {"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0}
    for n, v in zip(NAMES, vs, strict=True):
        mesh.begin(n, v, weights[n])
    # Every round ended at time 0, before any deadline.
    assert set(mesh.done) == set(NAMES)
    assert all(d.finished == 0.0 and d.complete for d in mesh.done.values())
    got = {d.vector.tobytes() for d in mesh.done.values()}
    assert len(got) == 1
    expected = (vs[0] * 1 + vs[1] * 2 + vs[2] * 3) / 6
    np.testing.assert_allclose(mesh.done["a"].vector, expected, rtol=1e-5, atol=1e-6)
    for n in ("a", "b", "c"):
        assert set(mesh.done[n].group) == {"a", "b", "c"}
    # d took the group's averages without averaging in: it is back in agreement.
    assert "d" not in mesh.done["d"].group and mesh.done["d"].averaged_with == ()


def test_a_member_nobody_counts_yet_observes_the_round_and_ends_with_its_average() -> None:
    mesh = Views({"a": ["a", "b", "c"], "b": ["a", "b", "c"], "c": ["a", "b", "c"],
                  "d": NAMES})  # fmt: skip
    vs = vectors(4, seed=3)
    mesh.begin("d", vs[3])  # first: its parts wait as early parts at a, b and c
    for n, v in zip(NAMES[:3], vs[:3], strict=True):
        mesh.begin(n, v)
    assert isinstance(mesh.av["d"].previous, ObservedRound)
    assert mesh.done["d"].complete and mesh.done["d"].finished == 0.0
    assert mesh.done["d"].vector.tobytes() == mesh.done["a"].vector.tobytes()
    np.testing.assert_allclose(mesh.done["a"].vector, np.mean(vs[:3], axis=0), rtol=1e-5)
    # Its data was never averaged in.
    assert all("d" not in mesh.done[n].averaged_with for n in "abc")


def test_an_observer_takes_a_dead_owners_slice_from_its_backup() -> None:
    mesh = Views({"a": ["a", "b", "c"], "b": ["a", "b", "c"], "c": ["a", "b", "c"],
                  "d": NAMES})  # fmt: skip
    vs = vectors(4, seed=4)
    mesh.begin("d", vs[3])
    mesh.dead.add("c")  # c never averages: a and b finish through the backup
    for n, v in zip(NAMES[:2], vs[:2], strict=True):
        mesh.begin(n, v)
    mesh.advance(60.0)
    assert mesh.done["a"].vector.tobytes() == mesh.done["b"].vector.tobytes()
    assert mesh.done["a"].recovered  # c's slice came from its backup
    assert isinstance(mesh.av["d"].previous, ObservedRound)
    done = mesh.done["d"]
    # The backup's average of c's slice reached d too; nothing else was missing.
    assert done.complete, done.kept_local
    assert done.vector.tobytes() == mesh.done["a"].vector.tobytes()


def test_members_outside_a_group_asking_for_its_averages_are_bounded() -> None:
    config = TrainingConfig(group_size=2).validate()
    av = Averager("a", RUN, SPEC, config)
    av.begin(["a", "b"], np.zeros(10, np.float32), 1.0, 0.0)
    rnd = av.current
    assert rnd is not None
    for outsider in ("x", "y", "z"):
        av.handle(part(np.zeros(5, np.float32), sender=outsider, group="other"), 0.0)
    refused = [e for e in av.take_events() if isinstance(e, Refused)]
    assert [r.sender for r in refused] == ["z"] and "listening" in refused[0].reason
    # b's part completes a's slice: the average goes to b and both listeners, never
    # averaging in what the listeners sent.
    sends = av.handle(
        part(np.ones(5, np.float32), sender="b", group=rnd.group_key, slice_index=0), 0.0
    )
    gathers = {s.to for s in sends if s.part.phase is Phase.GATHER}
    assert gathers == {"b", "x", "y"}
    assert set(rnd.own) == {"a", "b"}


def test_a_restarted_member_is_back_in_its_first_round_in_the_simulator() -> None:
    for seed in range(1, 6):
        result = simulate_rejoin(RejoinScenario(restart_s=6.0, detect_s=5.0, seed=seed))
        # Back in agreement with the run in its first round after the restart (observing
        # while some survivors' views do not count it yet), averaging in soon after.
        assert result.back == 1, result.rounds[:6]
        assert result.contributed <= 6, result.rounds[:8]
        # No survivor round waited on a deadline for the views to agree.
        assert result.longest_survivor_round_s < 0.5, result
    again = simulate_rejoin(RejoinScenario(restart_s=6.0, detect_s=5.0, seed=2))
    assert again == simulate_rejoin(RejoinScenario(restart_s=6.0, detect_s=5.0, seed=2))
