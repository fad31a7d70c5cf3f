"""msgpack wire format of the replicated state, with strict validation on the way in.

Every message is a msgpack array ``[version, tag, sender, ...body]``:

- ``[1, "d", sender, [delta, ...]]`` where ``delta = [op, context, groups]``,
  ``op = nil | [origin, first, last]``;
- ``[1, "g", sender, context, {origin: live_hash}, retired_hash, reply]`` (digest);
- ``[1, "r", sender, {origin: final}]`` (retired origins).

``context = {origin: [lo, hi, lo, hi, ...]}`` (closed counter ranges) and
``groups = [[ns, key, kind, [origin, counter, payload, origin, counter, payload, ...]], ...]``
with payloads ``[hlc, value]`` (LWW), ``value`` (MV), ``[p, n]`` (COUNTER), ``element``
(SET). Flat lists keep the per-dot overhead to a few bytes.

Decoding never raises anything but :class:`RemoteProtocolError` (or its subclass
:class:`UnsupportedVersion`), whatever the input; a message that decodes is internally
consistent (every live dot is in its delta's context, counters in range, no duplicate dots),
so merging it cannot break a replica's invariants.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from typing import Any

import msgpack  # type: ignore[import-untyped]

from p2pagent.errors import RemoteProtocolError, UnsupportedVersion, quoted
from p2pagent.state.clocks import MAX_COUNTER, DotContext, Range
from p2pagent.state.crdt import DotMap, KeyState, Kind
from p2pagent.state.messages import (
    Delta,
    DeltaMessage,
    DigestMessage,
    Message,
    OpId,
    RetiredMessage,
)
from p2pagent.state.values import read_key

VERSION = 1
_TAG_DELTA, _TAG_DIGEST, _TAG_RETIRED = "d", "g", "r"
#: Bytes reserved for a message's envelope when sizing slices (tag, version, sender, headers).
ENVELOPE_BYTES = 512
#: Room a received message may take over ``state.max_message_bytes``: the sender's slices
#: stay under it, and a peer with a slightly different build must not be refused for framing.
RECEIVE_SLACK_BYTES = 64 * 1024


# ---- encoding ------------------------------------------------------------------------------


def _flat_ranges(ranges: Iterable[Range]) -> list[int]:
    out: list[int] = []
    for lo, hi in ranges:
        out += (lo, hi)
    return out


def context_to_wire(ctx: DotContext) -> dict[str, list[int]]:
    return {o: _flat_ranges(ctx.ranges(o)) for o in ctx.origins()}


def payload_to_wire(kind: Kind, payload: Any) -> Any:
    return list(payload) if kind is Kind.LWW or kind is Kind.COUNTER else payload


def groups_to_wire(state: DotMap) -> list[Any]:
    groups: list[Any] = []
    for ns, key, ks in state.items():
        for kind, dots in ks.groups():
            flat: list[Any] = []
            for (origin, counter), payload in dots.items():
                flat += (origin, counter, payload_to_wire(kind, payload))
            groups.append([ns, key, int(kind), flat])
    return groups


def delta_to_wire(delta: Delta) -> list[Any]:
    op = None if delta.op is None else [delta.op.origin, delta.op.first, delta.op.last]
    return [op, context_to_wire(delta.state.context), groups_to_wire(delta.state)]


def encode_delta(delta: Delta) -> bytes:
    """One delta on its own (the delta buffer keeps deltas like this: compact bytes)."""
    if delta.wire is not None:
        return delta.wire
    return msgpack.packb(delta_to_wire(delta), use_bin_type=True)  # type: ignore[no-any-return]


def decode_delta(data: bytes) -> Delta:
    obj = _unpack(data, "delta")
    try:
        return _delta(obj, data)
    except _Bad as e:
        raise RemoteProtocolError(f"malformed delta: {e}") from None


def encode_message(msg: Message) -> bytes:
    body: list[Any]
    if isinstance(msg, DeltaMessage):
        body = [VERSION, _TAG_DELTA, msg.sender, [delta_to_wire(d) for d in msg.deltas]]
    elif isinstance(msg, DigestMessage):
        ctx = {o: _flat_ranges(r) for o, r in msg.context.items()}
        live = dict(msg.live)
        body = [VERSION, _TAG_DIGEST, msg.sender, ctx, live, msg.retired_hash, msg.reply]
    else:
        body = [VERSION, _TAG_RETIRED, msg.sender, dict(msg.retired)]
    return msgpack.packb(body, use_bin_type=True)  # type: ignore[no-any-return]


def encode_key_state(ks: KeyState) -> bytes:
    """One key's live dots, as stored in SQLite: ``[[kind, [origin, counter, payload, ...]]]``."""
    groups = []
    for kind, dots in ks.groups():
        flat: list[Any] = []
        for (origin, counter), payload in dots.items():
            flat += (origin, counter, payload_to_wire(kind, payload))
        groups.append([int(kind), flat])
    return msgpack.packb(groups, use_bin_type=True)  # type: ignore[no-any-return]


def encode_context(ctx: DotContext) -> bytes:
    return msgpack.packb(  # type: ignore[no-any-return]
        [context_to_wire(ctx), ctx.retired], use_bin_type=True
    )


# ---- size bounds used to cut messages ------------------------------------------------------
# Upper bounds of msgpack sizes: a str/bin of n bytes costs at most n + 5, an int at most 9,
# an array or map header at most 5. Summing bounds keeps every slice under the limit without
# encoding it twice.


def dot_bound(ns: str, key: str, origin: str, kind: Kind, payload: Any) -> int:
    """Upper bound of the bytes one live dot adds to a delta: its own group and context."""
    group = 5 + str_bound(ns) + str_bound(key) + 1 + 5
    dot = str_bound(origin) + 9 + _payload_bound(kind, payload)
    ctx = str_bound(origin) + 5 + 18
    return group + dot + ctx


def range_bound(origin: str) -> int:
    """Upper bound of the bytes one dead range of ``origin`` adds to a delta's context."""
    return str_bound(origin) + 5 + 18


def str_bound(s: str) -> int:
    return len(s) * 4 + 5 if not s.isascii() else len(s) + 5


def _payload_bound(kind: Kind, payload: Any) -> int:
    if kind is Kind.LWW:
        return 1 + 9 + len(payload[1]) + 5
    if kind is Kind.COUNTER:
        return 1 + 18
    return len(payload) + 5


# ---- decoding ------------------------------------------------------------------------------


class _Bad(Exception):
    """Internal: validation failed; turned into RemoteProtocolError at the boundary."""


def _fail(what: str) -> _Bad:
    return _Bad(what)


def _unpack(data: bytes, what: str) -> Any:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise RemoteProtocolError(f"{what} must be bytes, got {type(data).__name__}")
    try:
        return msgpack.unpackb(bytes(data), raw=False, use_list=True, strict_map_key=True)
    except Exception as e:  # msgpack raises many types for garbage; all mean the same
        raise RemoteProtocolError(f"{what} is not valid msgpack: {e}") from None


def decode_message(data: bytes, max_bytes: int | None = None) -> Message:
    """Decodes and validates one message; raises RemoteProtocolError/UnsupportedVersion.

    A message over ``max_bytes`` is refused before a byte of it is decoded: msgpack of small
    nested arrays costs ~70 times its size in Python objects."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise RemoteProtocolError(f"state message must be bytes, got {type(data).__name__}")
    if max_bytes is not None and len(data) > max_bytes:
        raise RemoteProtocolError(
            f"state message of {len(data)} bytes is over the {max_bytes} this node accepts "
            "(state.max_message_bytes)"
        )
    data = bytes(data)
    try:
        # No local holds what was decoded: a refusal's traceback would keep it alive (a
        # megabyte of msgpack is ~90 MB of objects) for as long as the error is referenced.
        return _decode_body(*_read_fields(data))
    except RemoteProtocolError as e:
        error = e
    except _Bad as e:
        error = RemoteProtocolError(f"malformed state message: {e}")
    except Exception as e:  # msgpack raises many types for garbage; all mean the same
        error = RemoteProtocolError(f"malformed state message: {e!r}")
    raise error.with_traceback(None)


def _read_fields(data: bytes) -> tuple[list[Any], list[bytes]]:
    """Reads the top-level array; for a delta message also the raw bytes of each delta, which
    the receiver keeps in its delta buffer without encoding it again."""
    u = msgpack.Unpacker(raw=False, use_list=True, strict_map_key=True)
    u.feed(data)
    n = u.read_array_header()
    if n < 1:
        raise RemoteProtocolError("state message must be a non-empty msgpack array")
    version = u.unpack()
    if not isinstance(version, int) or isinstance(version, bool):
        raise RemoteProtocolError("state message has no protocol version")
    if version != VERSION:
        raise UnsupportedVersion(
            f"state protocol version {version} is not supported (this node speaks {VERSION}); "
            "upgrade the older node"
        )
    fields: list[Any] = [version]
    raws: list[bytes] = []
    for i in range(1, n):
        if i == 3 and fields[1] == _TAG_DELTA and n == 4:
            deltas = []
            for _ in range(u.read_array_header()):
                start = u.tell()
                deltas.append(u.unpack())
                raws.append(data[start : u.tell()])
            fields.append(deltas)
        else:
            fields.append(u.unpack())
    if u.tell() != len(data):
        raise RemoteProtocolError("state message has trailing bytes")
    return fields, raws


def _decode_body(obj: list[Any], raws: list[bytes]) -> Message:
    if len(obj) < 3:
        raise _fail("too few fields")
    tag, sender = obj[1], _name(obj[2], "sender")
    if tag == _TAG_DELTA and len(obj) == 4:
        deltas = _list(obj[3], "deltas")
        return DeltaMessage(sender, tuple(_delta(d, raw) for d, raw in zip(deltas, raws)))
    if tag == _TAG_DIGEST and len(obj) == 7:
        ctx = _context(obj[3])
        live = _retired(obj[4])  # same shape: origin -> unsigned 63-bit integer
        rhash, reply = obj[5], obj[6]
        if not isinstance(rhash, bytes) or len(rhash) > 64:
            raise _fail("retired hash must be at most 64 bytes")
        if not isinstance(reply, bool):
            raise _fail("reply flag must be a boolean")
        ranges = {o: tuple(ctx.ranges(o)) for o in ctx.origins()}
        return DigestMessage(sender, ranges, live, rhash, reply)
    if tag == _TAG_RETIRED and len(obj) == 4:
        return RetiredMessage(sender, _retired(obj[3]))
    raise _fail(f"unknown message tag {quoted(tag)} or wrong field count {len(obj)}")


def _list(v: Any, what: str) -> list[Any]:
    if not isinstance(v, list):
        raise _fail(f"{what} must be an array")
    return v


def _name(v: Any, what: str) -> str:
    if not isinstance(v, str) or not v or len(v) > 256:
        raise _fail(f"{what} must be a non-empty string of at most 256 characters")
    return v


def _text(v: Any, what: str) -> str:
    if not isinstance(v, str) or len(v) > 65536:
        raise _fail(f"{what} must be a string")
    return v


def _counter(v: Any, what: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= MAX_COUNTER:
        raise _fail(f"{what} must be an integer in 1..2^63-1")
    return v


def _uint(v: Any, what: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= MAX_COUNTER:
        raise _fail(f"{what} must be an integer in 0..2^63-1")
    return v


def _context(v: Any) -> DotContext:
    if not isinstance(v, dict):
        raise _fail("context must be a map")
    ctx = DotContext()
    for origin, flat in v.items():
        _name(origin, "origin")
        flat = _list(flat, "context ranges")
        if len(flat) % 2:
            raise _fail("context ranges must come in pairs")
        ranges: list[Range] = []
        prev = -1
        for i in range(0, len(flat), 2):
            lo, hi = _counter(flat[i], "range start"), _counter(flat[i + 1], "range end")
            # Sorted, disjoint and non-adjacent, as encoders write them: building the context
            # stays linear however many ranges a hostile peer sends.
            if lo > hi or lo <= prev + 1:
                raise _fail("context ranges must be sorted, disjoint and non-adjacent")
            ranges.append((lo, hi))
            prev = hi
        if ranges:
            ctx.set_ranges(origin, ranges)
    return ctx


def _retired(v: Any) -> dict[str, int]:
    if not isinstance(v, dict):
        raise _fail("retired origins must be a map")
    return {_name(o, "origin"): _uint(c, "retired counter") for o, c in v.items()}


def _payload(kind: Kind, v: Any) -> Any:
    if kind is Kind.LWW:
        if (
            isinstance(v, list)
            and len(v) == 2
            and isinstance(v[1], bytes)
            and isinstance(v[0], int)
            and not isinstance(v[0], bool)
            and 0 <= v[0] <= MAX_COUNTER
        ):
            return (v[0], v[1])
        raise _fail("LWW payload must be [timestamp, bytes]")
    if kind is Kind.COUNTER:
        if isinstance(v, list) and len(v) == 2:
            return (_uint(v[0], "counter p"), _uint(v[1], "counter n"))
        raise _fail("counter payload must be [p, n]")
    if not isinstance(v, bytes):
        raise _fail(f"{kind.name} payload must be bytes")
    return v


def _kind(v: Any) -> Kind:
    if not isinstance(v, int) or isinstance(v, bool) or v not in Kind._value2member_map_:
        raise _fail(f"unknown value kind {quoted(v)}")
    return Kind(v)


def _dots(flat: Any, kind: Kind) -> Iterator[tuple[str, int, Any]]:
    flat = _list(flat, "dots")
    if len(flat) % 3:
        raise _fail("dots must come in (origin, counter, payload) triples")
    for i in range(0, len(flat), 3):
        origin = _name(flat[i], "origin")
        yield origin, _counter(flat[i + 1], "counter"), _payload(kind, flat[i + 2])


def _delta(v: Any, raw: bytes | None = None) -> Delta:
    v = _list(v, "delta")
    if len(v) != 3:
        raise _fail("delta must be [op, context, groups]")
    state = DotMap()
    state.context = ctx = _context(v[1])
    seen: set[tuple[str, int]] = set()
    for group in _list(v[2], "groups"):
        group = _list(group, "group")
        if len(group) != 4:
            raise _fail("group must be [namespace, key, kind, dots]")
        ns, key, kind = _text(group[0], "namespace"), _text(group[1], "key"), _kind(group[2])
        for origin, counter, payload in _dots(group[3], kind):
            dot = (origin, counter)
            if dot in seen:
                raise _fail(f"dot {dot} appears twice")
            if not ctx.contains(origin, counter):
                raise _fail(f"live dot {dot} is missing from the delta's context")
            seen.add(dot)
            state.add_dot(ns, key, kind, dot, payload)
    op = None
    if v[0] is not None:
        opv = _list(v[0], "op")
        if len(opv) != 3:
            raise _fail("op must be [origin, first, last]")
        op = OpId(
            _name(opv[0], "op origin"), _counter(opv[1], "op first"), _counter(opv[2], "op last")
        )
        if op.first > op.last or not all(ctx.contains(op.origin, c) for c in (op.first, op.last)):
            raise _fail("op range is inverted or outside the delta's context")
    return Delta(state, op, raw if op is not None else None)


def decode_key_state(data: bytes) -> KeyState:
    """Decodes a stored key (raises RemoteProtocolError when the bytes are damaged)."""
    obj = _unpack(data, "stored key")
    try:
        groups = _list(obj, "key state")
        ks: KeyState | None = None
        for group in groups:
            group = _list(group, "group")
            if len(group) != 2:
                raise _fail("group must be [kind, dots]")
            kind = _kind(group[0])
            for origin, counter, payload in _dots(group[1], kind):
                if ks is None:
                    ks = KeyState(kind)
                ks.add(kind, (origin, counter), payload)
        if ks is None:
            raise _fail("a stored key has no dots")
        return ks
    except _Bad as e:
        raise RemoteProtocolError(f"damaged stored key: {e}") from None


def decode_context(data: bytes) -> DotContext:
    obj = _unpack(data, "stored context")
    try:
        pair = _list(obj, "stored context")
        if len(pair) != 2:
            raise _fail("stored context must be [ranges, retired]")
        ctx = _context(pair[0])
        ctx.retired = _retired(pair[1])
        return ctx
    except _Bad as e:
        raise RemoteProtocolError(f"damaged stored context: {e}") from None


# ---- state digest --------------------------------------------------------------------------


def state_digest(state: DotMap) -> str:
    """Hex SHA-256 of everything a reader can observe, in canonical order.

    Two replicas with the same digest answer every Get and Scan identically.
    """
    h = hashlib.sha256()
    pack = msgpack.Packer(use_bin_type=True)
    for ns in sorted(state.entries):
        keys = state.entries[ns]
        for key in sorted(keys):
            r = read_key(keys[key])
            assert r.kind is not None
            h.update(
                pack.pack(
                    [
                        ns,
                        key,
                        int(r.kind),
                        list(r.values),
                        str(r.counter),  # a sum over origins may exceed 64 bits
                        list(r.elements),
                        sorted(r.version.items()),
                    ]
                )
            )
    return h.hexdigest()
