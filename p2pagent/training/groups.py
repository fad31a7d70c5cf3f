"""Who averages with whom in a round, derived alike by every participant without a leader.

Participants of a run are the reachable members carrying the run's tag (``train/<run>``).
Every participant sorts them the same way (by a hash of run and name, so the layout does not
follow name order and differs between runs) and lays them out on a grid of ``d`` dimensions
with sides of about ``group_size``; round ``r`` groups the members that share every grid
coordinate but the one along axis ``r mod d`` (Moshpit SGD). With one dimension (up to
``group_size`` participants) the whole run is one group; with ``d`` dimensions and no faults
the run holds the exact global average after ``d`` rounds.

Nothing here reads the network or a clock: the membership view, run and round number are
inputs, so two members with the same view always derive the same groups.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence

from p2pagent.errors import InvalidArgument

#: Tag a member sets (value: the run's parameter fingerprint) to take part in a run.
TAG_PREFIX = "train/"
#: Longest run name, in characters: it travels in every part and in a membership tag.
MAX_RUN_CHARS = 64


def check_run_name(run: str) -> str:
    """The run name, or InvalidArgument saying what a run name may contain."""
    if not run or len(run) > MAX_RUN_CHARS or not all(c.isalnum() or c in "-_." for c in run):
        raise InvalidArgument(
            f"run name {run[:MAX_RUN_CHARS]!r} is not valid: use 1 to {MAX_RUN_CHARS} letters, "
            "digits, '-', '_' or '.'"
        )
    return run


def run_tag(run: str) -> str:
    return TAG_PREFIX + run


def participants(members: Iterable[tuple[str, Mapping[str, str]]], run: str) -> list[str]:
    """Names (sorted) of the given reachable members that carry ``run``'s tag."""
    tag = run_tag(run)
    return sorted(name for name, tags in members if tag in tags)


def _order_key(run: str, name: str) -> bytes:
    return hashlib.sha256(f"{run}\0{name}".encode()).digest()


def dimensions(n: int, group_size: int) -> int:
    """Grid dimensions for ``n`` participants: the fewest with sides <= ``group_size``."""
    if n <= group_size:
        return 1
    return math.ceil(math.log(n) / math.log(group_size) - 1e-9)


def derive_groups(
    names: Sequence[str], run: str, round_no: int, group_size: int
) -> list[tuple[str, ...]]:
    """Every group of round ``round_no``, each a tuple of names in hash order; every name is
    in exactly one group."""
    order = sorted(set(names), key=lambda n: _order_key(run, n))
    n = len(order)
    if n == 0:
        return []
    d = dimensions(n, group_size)
    if d == 1:
        return [tuple(order)]
    side = math.ceil(n ** (1.0 / d) - 1e-9)
    while side**d < n:
        side += 1
    axis = round_no % d
    groups: dict[tuple[int, ...], list[str]] = {}
    for index, name in enumerate(order):
        coords = []
        rest = index
        for _ in range(d):
            coords.append(rest % side)
            rest //= side
        del coords[axis]
        groups.setdefault(tuple(coords), []).append(name)
    return [tuple(g) for _, g in sorted(groups.items())]


def group_of(
    name: str, names: Sequence[str], run: str, round_no: int, group_size: int
) -> tuple[str, ...]:
    """The group ``name`` belongs to in round ``round_no`` (``name`` is added to ``names``
    when missing: a member always counts itself)."""
    everyone = set(names) | {name}
    for group in derive_groups(sorted(everyone), run, round_no, group_size):
        if name in group:
            return group
    raise AssertionError("every name is in one group")  # pragma: no cover


def group_id(group: Sequence[str]) -> str:
    """A short fingerprint of a group's member list: parts carry it, so members whose views
    disagree on the group find out instead of averaging different things."""
    return hashlib.sha256("\0".join(group).encode()).hexdigest()[:16]
