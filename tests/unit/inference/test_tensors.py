"""Wire tensor codec: round trips for every dtype, and every malformed case refused."""

from __future__ import annotations

import pytest
import torch

from p2pagent._proto import common_pb2
from p2pagent.errors import InvalidArgument
from p2pagent.inference import dtypes, tensors

MAX = 1 << 20


def sample(dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    if dtype is torch.bool:
        return torch.randint(0, 2, shape, generator=g).bool()
    if dtype.is_floating_point:
        return torch.randn(shape, generator=g).to(dtype)
    info = torch.iinfo(dtype)
    return torch.randint(info.min, info.max, shape, generator=g, dtype=dtype)


@pytest.mark.parametrize("name", dtypes.NAMES)
@pytest.mark.parametrize("shape", [(3, 5), (2, 0, 4), (), (1,)])
def test_round_trip_every_dtype(name: str, shape: tuple[int, ...]) -> None:
    info = dtypes.BY_NAME[name]
    t = sample(info.torch_dtype, shape)
    wire = tensors.to_proto("x", t)
    assert wire.dtype == info.wire and list(wire.shape) == list(shape)
    assert len(wire.data) == t.numel() * info.itemsize
    back = tensors.from_proto(wire, MAX)
    assert back.dtype == t.dtype and back.shape == t.shape
    assert torch.equal(back, t)


def test_bytes_are_little_endian_row_major() -> None:
    wire = tensors.to_proto("x", torch.tensor([[1, 2]], dtype=torch.int32))
    assert wire.data == b"\x01\x00\x00\x00\x02\x00\x00\x00"


def test_non_contiguous_input_is_encoded_in_logical_order() -> None:
    t = torch.arange(6, dtype=torch.float32).reshape(2, 3).t()
    assert torch.equal(tensors.from_proto(tensors.to_proto("x", t), MAX), t)


def test_a_tensor_that_requires_grad_is_encoded_like_its_data() -> None:
    t = torch.arange(6, dtype=torch.float32).reshape(2, 3).requires_grad_()
    assert tensors.to_proto("x", t) == tensors.to_proto("x", t.detach())


def test_decoded_tensor_is_writable_and_owns_a_copy() -> None:
    wire = tensors.to_proto("x", torch.zeros(4))
    t = tensors.from_proto(wire, MAX)
    t += 1  # would fail or corrupt protobuf memory if it aliased the message bytes
    assert wire.data == bytes(16)


def wire(dtype: int, shape: list[int], data: bytes, name: str = "x") -> common_pb2.Tensor:
    return common_pb2.Tensor(name=name, dtype=dtype, shape=shape, data=data)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("msg", "match"),
    [
        (wire(common_pb2.DTYPE_UNSPECIFIED, [1], b"\0"), "unknown dtype 0"),
        (wire(99, [1], b"\0"), "unknown dtype 99"),
        (wire(common_pb2.DTYPE_FLOAT32, [-1, 4], b""), "negative dimension"),
        (wire(common_pb2.DTYPE_FLOAT32, [2, 3], bytes(20)), "needs 24 bytes, received 20"),
        (wire(common_pb2.DTYPE_FLOAT32, [2, 3], bytes(28)), "needs 24 bytes, received 28"),
        (wire(common_pb2.DTYPE_FLOAT32, [], b""), "needs 4 bytes, received 0"),
        (wire(common_pb2.DTYPE_FLOAT32, [1 << 40, 1 << 40], b""), "more than the 1048576 elements"),
        (wire(common_pb2.DTYPE_INT8, [MAX + 1], b""), "more than the"),
        (wire(common_pb2.DTYPE_BOOL, [2], b"\x01\x02"), "bool data must be bytes 0 or 1"),
    ],
)
def test_malformed_tensors_are_refused_before_allocation(
    msg: common_pb2.Tensor, match: str
) -> None:
    with pytest.raises(InvalidArgument, match=match) as e:
        tensors.from_proto(msg, MAX)
    assert "'x'" in str(e.value)  # the message names the tensor


def test_many_from_proto_named_positional_and_ambiguous() -> None:
    a = tensors.to_proto("a", torch.zeros(1))
    b = tensors.to_proto("b", torch.ones(1))
    named = tensors.many_from_proto([a, b], MAX)
    assert isinstance(named, dict) and set(named) == {"a", "b"}
    anon = tensors.to_proto("", torch.zeros(1))
    assert isinstance(tensors.many_from_proto([anon, anon], MAX), list)
    with pytest.raises(InvalidArgument, match="name every input"):
        tensors.many_from_proto([a, anon], MAX)
    with pytest.raises(InvalidArgument, match="given twice"):
        tensors.many_from_proto([a, a], MAX)


def test_unsupported_output_dtype_is_named() -> None:
    with pytest.raises(InvalidArgument, match="complex64"):
        tensors.to_proto("y", torch.zeros(2, dtype=torch.complex64))


def test_many_to_proto_keeps_names_and_order() -> None:
    out = tensors.many_to_proto({"p": torch.zeros(1), "q": torch.ones(2)})
    assert [t.name for t in out] == ["p", "q"]


def test_a_checked_layout_is_reused_only_for_the_same_layout_and_bound() -> None:
    """decode remembers layouts it has checked; what the checks depend on is all in the key:
    the same shape with fewer bytes, or under a lower element bound, is still refused, and a
    bool tensor's bytes are checked on every decode."""
    good = common_pb2.Tensor(dtype=common_pb2.DTYPE_FLOAT32, shape=[2, 3], data=bytes(24))
    assert tensors.decode(good, 100).shape == (2, 3)
    assert tensors.decode(good, 100).shape == (2, 3)  # from the checked layouts
    short = common_pb2.Tensor(dtype=common_pb2.DTYPE_FLOAT32, shape=[2, 3], data=bytes(20))
    with pytest.raises(InvalidArgument, match="needs 24 bytes"):
        tensors.decode(short, 100)
    with pytest.raises(InvalidArgument, match="max_tensor_elements"):
        tensors.decode(good, 5)
    ok = common_pb2.Tensor(name="m", dtype=common_pb2.DTYPE_BOOL, shape=[2], data=b"\x00\x01")
    assert tensors.decode(ok, 100).array.tolist() == [False, True]
    bad = common_pb2.Tensor(name="m", dtype=common_pb2.DTYPE_BOOL, shape=[2], data=b"\x00\x07")
    with pytest.raises(InvalidArgument, match="tensor 'm': bool data must be bytes 0 or 1"):
        tensors.decode(bad, 100)


def test_the_checked_layouts_stay_bounded() -> None:
    for n in range(1, tensors._CHECKED_MAX * 2):
        t = common_pb2.Tensor(dtype=common_pb2.DTYPE_UINT8, shape=[n], data=bytes(n))
        assert tensors.decode(t, 1 << 20).shape == (n,)
    assert len(tensors._CHECKED) <= tensors._CHECKED_MAX
