"""Counting a repeated field of a protobuf message from its bytes, without decoding it.

Decoding is what costs memory: a 4 MiB request of a few hundred thousand tiny tensors costs
~25 times its size in protobuf objects before any handler could count them. The guard runs a
``count_field`` scan on the raw bytes of the methods that carry tensors and refuses a request
over its count before the decoder sees it. The scan reads only the top-level field keys and
lengths, and stops at the first occurrence past the bound, so its cost is bounded by the
bound, not by the message.

Pure: bytes in, a count out. Malformed bytes are not judged here: the scan stops and the real
decoder refuses them with its own words.
"""

from __future__ import annotations

#: Protobuf wire types.
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """The varint at ``pos`` and the position after it; ValueError when truncated/too long."""
    value = shift = 0
    end = min(len(data), pos + 10)
    while pos < end:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
    raise ValueError("truncated varint")


def count_field(data: bytes, field: int, stop_after: int) -> int:
    """Occurrences of top-level field number ``field`` in the message ``data``, counting no
    further than ``stop_after + 1`` (enough to say it is over). Malformed bytes end the count
    where they start (the decoder reports them)."""
    count, pos, size = 0, 0, len(data)
    try:
        while pos < size:
            key, pos = _varint(data, pos)
            number, wire = key >> 3, key & 7
            if wire == _VARINT:
                _, pos = _varint(data, pos)
            elif wire == _I64:
                pos += 8
            elif wire == _I32:
                pos += 4
            elif wire == _LEN:
                length, pos = _varint(data, pos)
                pos += length
            else:  # groups (never in our protos) or garbage
                return count
            if number == field:
                count += 1
                if count > stop_after:
                    return count
    except ValueError:
        pass
    return count


def varint_field(data: bytes, field: int) -> int | None:
    """The value of top-level varint field number ``field`` in ``data`` (its last occurrence,
    as protobuf decodes it), or None when absent or the bytes are malformed before it: the
    request id of a multiplexed stream's message that is refused without being decoded."""
    found, pos, size = None, 0, len(data)
    try:
        while pos < size:
            key, pos = _varint(data, pos)
            number, wire = key >> 3, key & 7
            if wire == _VARINT:
                value, pos = _varint(data, pos)
                if number == field:
                    found = value
            elif wire == _I64:
                pos += 8
            elif wire == _I32:
                pos += 4
            elif wire == _LEN:
                length, pos = _varint(data, pos)
                pos += length
            else:
                return found
    except ValueError:
        pass
    return found
