"""Wire form of membership messages: msgpack arrays inside ``Envelope{version, payload}``.

Decoding trusts nothing: every field is type- and size-checked, and any violation raises
`MalformedMessage` (the driver counts it, drops the payload and keeps running).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgpack  # type: ignore[import-untyped]

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
    if not isinstance(body, list) or len(body) != 9:
        raise MalformedMessage("expected an array of 9 fields")
    kind_v, src, src_addr, seq, target, target_addr, join, updates, members = body
    kind = _KINDS.get(kind_v) if isinstance(kind_v, int) else None
    if kind is None:
        raise MalformedMessage(f"unknown message kind {kind_v!r}")
    if not isinstance(join, bool):
        raise MalformedMessage("join must be a boolean")
    ups = _updates(updates, MAX_UPDATES, "updates", max_tags_bytes)
    mems = _updates(members, MAX_MEMBERS, "members", max_tags_bytes)
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
    )


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
