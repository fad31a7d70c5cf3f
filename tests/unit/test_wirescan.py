"""Counting a repeated field from a protobuf message's bytes (transport/wirescan.py), and the
guard refusing a request of too many tensors before decoding it (issue 21: a 4 MiB Submit of
tiny tensors, a Peer.Complete of many outputs)."""

from __future__ import annotations

import pytest

from p2pagent import errors
from p2pagent._proto import agent_pb2, common_pb2, peer_pb2
from p2pagent.api.peer import request_scans
from p2pagent.tasks import admission
from p2pagent.tasks.config import TasksConfig
from p2pagent.transport import guard
from p2pagent.transport.wirescan import count_field


def _tiny(n: int) -> list[common_pb2.Tensor]:
    return [
        common_pb2.Tensor(dtype=common_pb2.DTYPE_FLOAT32, shape=[1], data=b"\0\0\0\0")
        for _ in range(n)
    ]


def test_the_count_matches_the_decoded_message() -> None:
    for n in (0, 1, 7, 300):
        req = agent_pb2.SubmitRequest(
            model="m" * 200, inputs=_tiny(n), priority=-3, deadline_s=1.5, model_version="ab"
        )
        assert count_field(req.SerializeToString(), 2, 10_000) == n
    done = peer_pb2.CompleteRequest(task_id="t", ok=True, outputs=_tiny(5), compute_s=2.0)
    assert count_field(done.SerializeToString(), 5, 100) == 5


def test_the_count_stops_past_the_bound() -> None:
    data = agent_pb2.SubmitRequest(model="m", inputs=_tiny(50)).SerializeToString()
    assert count_field(data, 2, 10) == 11


def test_malformed_bytes_end_the_count_without_raising() -> None:
    data = agent_pb2.SubmitRequest(model="m", inputs=_tiny(3)).SerializeToString()
    assert count_field(data[:-3], 2, 100) <= 3
    assert count_field(b"\xff" * 20, 2, 100) == 0
    assert count_field(b"\x13", 2, 100) == 0  # a group start: not ours, left to the decoder


def test_a_submit_of_many_tiny_tensors_is_refused_before_decoding() -> None:
    calls: list[bytes] = []

    def decoder(data: bytes) -> bytes:
        calls.append(data)
        return data

    scan = request_scans()["/p2pagent.v1.AgentService/Submit"]
    decode = guard._tolerant(decoder, "/p2pagent.v1.AgentService/Submit", (1 << 30, "knob"), scan)
    assert decode is not None
    many = agent_pb2.SubmitRequest(model="m", inputs=_tiny(admission.MAX_INPUT_TENSORS + 1))
    refused = decode(many.SerializeToString())
    assert calls == []
    with pytest.raises(errors.InvalidArgument, match=r"more than 1024 input tensors"):
        guard._check_decoded(refused)
    fine = agent_pb2.SubmitRequest(model="m", inputs=_tiny(admission.MAX_INPUT_TENSORS))
    assert decode(fine.SerializeToString()) == fine.SerializeToString()


def test_the_shortest_message_over_the_bound_is_still_scanned() -> None:
    # A short message skips the scan (no room for more tensors than the bound): the
    # shortest one that holds bound + 1 of them, two bytes each, must not.
    scan = request_scans()["/p2pagent.v1.AgentService/Infer"]
    empty = [common_pb2.Tensor() for _ in range(admission.MAX_INPUT_TENSORS + 1)]
    tight = agent_pb2.InferRequest(inputs=empty)
    assert len(tight.SerializeToString()) == 2 * (admission.MAX_INPUT_TENSORS + 1)
    assert "input tensors" in (scan(tight.SerializeToString()) or "")
    small = agent_pb2.InferRequest(model="m", inputs=_tiny(3))
    assert scan(small.SerializeToString()) is None


def test_a_complete_of_too_many_outputs_is_refused_before_decoding() -> None:
    scan = request_scans()["/p2pagent.v1.PeerService/Complete"]
    many = peer_pb2.CompleteRequest(ok=True, outputs=_tiny(admission.MAX_OUTPUT_TENSORS + 1))
    assert "output tensors" in (scan(many.SerializeToString()) or "")
    assert scan(peer_pb2.CompleteRequest(ok=True, outputs=_tiny(3)).SerializeToString()) is None


def test_a_result_over_the_bound_is_refused_where_it_ran() -> None:
    cfg = TasksConfig(max_result_bytes=1000)
    admission.check_result(3, 1000, cfg)
    with pytest.raises(errors.InvalidArgument, match=r"1001 bytes.*tasks\.max_result_bytes"):
        admission.check_result(3, 1001, cfg)
    with pytest.raises(errors.InvalidArgument, match="output tensors"):
        admission.check_result(admission.MAX_OUTPUT_TENSORS + 1, 0, cfg)


def test_varint_field_reads_a_request_id_without_decoding() -> None:
    from p2pagent._proto import agent_pb2
    from p2pagent.transport.wirescan import varint_field

    req = agent_pb2.InferStreamRequest(model="m", request_id=123456789, timeout_s=1.5)
    req.inputs.add(name="x", data=b"\x00" * 100)
    data = req.SerializeToString()
    assert varint_field(data, 5) == 123456789
    assert varint_field(agent_pb2.InferStreamRequest(model="m").SerializeToString(), 5) is None
    # Garbage after the id: the id is still read; garbage before it: not.
    assert varint_field(bytes([5 << 3, 9, 0xFF, 0xFF]), 5) == 9
    assert varint_field(bytes([0xFF, 0xFF, 0xFF]), 5) is None
