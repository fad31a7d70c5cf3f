"""A pickle planted in each model format never runs, even on a node's own disk: one real
daemon serves every planted file straight from disk (``--serve``, no publish check on that
path), and Infer on each is refused naming the pickle (the safetensors one, whose pickle is
plain bytes, runs), while the marker file the payloads would create stays absent and the
daemon keeps serving without logging a traceback."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from p2pagent._proto import agent_pb2, agent_pb2_grpc, common_pb2
from p2pagent.testing.channels import channel
from p2pagent.testing.daemon import Daemon
from tests import planted


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, certs_dir: Path
) -> Iterator[tuple[Daemon, dict[str, planted.Planted], Path]]:
    root = tmp_path_factory.mktemp("pickles")
    marker = root / "MARKER"
    files = planted.planted_models(root / "files", marker)
    args = []
    for i, p in enumerate(files.values()):
        meta = root / f"m{i}.json"
        meta.write_text(json.dumps(p.metadata))
        args += ["--serve", f"m{i}={p.path}@{meta}"]
    d = Daemon("n7", certs_dir, root / "n7", args=args).start(timeout=60)
    try:
        yield d, files, marker
    finally:
        d.kill()


def test_no_planted_pickle_runs_when_a_node_loads_it_from_disk(
    served: tuple[Daemon, dict[str, planted.Planted], Path], certs_dir: Path
) -> None:
    d, files, marker = served
    x = np.zeros((2, planted.IN), dtype="<f4")
    tensor = common_pb2.Tensor(
        name="input", dtype=common_pb2.DTYPE_FLOAT32, shape=[2, planted.IN], data=x.tobytes()
    )
    with channel(d.address, certs_dir, max_mib=16) as ch:
        stub = agent_pb2_grpc.AgentServiceStub(ch)
        for i, (label, p) in enumerate(files.items()):
            req = agent_pb2.InferRequest(model=f"m{i}", inputs=[tensor])
            if p.refused:
                with pytest.raises(grpc.RpcError) as e:
                    stub.Infer(req, timeout=120)
                assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, label
                assert "pickle" in (e.value.details() or ""), (label, e.value.details())
            else:
                assert list(stub.Infer(req, timeout=120).outputs[0].shape) == [2, planted.IN]
            assert not marker.exists(), label
        assert stub.Status(agent_pb2.StatusRequest(), timeout=10).name == "n7"
    assert d.running
    assert "Traceback" not in d.log_path.read_text()
