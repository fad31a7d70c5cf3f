"""What a reader sees of a key: the read of each CRDT kind, and the events of the replica.

These are the values the asyncio driver turns into ``GetResponse``/``Change`` protobufs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from p2pagent.state.clocks import Dot
from p2pagent.state.crdt import KeyState, Kind


@dataclass(frozen=True, slots=True)
class ReadResult:
    """One key as a reader sees it; ``found`` is False for a missing (or deleted) key."""

    found: bool
    kind: Kind | None = None
    #: LWW: the winning value; MV: every sibling, sorted and distinct.
    values: tuple[bytes, ...] = ()
    #: COUNTER: the total.
    counter: int = 0
    #: SET: the elements, sorted.
    elements: tuple[bytes, ...] = ()
    #: Largest counter per origin among the key's live dots. Pass it back as the context of
    #: an MV write to replace exactly the siblings you read.
    version: Mapping[str, int] = field(default_factory=dict)


MISSING = ReadResult(found=False)


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What a local write did: the key's version afterwards and its change-log position."""

    namespace: str
    key: str
    version: Mapping[str, int]
    #: Sequence number of the change in this node's change log (0: the write changed nothing).
    seq: int


@dataclass(frozen=True, slots=True)
class Change:
    """One applied change to a key, as the Watch API and persistence see it."""

    seq: int
    namespace: str
    key: str
    deleted: bool
    value: ReadResult


@dataclass(frozen=True, slots=True)
class ScanPage:
    entries: tuple[tuple[str, ReadResult], ...]
    #: Key to pass as ``after`` for the next page; empty when this was the last page.
    next_after: str


def lww_winner(dots: Mapping[Dot, Any]) -> tuple[Dot, tuple[int, bytes]]:
    """The LWW dot that wins: largest HLC timestamp, ties broken by origin then counter."""
    return max(dots.items(), key=lambda item: (item[1][0], item[0][0], item[0][1]))


def key_version(ks: KeyState) -> dict[str, int]:
    if ks._dot is not None and ks.others is None:
        return {ks._dot[0]: ks._dot[1]}  # the common one-dot key
    vv: dict[str, int] = {}
    for origin, counter in ks.all_dots():
        if counter > vv.get(origin, 0):
            vv[origin] = counter
    return vv


def read_key(ks: KeyState | None) -> ReadResult:
    if ks is None:
        return MISSING
    kind = ks.visible_kind()
    dots = ks.dots_of(kind)
    version = key_version(ks)
    if kind is Kind.LWW:
        return ReadResult(True, kind, values=(lww_winner(dots)[1][1],), version=version)
    if kind is Kind.MV:
        return ReadResult(True, kind, values=tuple(sorted(set(dots.values()))), version=version)
    if kind is Kind.COUNTER:
        total = sum(p - n for p, n in dots.values())
        return ReadResult(True, kind, counter=total, version=version)
    return ReadResult(True, kind, elements=tuple(sorted(set(dots.values()))), version=version)
