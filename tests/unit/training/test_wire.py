import asyncio
from collections.abc import AsyncIterator, Iterable

import numpy as np
import pytest

from p2pagent._proto import peer_pb2
from p2pagent.errors import InvalidArgument
from p2pagent.training import quantize, wire
from p2pagent.training.api import fingerprint, flatten, unflatten
from p2pagent.training.messages import Part, Phase


async def _stream(
    msgs: Iterable[peer_pb2.AveragePartsRequest],
) -> AsyncIterator[peer_pb2.AveragePartsRequest]:
    for m in msgs:
        yield m


def read(msgs: Iterable[peer_pb2.AveragePartsRequest], limit: int = 1 << 30) -> Part:
    return asyncio.run(wire.read_part(_stream(msgs), "verified-sender", limit))


def make_part(n: int) -> Part:
    data = np.arange(n, dtype=np.float32) / 7
    return Part("r", 3, "g", "claimed", Phase.GATHER, 1, 42.0, "spec", data)


def test_a_part_crosses_in_chunks_and_the_sender_is_the_verified_one() -> None:
    p = make_part(700_000)  # 2.8 MB: three chunks
    msgs = list(wire.part_messages(p, "none"))
    assert len(msgs) == 3
    got = read(msgs)
    assert got.sender == "verified-sender"
    assert got.data.tobytes() == p.data.tobytes()
    assert (got.run, got.round_no, got.phase, got.slice_index, got.weight) == (
        "r", 3, Phase.GATHER, 1, 42.0,
    )  # fmt: skip


def test_fp16_halves_the_bytes() -> None:
    p = make_part(1000)
    msgs = list(wire.part_messages(p, "fp16"))
    assert sum(len(m.data) for m in msgs) == 2000
    got = read(msgs)
    assert got.data.dtype == np.float32
    np.testing.assert_allclose(got.data, p.data, rtol=1e-3)


def test_a_part_over_the_limit_is_refused_before_it_is_read() -> None:
    msgs = list(wire.part_messages(make_part(1000), "none"))
    with pytest.raises(InvalidArgument, match="over this node's limit"):
        read(msgs, limit=100)


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda m: setattr(m[0], "dtype", "int4"), "dtype"),
        (lambda m: setattr(m[0], "phase", 9), "phase"),
        (lambda m: setattr(m[0], "length", 10), "longer"),
        (lambda m: setattr(m[0], "length", 2000), "declared"),
    ],
)
def test_malformed_part_streams_are_refused(mutate: object, match: str) -> None:
    msgs = list(wire.part_messages(make_part(1000), "none"))
    mutate(msgs)  # type: ignore[operator]
    with pytest.raises(InvalidArgument, match=match):
        read(msgs)
    with pytest.raises(InvalidArgument, match="empty"):
        read([])


def test_flatten_and_unflatten_round_trip_and_fingerprints_see_shapes() -> None:
    params = {"b": np.ones((2, 3), np.float32), "a": np.zeros(4, np.float32)}
    vec = flatten(params)
    assert vec.shape == (10,)
    back = unflatten(vec, params)
    assert all(back[k].tobytes() == params[k].tobytes() for k in params)
    other = {"b": np.ones((3, 2), np.float32), "a": np.zeros(4, np.float32)}
    assert fingerprint(params) != fingerprint(other)
    with pytest.raises(InvalidArgument, match="floating"):
        flatten({"steps": np.zeros(1, np.int64)})


def test_dp_clips_the_update_and_adds_noise_of_the_stated_scale() -> None:
    from p2pagent.training.privacy import DPConfig, privatize

    start = np.zeros(10_000, np.float32)
    current = np.full(10_000, 1.0, np.float32)  # update norm 100
    rng = np.random.default_rng(0)
    clipped, norm = privatize(current, start, DPConfig(clip_norm=1.0, noise_multiplier=0.0), rng)
    assert norm == pytest.approx(100.0)
    assert float(np.linalg.norm(clipped)) == pytest.approx(1.0, rel=1e-5)
    noised, _ = privatize(current, start, DPConfig(clip_norm=1.0, noise_multiplier=2.0), rng)
    assert float(np.std(noised - clipped)) == pytest.approx(2.0, rel=0.05)
    small = np.full(10_000, 1e-4, np.float32)
    same, _ = privatize(small, start, DPConfig(clip_norm=1.0, noise_multiplier=0.0), rng)
    np.testing.assert_allclose(same, small, rtol=1e-6)
    with pytest.raises(InvalidArgument):
        DPConfig(clip_norm=0.0, noise_multiplier=1.0)


def test_int8_takes_a_quarter_of_the_bytes_within_half_a_step_per_block() -> None:
    rng = np.random.default_rng(0)
    # Blocks of very different magnitudes: each keeps its own scale.
    data = np.concatenate(
        [rng.standard_normal(300) * 1e-3, rng.standard_normal(700) * 50.0]
    ).astype(np.float32)
    p = Part("r", 3, "g", "claimed", Phase.GATHER, 1, 42.0, "spec", data)
    msgs = list(wire.part_messages(p, "int8"))
    sent = sum(len(m.data) for m in msgs)
    assert sent == 4 * 4 + 1000  # four blocks' scales, one byte per value
    got = read(msgs)
    assert got.data.dtype == np.float32 and got.data.shape == data.shape
    for start in range(0, 1000, quantize.BLOCK):
        block = data[start : start + quantize.BLOCK]
        step = np.abs(block).max() / quantize.LEVELS
        err = np.abs(got.data[start : start + quantize.BLOCK] - block).max()
        assert err <= step / 2 * (1 + 1e-5)
    # Deterministic, and what every member rounds its own slice to.
    assert got.data.tobytes() == quantize.round_trip(data).tobytes()
    assert quantize.round_trip(np.zeros(10, np.float32)).tobytes() == bytes(40)


def test_an_int8_part_with_a_non_finite_scale_is_refused() -> None:
    p = make_part(600)
    msgs = list(wire.part_messages(p, "int8"))
    raw = bytearray(msgs[0].data)
    raw[0:4] = np.array([np.inf], "<f4").tobytes()
    msgs[0].data = bytes(raw)
    with pytest.raises(InvalidArgument, match="block scale"):
        read(msgs)
