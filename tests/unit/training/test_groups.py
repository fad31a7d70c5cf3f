import random

import pytest

from p2pagent.errors import InvalidArgument
from p2pagent.training.groups import (
    check_run_name,
    derive_groups,
    dimensions,
    group_id,
    group_of,
    participants,
)


def names(n: int) -> list[str]:
    return [f"node-{i}" for i in range(n)]


def test_every_member_derives_the_same_groups_whatever_order_it_lists_members_in() -> None:
    members = names(40)
    reference = derive_groups(members, "run", 3, 16)
    rng = random.Random(1)
    for _ in range(5):
        shuffled = members[:]
        rng.shuffle(shuffled)
        assert derive_groups(shuffled, "run", 3, 16) == reference
    for m in members:
        assert group_of(m, members, "run", 3, 16) in reference


def test_a_small_run_is_one_group() -> None:
    assert len(derive_groups(names(16), "run", 0, 16)) == 1
    assert dimensions(16, 16) == 1


def test_256_members_form_a_grid_whose_axes_alternate_by_round() -> None:
    members = names(256)
    g0 = derive_groups(members, "run", 0, 16)
    g1 = derive_groups(members, "run", 1, 16)
    assert dimensions(256, 16) == 2
    assert sorted(len(g) for g in g0) == [16] * 16
    assert sorted(len(g) for g in g1) == [16] * 16
    # Moshpit: a round-1 group takes exactly one member of each round-0 group, which is what
    # makes two rounds of group averages the global average.
    for a in g0:
        for b in g1:
            assert len(set(a) & set(b)) == 1
    assert derive_groups(members, "run", 2, 16) == g0


def test_every_member_is_in_exactly_one_group_for_odd_sizes() -> None:
    for n in (1, 2, 17, 100, 300):
        groups = derive_groups(names(n), "r", 5, 16)
        flat = [m for g in groups for m in g]
        assert sorted(flat) == sorted(names(n))
        assert max(len(g) for g in groups) <= 16


def test_layouts_differ_between_runs() -> None:
    assert derive_groups(names(64), "a", 0, 8) != derive_groups(names(64), "b", 0, 8)


def test_participants_are_the_members_carrying_the_runs_tag() -> None:
    view = [("b", {"train/r": "x"}), ("a", {"train/r": "x"}), ("c", {"train/other": "x"})]
    assert participants(view, "r") == ["a", "b"]


def test_group_id_changes_with_membership() -> None:
    assert group_id(("a", "b")) != group_id(("a", "b", "c"))


@pytest.mark.parametrize("bad", ["", "a b", "x" * 65, "../etc"])
def test_bad_run_names_are_refused_saying_what_is_allowed(bad: str) -> None:
    with pytest.raises(InvalidArgument, match="letters, digits"):
        check_run_name(bad)
