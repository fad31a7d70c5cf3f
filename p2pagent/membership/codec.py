"""Wire form of membership messages: msgpack arrays inside ``Envelope{version, payload}``.

Decoding trusts nothing: every field is type- and size-checked, and any violation raises
`MalformedMessage` (the driver counts it, drops the payload and keeps running).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgpack  # type: ignore[import-untyped]

from p2pagent.membership.hints import MAX_HINT_MODELS, MAX_HINT_QUEUED, LoadHint, QueuedWork
from p2pagent.membership.messages import Kind, Message, State, Update

#: Version of this payload layout; carried in ``Envelope.version``.
VERSION = 1

MAX_NAME = 128
MAX_ADDRESS = 300
MAX_UPDATES = 256
MAX_MEMBERS = 100_000
MAX_INT = 2**63 - 1
#: Most bytes of one SWIM message (``Peer.Gossip``): at most ``MAX_UPDATES`` updates of
#: at most ~1.2 KB each (names, address, tags), with room to spare.
MAX_GOSSIP_BYTES = 1 << 20
#: Most bytes of a ``PUSH_PULL`` (the whole membership: ~60,000 members of typical size).
#: Checked before decoding, whatever the message: decoding is what costs memory.
MAX_PUSH_PULL_BYTES = 16 << 20

_STATE_CODE = {State.ALIVE: 0, State.SUSPECT: 1, State.DEAD: 2, State.LEFT: 3}
_CODE_STATE = {v: k for k, v in _STATE_CODE.items()}
_KINDS = {k.value: k for k in Kind}


class MalformedMessage(ValueError):
    """A peer sent a membership payload we cannot read; the text says what was wrong."""


def tags_size(tags: Mapping[str, str]) -> int:
    """Bytes the tags take on the wire, near enough for a limit (keys and values, UTF-8)."""
    return sum(len(k.encode()) + len(v.encode()) + 2 for k, v in tags.items())


def _update_to_wire(u: Update) -> list[Any]:
    return [u.name, u.incarnation, _STATE_CODE[u.state], u.origin, u.address, dict(u.tags)]


def _hint_to_wire(h: LoadHint) -> list[Any]:
    return [
        h.node, h.seq, h.backlog_s, h.queue_len, h.running, h.capacity, h.speed,
        list(h.models), [[q.model, q.count, q.cost_s] for q in h.queued],
    ]  # fmt: skip


def encode(msg: Message) -> bytes:
    body = [
        int(msg.kind),
        msg.src,
        msg.src_address,
        msg.seq,
        msg.target,
        msg.target_address,
        msg.join,
        [_update_to_wire(u) for u in msg.updates],
        [_update_to_wire(u) for u in msg.members],
    ]
    if msg.hints:  # a trailing field, only when there are hints: idle messages stay as they were
        body.append([_hint_to_wire(h) for h in msg.hints])
    out: bytes = msgpack.packb(body, use_bin_type=True)
    return out


def decode(
    data: bytes, max_tags_bytes: int = 4096, max_bytes: int = MAX_PUSH_PULL_BYTES
) -> Message:
    if len(data) > max_bytes:
        raise MalformedMessage(f"{len(data)} bytes, over the {max_bytes} a message may have")
    try:
        body = msgpack.unpackb(data, raw=False, strict_map_key=True, max_array_len=MAX_MEMBERS)
    except Exception as e:  # msgpack raises several unrelated types on bad input
        raise MalformedMessage(f"not msgpack: {type(e).__name__}") from None
    try:
        return _message(body, max_tags_bytes)
    except MalformedMessage as e:
        error = e
    # Raised without the traceback, whose frames hold what was decoded (``body``): a
    # refusal kept referenced must not keep a peer's whole payload alive.
    del body
    raise error.with_traceback(None)


def _message(body: Any, max_tags_bytes: int) -> Message:
    if not isinstance(body, list) or len(body) not in (9, 10):
        raise MalformedMessage("expected an array of 9 fields (10 with load hints)")
    kind_v, src, src_addr, seq, target, target_addr, join, updates, members = body[:9]
    kind = _KINDS.get(kind_v) if isinstance(kind_v, int) else None
    if kind is None:
        raise MalformedMessage(f"unknown message kind {kind_v!r}")
    if not isinstance(join, bool):
        raise MalformedMessage("join must be a boolean")
    ups = _updates(updates, MAX_UPDATES, "updates", max_tags_bytes)
    mems = _updates(members, MAX_MEMBERS, "members", max_tags_bytes)
    hints = _hints(body[9], MAX_MEMBERS if mems else MAX_UPDATES) if len(body) == 10 else ()
    return Message(
        kind,
        _str(src, MAX_NAME, "src", nonempty=True),
        _str(src_addr, MAX_ADDRESS, "src_address"),
        _int(seq, "seq"),
        _str(target, MAX_NAME, "target"),
        _str(target_addr, MAX_ADDRESS, "target_address"),
        join,
        ups,
        mems,
        hints,
    )


def _hints(v: Any, limit: int) -> tuple[LoadHint, ...]:
    """Shape and types only: whether the numbers are believable is for ``HintTable`` to
    judge (and count), so that a bad hint costs the hint, not the membership message."""
    if not isinstance(v, list) or len(v) > limit:
        raise MalformedMessage(f"hints must be an array of at most {limit} entries")
    return tuple(_hint(h) for h in v)


def _hint(v: Any) -> LoadHint:
    if not isinstance(v, list) or len(v) != 9:
        raise MalformedMessage("a load hint is not an array of 9 fields")
    node, seq, backlog, queue_len, running, capacity, speed, models, queued = v
    if not isinstance(models, list) or len(models) > MAX_HINT_MODELS:
        raise MalformedMessage(f"hint models must be an array of at most {MAX_HINT_MODELS}")
    if not isinstance(queued, list) or len(queued) > MAX_HINT_QUEUED:
        raise MalformedMessage(f"hint queued must be an array of at most {MAX_HINT_QUEUED}")
    work: list[QueuedWork] = []
    for q in queued:
        if not isinstance(q, list) or len(q) != 3:
            raise MalformedMessage("a hint's queued entry is not [model, count, cost_s]")
        work.append(
            QueuedWork(
                _str(q[0], MAX_NAME * 2, "hint model"), _sint(q[1], "hint count"),
                _float(q[2], "hint cost_s"),
            )
        )  # fmt: skip
    return LoadHint(
        _str(node, MAX_NAME, "hint node", nonempty=True),
        _int(seq, "hint seq"),
        _float(backlog, "hint backlog_s"),
        _sint(queue_len, "hint queue_len"),
        _sint(running, "hint running"),
        _sint(capacity, "hint capacity"),
        _float(speed, "hint speed"),
        tuple(_str(m, MAX_NAME * 2, "hint model") for m in models),
        tuple(work),
    )


def _float(v: Any, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise MalformedMessage(f"{what} must be a number")
    return float(v)


def _sint(v: Any, what: str) -> int:
    """An integer of any sign that fits 64 bits; its range is checked by ``HintTable``."""
    if not isinstance(v, int) or isinstance(v, bool) or not -MAX_INT <= v <= MAX_INT:
        raise MalformedMessage(f"{what} must be a 64-bit integer")
    return v


def _updates(v: Any, limit: int, what: str, max_tags_bytes: int) -> tuple[Update, ...]:
    if not isinstance(v, list):
        raise MalformedMessage(f"{what} must be an array")
    if len(v) > limit:
        raise MalformedMessage(f"{what} has {len(v)} entries, more than {limit}")
    return tuple(_update(u, what, max_tags_bytes) for u in v)


def _update(v: Any, what: str, max_tags_bytes: int) -> Update:
    if not isinstance(v, list) or len(v) != 6:
        raise MalformedMessage(f"an entry of {what} is not an array of 6 fields")
    name, inc, code, origin, address, tags = v
    state = _CODE_STATE.get(code) if isinstance(code, int) else None
    if state is None:
        raise MalformedMessage(f"unknown member state {code!r} in {what}")
    if not isinstance(tags, dict) or not all(
        isinstance(k, str) and isinstance(t, str) for k, t in tags.items()
    ):
        raise MalformedMessage(f"tags in {what} must map strings to strings")
    if tags_size(tags) > max_tags_bytes:
        raise MalformedMessage(f"tags in {what} exceed {max_tags_bytes} bytes")
    return Update(
        _str(name, MAX_NAME, "member name", nonempty=True),
        _int(inc, "incarnation"),
        state,
        _str(origin, MAX_NAME, "origin"),
        _str(address, MAX_ADDRESS, "address"),
        tags,
    )


def _str(v: Any, limit: int, what: str, nonempty: bool = False) -> str:
    if not isinstance(v, str):
        raise MalformedMessage(f"{what} must be a string")
    if len(v) > limit or (nonempty and not v):
        raise MalformedMessage(f"{what} must be 1-{limit} characters" if nonempty else what)
    return v


def _int(v: Any, what: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= MAX_INT:
        raise MalformedMessage(f"{what} must be an integer in [0, 2^63)")
    return v
