"""Model sharing against one real daemon: publish in chunks, list, serve chunks to a peer,
infer by name, delete; bad input refused with INVALID_ARGUMENT naming the problem; a cut-off
upload publishes nothing and leaves no chunk behind; the CLI's push/ls/rm with --json."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from p2pagent._proto import agent_pb2, agent_pb2_grpc, common_pb2, peer_pb2, peer_pb2_grpc
from p2pagent.testing.channels import channel
from p2pagent.testing.daemon import Daemon
from p2pagent.testing.uploads import header_with, noop_metadata, publish_requests

CHUNK = 16 * 1024


def fake_safetensors(size: int, seed: int) -> bytes:
    """A safetensors file with no tensors (8-byte length, JSON header), then noise: loads as
    the ``noop`` architecture of ``header``'s default metadata."""
    header = b'{"__metadata__":{}}'
    body = np.random.default_rng(seed).bytes(size - 8 - len(header))
    return struct.pack("<Q", len(header)) + header + body


def upload(
    header: agent_pb2.PublishModelRequest.Header, data: bytes, piece: int = 10_000
) -> Iterator[agent_pb2.PublishModelRequest]:
    """The header with the SHA-256 of ``data`` (unless it has one), then ``data``."""
    return publish_requests(header, data, piece)


def header(
    name: str, size: int, fmt: str = "safetensors", chunk_size: int = CHUNK, **kw: object
) -> agent_pb2.PublishModelRequest.Header:
    kw.setdefault("metadata", noop_metadata())
    return agent_pb2.PublishModelRequest.Header(
        name=name,
        format=fmt,
        size=size,
        chunk_size=chunk_size,
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, certs_dir: Path) -> Iterator[Daemon]:
    d = Daemon("n6", certs_dir, tmp_path_factory.mktemp("models") / "n6").start()
    try:
        yield d
    finally:
        d.kill()


@pytest.fixture()
def stub(node: Daemon, certs_dir: Path) -> Iterator[agent_pb2_grpc.AgentServiceStub]:
    with channel(node.address, certs_dir, "publisher") as ch:  # publishing needs the publisher role
        yield agent_pb2_grpc.AgentServiceStub(ch)


def _error(call: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as e:
        call()  # type: ignore[operator]
    return e.value


def _version_files(node: Daemon) -> set[str]:
    """The files of the node's versions (uploads in progress are temporary files)."""
    return {p.name for p in (node.data / "models" / "versions").glob("*")
            if not p.name.startswith(".tmp-")}  # fmt: skip


def _upload_bytes(node: Daemon) -> int:
    """Bytes held by uploads in progress (their temporary files)."""
    return sum(p.stat().st_size for p in (node.data / "models" / "versions").glob(".tmp-upload.*"))


def test_publish_lists_and_serves_every_chunk(
    node: Daemon, stub: agent_pb2_grpc.AgentServiceStub, certs_dir: Path
) -> None:
    data = fake_safetensors(5 * CHUNK + 123, seed=1)
    v = stub.PublishModel(upload(header("weights", len(data)), data), timeout=30).version
    assert v.name == "weights" and v.size == len(data) and v.chunks == 6
    assert v.sha256 == hashlib.sha256(data).hexdigest()
    assert list(v.holders) == ["n6"]

    listed = stub.ListModels(agent_pb2.ListModelsRequest(name="weights"), timeout=10).versions
    assert [x.manifest_id for x in listed] == [v.manifest_id]
    assert list(listed[0].holders) == ["n6"]

    # A peer (node identity) fetches chunks in the order asked, byte for byte.
    with channel(node.address, certs_dir, who="n1") as ch:
        peer = peer_pb2_grpc.PeerServiceStub(ch)
        req = peer_pb2.FetchChunksRequest(manifest_id=v.manifest_id, indices=[5, 0, 3])
        chunks = list(peer.FetchChunks(req, timeout=10))
        assert [c.index for c in chunks] == [5, 0, 3]
        for c in chunks:
            assert c.data == data[c.index * CHUNK : (c.index + 1) * CHUNK]
        unknown = peer_pb2.FetchChunksRequest(manifest_id="0" * 64, indices=[0])
        err = _error(lambda: list(peer.FetchChunks(unknown, timeout=10)))
        assert err.code() == grpc.StatusCode.NOT_FOUND
    # A client identity may not fetch chunks (Peer is for nodes only).
    with channel(node.address, certs_dir) as ch:
        req = peer_pb2.FetchChunksRequest(manifest_id=v.manifest_id, indices=[0])
        err = _error(lambda: list(peer_pb2_grpc.PeerServiceStub(ch).FetchChunks(req, timeout=10)))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.parametrize(
    ("name", "problem"),
    [("a/b", "path separator"), ("..", "'..'"), ("x..y", "'..'"), ("", "empty")],
)
def test_bad_names_are_refused_naming_the_problem(
    stub: agent_pb2_grpc.AgentServiceStub, name: str, problem: str
) -> None:
    data = fake_safetensors(CHUNK, seed=2)
    err = _error(lambda: stub.PublishModel(upload(header(name, len(data)), data), timeout=10))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert problem in (err.details() or "")


def test_inconsistent_uploads_are_refused_and_publish_nothing(
    node: Daemon, stub: agent_pb2_grpc.AgentServiceStub
) -> None:
    before = _version_files(node)
    data = fake_safetensors(4 * CHUNK, seed=3)
    cases = [
        (header("short", len(data) + 10), data, "ended after"),
        (header("long", len(data) - 10), data, "more than"),
        (header("zero", 0), b"", "positive"),
        (header("tiny-chunks", len(data), chunk_size=100), data, "chunk size"),
        (header("notzip", len(data), fmt="torchscript"), data, "zip"),
        (header("odd", len(data), fmt="onnx"), data, "unknown model format"),
    ]
    for h, body, problem in cases:
        err = _error(lambda h=h, body=body: stub.PublishModel(upload(h, body), timeout=10))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, h.name
        assert problem in (err.details() or ""), (h.name, err.details())
        assert not stub.ListModels(agent_pb2.ListModelsRequest(name=h.name), timeout=10).versions
    assert _version_files(node) == before and _upload_bytes(node) == 0

    # Metadata that is not a usable model spec.
    bad_meta = agent_pb2.ModelMetadata(
        inputs=[agent_pb2.ModelMetadata.Port(name="x", dtype=common_pb2.DTYPE_FLOAT32)]
    )
    h = header("badmeta", len(data), metadata=bad_meta)
    err = _error(lambda: stub.PublishModel(upload(h, data), timeout=10))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "output" in (err.details() or "")


def test_a_cut_off_upload_publishes_nothing_and_leaves_no_chunks(
    node: Daemon, stub: agent_pb2_grpc.AgentServiceStub
) -> None:
    before = _version_files(node)
    data = fake_safetensors(8 * CHUNK, seed=4)
    sent_half = threading.Event()
    release = threading.Event()

    def cut_off() -> Iterator[agent_pb2.PublishModelRequest]:
        yield agent_pb2.PublishModelRequest(header=header_with(header("cut", len(data)), data))
        yield agent_pb2.PublishModelRequest(data=data[: 5 * CHUNK])
        sent_half.set()
        release.wait(30)

    future = stub.PublishModel.future(cut_off(), timeout=30)
    assert sent_half.wait(10)
    # The server has the first chunks on disk (in the upload's file) before the client goes.
    _wait(lambda: _upload_bytes(node) >= 5 * CHUNK, "the upload's first chunks on disk")
    future.cancel()
    release.set()
    _wait(lambda: _upload_bytes(node) == 0, "the upload's file removed after the cut")
    assert _version_files(node) == before
    assert not stub.ListModels(agent_pb2.ListModelsRequest(name="cut"), timeout=10).versions


def _wait(cond, what: str, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    import time

    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    subprocess.run(
        [sys.executable, "-m", "p2pagent.inference.demo_model", "--out", str(out)],
        check=True,
        capture_output=True,
    )
    return out


def ctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "p2pagent.cli.ctl", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )


def test_cli_push_infer_by_name_ls_and_rm(
    node: Daemon, stub: agent_pb2_grpc.AgentServiceStub, certs_dir: Path, demo: Path
) -> None:
    conn = ["--target", node.address, "--certs", str(certs_dir), "--identity", "publisher"]
    r = ctl("models", "push", str(demo / "demo.torchscript.pt"), "--name", "mlp", *conn, "--json")
    assert r.returncode == 0, r.stderr
    pushed = json.loads(r.stdout)
    assert pushed["name"] == "mlp" and pushed["format"] == "torchscript"
    assert pushed["holders"] == ["n6"]

    x = np.load(demo / "sample_input.npy")
    req = agent_pb2.InferRequest(
        model="mlp",
        inputs=[
            common_pb2.Tensor(
                name="input",
                dtype=common_pb2.DTYPE_FLOAT32,
                shape=list(x.shape),
                data=x.astype("<f4").tobytes(),
            )
        ],
    )
    out = stub.Infer(req, timeout=60).outputs[0]
    got = np.frombuffer(out.data, dtype="<f4").reshape(tuple(out.shape))
    expected = np.array(json.loads((demo / "sample_output.json").read_text())["output"])
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    assert "mlp" in stub.Status(agent_pb2.StatusRequest(), timeout=10).models

    r = ctl("models", "ls", *conn, "--json")
    assert r.returncode == 0, r.stderr
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    assert rows["mlp"]["manifest_id"] == pushed["manifest_id"]

    r = ctl("models", "rm", "mlp", *conn, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"deleted": 1}
    assert not stub.ListModels(agent_pb2.ListModelsRequest(name="mlp"), timeout=10).versions
    files = node.data / "models" / "versions"
    assert not [p for p in files.iterdir() if p.name.startswith(pushed["manifest_id"])]
    err = _error(lambda: stub.Infer(req, timeout=10))
    assert err.code() == grpc.StatusCode.NOT_FOUND

    r = ctl("models", "rm", "mlp", *conn)
    assert r.returncode != 0 and "not published" in r.stderr

    # A file that is not what --format says is refused before anything is published.
    r = ctl("models", "push", str(demo / "demo.pt2"), "--name", "mixed", "--format",
            "torchscript", *conn)  # fmt: skip
    assert r.returncode != 0 and "of format export" in r.stderr, r.stderr


def test_infer_and_tasks_run_a_pinned_version_beside_the_newest(
    node: Daemon, stub: agent_pb2_grpc.AgentServiceStub, certs_dir: Path, demo: Path
) -> None:
    conn = ["--target", node.address, "--certs", str(certs_dir), "--identity", "publisher",
            "--json"]  # fmt: skip
    first = json.loads(
        ctl("models", "push", str(demo / "demo.torchscript.pt"), "--name", "pin", *conn).stdout
    )
    newest = json.loads(
        ctl("models", "push", str(demo / "noop.torchscript.pt"), "--name", "pin", *conn).stdout
    )
    assert first["manifest_id"] != newest["manifest_id"]
    x = np.load(demo / "sample_input.npy")
    tensor = common_pb2.Tensor(
        name="input",
        dtype=common_pb2.DTYPE_FLOAT32,
        shape=list(x.shape),
        data=x.astype("<f4").tobytes(),
    )

    def infer(version: str) -> list[int]:
        req = agent_pb2.InferRequest(model="pin", inputs=[tensor], model_version=version)
        return list(stub.Infer(req, timeout=60).outputs[0].shape)

    assert infer("") == [1, 256]  # the newest: the no-op model echoes its input
    assert infer(first["manifest_id"][:12]) == [1, 10]  # the MLP, by the prefix `ls` shows
    assert infer(first["manifest_id"]) == [1, 10]
    assert infer("") == [1, 256]  # the pin did not replace the newest
    # A task pins the same way.
    sub = agent_pb2.SubmitRequest(model="pin", inputs=[tensor], model_version=first["manifest_id"])
    task_id = stub.Submit(sub, timeout=10).task_id
    events = [a.event for a in stub.Wait(agent_pb2.WaitRequest(task_id=task_id), timeout=60)]
    assert events[-1].kind == agent_pb2.TaskEvent.KIND_DONE and list(
        events[-1].outputs[0].shape
    ) == [
        1,
        10,
    ]
    # Bad pins are refused, naming the problem.
    err = _error(lambda: infer("zz"))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "prefix" in err.details()
    err = _error(lambda: infer("00000000"))
    assert err.code() == grpc.StatusCode.NOT_FOUND and "no version" in err.details()
    r = ctl("infer", "--model", "pin", "--version", first["manifest_id"][:12], "--input",
            str(demo / "sample_input.json"), *conn)  # fmt: skip
    assert r.returncode == 0, r.stderr
    ctl("models", "rm", "pin", *conn[:-1])
