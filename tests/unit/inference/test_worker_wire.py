"""The model worker's channel and sandbox plan, without a worker process: what the daemon
accepts from the (untrusted) worker, how tensors are laid out, which paths it may reach."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import msgpack  # type: ignore[import-untyped]
import numpy as np
import pytest

from p2pagent.errors import ConfigError
from p2pagent.inference import dtypes, isolation, sandbox, worker_tensors
from p2pagent.inference.config import InferenceConfig
from p2pagent.inference.tensors import HostTensor
from p2pagent.inference.worker_wire import (
    ALIGN,
    MAX_MESSAGE,
    ChannelClosed,
    Region,
    TensorRef,
    layout,
    receive,
    send,
)

F32 = dtypes.BY_NAME["float32"]


def test_layout_aligns_every_tensor_and_counts_the_bytes() -> None:
    refs, needed = layout([(F32, (3, 5)), (dtypes.BY_NAME["int8"], (7,)), (F32, (0, 4))])
    assert [r.offset for r in refs] == [0, 64, 128]
    assert [r.nbytes for r in refs] == [60, 7, 0]
    assert needed == 128
    assert all(r.offset % ALIGN == 0 for r in refs)


def test_a_reference_round_trips_and_must_lie_inside_the_region() -> None:
    ref = TensorRef(F32, (2, 3), 64)
    assert TensorRef.checked(ref.pack(), 64 + 24, "out") == ref
    with pytest.raises(ChannelClosed, match="past the end"):
        TensorRef.checked(ref.pack(), 64 + 23, "out")


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (["float32", [2]], "not \\[dtype, shape, offset\\]"),
        (["complex64", [2], 0], "unknown dtype"),
        (["float32", [-1], 0], "negative or huge"),
        (["float32", [1 << 60], 0], "negative or huge"),
        (["float32", [1] * 17, 0], "at most 16"),
        (["float32", [2], 3], "bad offset"),
        (["float32", [2], -64], "bad offset"),
        ("float32", "not \\[dtype"),
    ],
)
def test_a_bad_reference_from_the_worker_is_refused(raw: object, why: str) -> None:
    with pytest.raises(ChannelClosed, match=why):
        TensorRef.checked(raw, 1 << 20, "out")


def test_messages_and_descriptors_cross_the_socket() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    region = Region.create(10, "test")
    with a, b:
        send(a, {"op": "inbuf", "size": region.size}, [region.fd])
        message, fds = receive(b)
        assert message == {"op": "inbuf", "size": region.size}
        other = Region.adopt(fds[0], message["size"])
        region.map[:5] = b"hello"
        assert other.map[:5] == b"hello"  # the same memory, no copy
        other.close()
    region.close()
    assert region.size == 1 << 20  # at least a MiB, a power of two


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (b"", "closed"),
        (b"\xc1", "not msgpack"),
        (msgpack.packb([1, 2]), "not a map"),
        (b"\x00" * (MAX_MESSAGE + 10), "over"),
    ],
)
def test_garbage_from_the_worker_closes_the_channel(payload: bytes, why: str) -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with a, b:
        if payload:
            a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
            a.send(payload)
        else:
            a.shutdown(socket.SHUT_WR)
        with pytest.raises(ChannelClosed, match=why):
            receive(b)


def test_more_descriptors_than_a_message_may_carry_close_the_channel() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    regions = [Region.create(1, "test") for _ in range(6)]
    with a, b:
        socket.send_fds(a, [msgpack.packb({"op": "x"})], [r.fd for r in regions])
        with pytest.raises(ChannelClosed, match="too many fds"):
            receive(b)
    for r in regions:
        r.close()


def test_a_batch_is_written_into_the_region_as_its_parts_joined() -> None:
    f32 = dtypes.BY_NAME["float32"]
    parts = [
        np.arange(6, dtype=np.float32).reshape(2, 3),
        np.arange(6, 12, dtype=np.float32).reshape(3, 2).T[:1],  # a strided view
        np.arange(20, 23, dtype=np.float32).reshape(1, 3),
    ]
    batch = [[HostTensor(f32, a)] for a in parts]
    refs, needed = worker_tensors.input_layout(batch, True, 4)
    region = Region.create(needed, "test")
    worker_tensors.write_inputs(region, refs, batch)
    written = np.frombuffer(region.map, np.float32, 12, refs[0].offset).reshape(4, 3)
    assert np.array_equal(written, np.concatenate(parts))
    del written
    region.close()


def test_a_region_announced_larger_than_it_is_is_refused() -> None:
    region = Region.create(1, "test")
    import os

    fd = os.dup(region.fd)
    with pytest.raises(ChannelClosed, match="announced"):
        Region.adopt(fd, region.size * 2)
    region.close()


def test_the_plan_never_allows_a_root_holding_the_key_or_data(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    certs.mkdir()
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "mod.py").write_text("")
    (tmp_path / "to-certs").symlink_to(certs)
    # A certificate folder inside the import path: that root is granted entry by entry,
    # the certificate folder (and a link to it) left out, the code beside it readable.
    sys.path.append(str(tmp_path))
    try:
        plan = isolation.plan(-1, [certs / "n1.key", certs, tmp_path / "data"], tmp_path / "w")
    finally:
        sys.path.remove(str(tmp_path))
    allowed = {r.path: r.access for r in plan.rules}
    assert str(certs.resolve()) in plan.withheld
    assert str(tmp_path.resolve()) not in {r.path for r in plan.rules}
    assert {r.path: r.access for r in plan.rules}[str((tmp_path / "pkg").resolve())] is (
        sandbox.Access.READ
    )
    for path in allowed:
        p = Path(path)
        assert not (certs.resolve().is_relative_to(p) or p.is_relative_to(certs.resolve())), p
    assert allowed[str(tmp_path / "w")] is sandbox.Access.WRITE
    assert allowed["/dev"] is sandbox.Access.DEVICES
    assert allowed[sys.prefix] is sandbox.Access.READ or sys.prefix in plan.withheld
    assert "model worker runs as" in isolation.describe(plan)


def test_reachability_follows_the_permission_bits(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o700)
    inner = locked / "python"
    inner.mkdir()
    (tmp_path / "open").mkdir(mode=0o755)
    owner = locked.stat().st_uid
    assert sandbox.path_is_reachable(str(tmp_path / "open"), 65534, 65534) == (
        sandbox.path_is_reachable(str(tmp_path), 65534, 65534)
    )
    assert not sandbox.path_is_reachable(str(inner), owner + 1, 65534)
    assert sandbox.path_is_reachable(str(inner), owner, 65534) == (
        sandbox.path_is_reachable(str(tmp_path), owner, 65534)
    )


@pytest.mark.parametrize(
    ("field", "value", "why"),
    [("worker_uid", -2, "worker_uid"), ("worker_timeout_s", 0.0, "worker_timeout_s")],
)
def test_isolation_settings_are_checked(field: str, value: object, why: str) -> None:
    config = InferenceConfig(**{field: value})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=why):
        config.validate()


def test_outputs_are_read_out_as_copies_through_views_kept_per_answer() -> None:
    """The daemon keeps the checked views an answer's references make (the worker sends
    the same answer for every batch of one layout) and copies the outputs out of them: the
    next batch's bytes in the region never show through an earlier answer's outputs."""
    region = Region.create(1 << 20, "test-out")
    try:
        raw = [["float32", [2, 3], 0], ["int64", [0], 64]]
        view = np.ndarray((2, 3), dtype=np.float32, buffer=region.map)
        view[:] = 1.0
        first = worker_tensors.read_outputs(region, raw)
        assert id(raw) in region.reads
        view[:] = 2.0
        second = worker_tensors.read_outputs(region, raw)
        assert first[0].tolist() == [[1.0] * 3] * 2 and second[0].tolist() == [[2.0] * 3] * 2
        assert first[1].shape == (0,) and str(first[1].dtype) == "torch.int64"
        del view
        with pytest.raises(ChannelClosed, match="past the end"):
            worker_tensors.read_outputs(region, [["float32", [1 << 20], 0]])
    finally:
        region.close()
    assert not region.reads
