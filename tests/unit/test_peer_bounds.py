"""Every Peer message is size-checked before it is decoded, and every tensor a peer hands
over is checked against its bytes before anything is allocated (issue 21, item 8)."""

from __future__ import annotations

import msgpack  # type: ignore[import-untyped]
import pytest

from p2pagent import errors
from p2pagent._proto import common_pb2, peer_pb2
from p2pagent.api.peer import request_limits
from p2pagent.config import Config
from p2pagent.inference import tensor_checks
from p2pagent.membership import codec as membership_codec
from p2pagent.state import codec as state_codec
from p2pagent.tasks import wire
from p2pagent.transport import guard


def test_every_peer_method_has_a_bound_under_the_transports() -> None:
    config = Config(name="n1")
    limits = request_limits(config, config.state.max_message_bytes)
    methods = peer_pb2.DESCRIPTOR.services_by_name["PeerService"].methods
    for m in methods:
        path = f"/p2pagent.v1.PeerService/{m.name}"
        size, setting = limits[path]
        assert size < config.max_message_bytes, path
        assert setting
    assert limits["/p2pagent.v1.PeerService/Replicate"][0] < 2 * config.state.max_message_bytes
    for public in ("Submit", "SubmitAndWait", "Infer"):
        assert limits[f"/p2pagent.v1.AgentService/{public}"][1] == "tasks.max_payload_bytes"
    complete, setting = limits["/p2pagent.v1.PeerService/Complete"]
    assert setting == "tasks.max_result_bytes"
    assert config.tasks.max_result_bytes < complete < 2 * config.tasks.max_result_bytes


def test_an_oversized_request_is_refused_without_calling_the_decoder() -> None:
    calls: list[bytes] = []

    def decoder(data: bytes) -> bytes:
        calls.append(data)
        return data

    decode = guard._tolerant(decoder, "/p2pagent.v1.PeerService/Replicate", (100, "state.knob"))
    assert decode is not None
    assert decode(b"x" * 100) == b"x" * 100
    refused = decode(b"x" * 101)
    assert calls == [b"x" * 100]  # the oversized one never reached the decoder
    with pytest.raises(errors.InvalidArgument, match=r"101 bytes is over the 100.*state\.knob"):
        guard._check_decoded(refused)


def _nested_arrays(n: int) -> bytes:
    """msgpack of ``n`` empty arrays in one array: the cheapest bytes to decode dearly."""
    return bytes([0xDD]) + n.to_bytes(4, "big") + b"\x90" * n


def test_state_messages_over_the_bound_are_refused_undecoded() -> None:
    payload = _nested_arrays(1 << 16)
    with pytest.raises(errors.RemoteProtocolError, match=r"state\.max_message_bytes"):
        state_codec.decode_message(payload, max_bytes=1 << 16)
    with pytest.raises(errors.RemoteProtocolError, match=r"malformed|version"):
        state_codec.decode_message(payload, max_bytes=1 << 17)  # decoded, then refused


def test_membership_messages_over_the_bound_are_refused_undecoded() -> None:
    with pytest.raises(membership_codec.MalformedMessage, match="over the 1000"):
        membership_codec.decode(b"\x90" * 1001, max_bytes=1000)
    big = _nested_arrays(membership_codec.MAX_PUSH_PULL_BYTES)
    with pytest.raises(membership_codec.MalformedMessage, match="over the"):
        membership_codec.decode(big)


def test_load_reports_over_the_bound_are_refused_undecoded() -> None:
    env = common_pb2.Envelope(
        version=wire.LOAD_VERSION, payload=_nested_arrays(wire.MAX_REPORT_BYTES)
    )
    with pytest.raises(errors.RemoteProtocolError, match="over the"):
        wire.decode_report(env)
    ok = msgpack.packb({"node": "x"})
    with pytest.raises(errors.RemoteProtocolError, match="malformed"):
        wire.decode_report(common_pb2.Envelope(version=wire.LOAD_VERSION, payload=ok))


def _spec(*inputs: common_pb2.Tensor) -> peer_pb2.TaskSpec:
    return peer_pb2.TaskSpec(task_id="n1-0123456789abcdef", origin="n1", model="m", inputs=inputs)


def test_a_handed_over_task_may_not_declare_more_than_its_bytes() -> None:
    huge = common_pb2.Tensor(dtype=common_pb2.DTYPE_UINT8, shape=[2**31, 2**31], data=b"\x00")
    with pytest.raises(
        errors.InvalidArgument, match=r"needs at least 2147483648 bytes, received 1"
    ):
        wire.task_from_spec(_spec(huge))
    short = common_pb2.Tensor(dtype=common_pb2.DTYPE_FLOAT32, shape=[2, 3], data=bytes(20))
    with pytest.raises(errors.InvalidArgument, match="needs 24 bytes, received 20"):
        wire.task_from_spec(_spec(short))
    unknown = common_pb2.Tensor(dtype=99, shape=[1], data=b"\x00")  # type: ignore[arg-type]
    with pytest.raises(errors.InvalidArgument, match="unknown dtype"):
        wire.task_from_spec(_spec(unknown))
    good = common_pb2.Tensor(dtype=common_pb2.DTYPE_FLOAT32, shape=[2, 3], data=bytes(24))
    empty = common_pb2.Tensor(dtype=common_pb2.DTYPE_FLOAT32, shape=[0, 2**40], data=b"")
    assert wire.task_from_spec(_spec(good, empty)).input_bytes == 24


def test_a_handed_over_task_with_a_huge_id_or_too_many_inputs_is_refused() -> None:
    with pytest.raises(errors.InvalidArgument, match="characters"):
        wire.task_from_spec(peer_pb2.TaskSpec(task_id="x" * (1 << 20), origin="n1", model="m"))
    many = [common_pb2.Tensor(dtype=common_pb2.DTYPE_UINT8, shape=[1], data=b"\x00")] * 2000
    with pytest.raises(errors.InvalidArgument, match="input tensors"):
        wire.task_from_spec(_spec(*many))


def test_check_wire_refuses_deep_and_negative_shapes() -> None:
    deep = common_pb2.Tensor(dtype=common_pb2.DTYPE_UINT8, shape=[1] * 1000, data=b"\x00")
    with pytest.raises(errors.InvalidArgument, match="1000 dimensions"):
        tensor_checks.check_wire(deep)
    negative = common_pb2.Tensor(dtype=common_pb2.DTYPE_UINT8, shape=[-1, -1], data=b"\x01")
    with pytest.raises(errors.InvalidArgument, match="negative"):
        tensor_checks.check_wire(negative)
    long_name = common_pb2.Tensor(name="n" * (1 << 20), dtype=99, shape=[1])  # type: ignore[arg-type]
    with pytest.raises(errors.InvalidArgument) as e:
        tensor_checks.check_wire(long_name)
    assert len(str(e.value)) < 400


def test_a_result_declaring_more_than_its_bytes_becomes_a_failure() -> None:
    bad = common_pb2.Tensor(dtype=common_pb2.DTYPE_FLOAT32, shape=[2**31, 2**31], data=b"\x00" * 4)
    result = peer_pb2.CompleteRequest(task_id="n1-0", executor="n2", attempt=3, ok=True,
                                      outputs=[bad])  # fmt: skip
    checked = wire.checked_result(result)
    assert not checked.ok and checked.error_code == "INTERNAL" and checked.attempt == 3
    assert "n2 returned a malformed output" in checked.error_message
    good = common_pb2.Tensor(dtype=common_pb2.DTYPE_FLOAT32, shape=[1], data=b"\x00" * 4)
    ok = peer_pb2.CompleteRequest(task_id="n1-0", executor="n2", ok=True, outputs=[good])
    assert wire.checked_result(ok) is ok
