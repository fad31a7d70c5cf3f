"""Which loaded decoder engines to unload: pure, the caller passes ``now``.

An engine holds its model's weights (and, while sequences run, their KV cache). A node that
served version 1 and now serves version 2 of a model, or served a model once an hour ago,
should not hold it forever. The rules, never touching an engine that has a sequence:

1. An engine whose version was superseded (a newer version of the same published model was
   asked for, and no sequence chose the older one since) goes as soon as its last sequence
   ends: a request for the newest version never picks it again; one pinned to it loads it
   anew (and a pinned sequence that keeps choosing it keeps it, up to rule 2).
2. An engine idle for ``generation.unload_idle_s`` goes.
3. While the loaded engines' weights exceed ``generation.loaded_bytes``, the least recently
   used idle one goes first.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Resident:
    key: str
    #: Bytes of the model's weights.
    weight_bytes: int
    #: Sequences running or queued, or callers waiting on it.
    busy: bool
    #: When it last had a sequence (or was loaded).
    last_used: float
    #: A newer version of the same published model is loaded.
    superseded: bool = False


def to_unload(
    residents: Iterable[Resident], now: float, *, idle_s: float, budget_bytes: int
) -> list[str]:
    """The keys to unload now, by the rules above. ``budget_bytes`` 0: no budget."""
    resident = list(residents)
    out = [
        r.key
        for r in resident
        if not r.busy and (r.superseded or (idle_s > 0 and now - r.last_used >= idle_s))
    ]
    if budget_bytes > 0:
        kept = [r for r in resident if r.key not in out]
        total = sum(r.weight_bytes for r in kept)
        for r in sorted((r for r in kept if not r.busy), key=lambda r: r.last_used):
            if total <= budget_bytes:
                break
            out.append(r.key)
            total -= r.weight_bytes
    return out


def next_deadline(residents: Iterable[Resident], *, idle_s: float) -> float | None:
    """When rule 2 next unloads an engine (None: no idle engine, or no idle limit)."""
    if idle_s <= 0:
        return None
    times = [r.last_used + idle_s for r in residents if not r.busy]
    return min(times) if times else None


def is_superseded(key: str, chosen_at: float, newest: Mapping[str, tuple[str, float]]) -> bool:
    """Whether the engine ``key`` (``name@manifest``, last chosen by a sequence at
    ``chosen_at``) is superseded: ``newest`` (name -> the key of its newest version and
    since when it is the newest) names another version of it, and no sequence chose this
    one since then (one pinned to it keeps it)."""
    name, sep, _ = key.partition("@")
    newer = newest.get(name)
    return bool(sep) and newer is not None and newer[0] != key and chosen_at < newer[1]
