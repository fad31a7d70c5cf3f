"""Model uploads at the trust boundary, against a 3-node cluster of real daemons.

A pickle planted in each model format is refused at publish naming it, and never runs (the
marker file its code would create stays absent); junk bytes with a zip signature, a file
that does not load, a version without the metadata to serve it, an upload without its
digest and an upload altered in transit (DATA_LOSS) are all refused naming what is wrong,
and none of them is listed, replicated or left on disk on any node. A publisher cannot
delete another publisher's model or publish a new version of it (PERMISSION_DENIED naming
the owner); an admin can delete it.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from p2pagent._proto import agent_pb2, agent_pb2_grpc, common_pb2
from p2pagent.identity import certs
from p2pagent.identity.spiffe import Role
from p2pagent.inference.spec import ModelSpec
from p2pagent.testing.cluster import Cluster
from p2pagent.testing.uploads import header_with, publish_requests
from p2pagent.transport.channels import channel_options
from tests import planted

pytestmark = pytest.mark.cluster
SETTLE_S = 60.0
NODES = ["n1", "n2", "n3"]
CHUNK = 16 * 1024


@pytest.fixture(scope="module")
def three(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with Cluster(tmp_path_factory.mktemp("trust"), 3, use_netns=False) as c:
        certs.issue(c.certs, "publisher2", Role.PUBLISHER)
        c.start()
        c.wait_for(lambda: all(_alive(c, n) >= set(NODES) for n in NODES), SETTLE_S, "alive")
        yield c


def _alive(c: Cluster, node: str) -> set[str]:
    return {n for n, (state, _) in c.members(node).items() if state == "alive"}


_channels: dict[tuple[str, str], grpc.Channel] = {}


def _agent(c: Cluster, node: str, who: str) -> agent_pb2_grpc.AgentServiceStub:
    """An Agent stub to ``node`` presenting the certificate ``who``."""
    ch = _channels.get((node, who))
    if ch is None:
        d = c.certs
        creds = grpc.ssl_channel_credentials(
            (d / "ca.crt").read_bytes(), (d / f"{who}.key").read_bytes(),
            (d / f"{who}.crt").read_bytes(),
        )  # fmt: skip
        ch = grpc.secure_channel(
            c.nodes[node].address, creds, options=channel_options("test", 64 << 20)
        )
        _channels[(node, who)] = ch
    return agent_pb2_grpc.AgentServiceStub(ch)


def _header(name: str, fmt: str, data: bytes, meta: dict[str, object] | None, **kw: object
            ) -> agent_pb2.PublishModelRequest.Header:  # fmt: skip
    metadata = ModelSpec.from_dict(meta).to_proto() if meta else agent_pb2.ModelMetadata()
    return agent_pb2.PublishModelRequest.Header(
        name=name, format=fmt, size=len(data), chunk_size=CHUNK, metadata=metadata,
        **kw,  # type: ignore[arg-type]
    )  # fmt: skip


def _refused(call: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as e:
        call()  # type: ignore[operator]
    return e.value


def _names(c: Cluster, node: str) -> set[str]:
    versions = _agent(c, node, "client").ListModels(agent_pb2.ListModelsRequest(), timeout=10)
    return {v.name for v in versions.versions}


def _manifests_on_disk(c: Cluster, node: str) -> set[str]:
    root = c.nodes[node].data / "models" / "manifests"
    return {p.name.split(".")[0] for p in root.glob("*.json")} if root.exists() else set()


def _listed_ids(c: Cluster, node: str) -> set[str]:
    versions = _agent(c, node, "client").ListModels(agent_pb2.ListModelsRequest(), timeout=10)
    return {v.manifest_id for v in versions.versions}


def _everywhere(c: Cluster, name: str) -> None:
    """Waits until every node lists ``name`` with every node as a holder."""

    def held() -> bool:
        for node in NODES:
            versions = _agent(c, node, "client").ListModels(
                agent_pb2.ListModelsRequest(name=name), timeout=10
            )
            if not versions.versions or set(versions.versions[-1].holders) != set(NODES):
                return False
        return True

    c.wait_for(held, SETTLE_S, f"{name} held by every node")


def test_uploads_that_cannot_be_trusted_publish_nothing_on_any_node(
    three: Cluster, tmp_path: Path
) -> None:
    c = three
    publisher = _agent(c, "n1", "publisher")
    marker = tmp_path / "MARKER"
    files = planted.planted_models(tmp_path / "planted", marker)
    refused_names = []

    # A pickle planted in each archive format: refused at publish, naming the pickle.
    for i, (label, p) in enumerate(files.items()):
        data = p.path.read_bytes()
        name = f"planted-{i}"
        reqs = publish_requests(_header(name, p.format, data, p.metadata), data, CHUNK)
        if p.refused:
            err = _refused(lambda reqs=reqs: publisher.PublishModel(reqs, timeout=120))
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, label
            assert "pickle" in (err.details() or ""), (label, err.details())
            refused_names.append(name)
        else:  # safetensors: its pickle is plain bytes; it publishes and runs
            publisher.PublishModel(reqs, timeout=120)
            x = np.zeros((2, planted.IN), dtype="<f4")
            req = agent_pb2.InferRequest(model=name, inputs=[common_pb2.Tensor(
                name="input", dtype=common_pb2.DTYPE_FLOAT32, shape=[2, planted.IN],
                data=x.tobytes(),
            )])  # fmt: skip
            out = publisher.Infer(req, timeout=120).outputs[0]
            assert list(out.shape) == [2, planted.IN]
        assert not marker.exists(), label

    clean = (tmp_path / "planted" / "clean.pt").read_bytes()
    rng = np.random.default_rng(21)
    junk = b"PK\x03\x04" + rng.bytes(8 * 1024 - 4)
    with (
        zipfile.ZipFile(tmp_path / "planted" / "clean.pt") as z,
        zipfile.ZipFile(tmp_path / "broken.pt", "w") as zout,
    ):
        for entry in z.namelist():
            data = z.read(entry)
            zout.writestr(
                entry, b"def forward(self):\n  return )(\n" if entry.endswith(".py") else data
            )
    broken = (tmp_path / "broken.pt").read_bytes()
    altered = clean[: len(clean) // 2] + bytes(b ^ 0xFF for b in clean[len(clean) // 2 :])
    wrong_outputs = dict(planted.spec())
    wrong_outputs["outputs"] = [{"name": "output", "dtype": "float32", "shape": [-1, 7]}]
    spec = planted.spec()
    cases: list[tuple[str, Iterator[agent_pb2.PublishModelRequest], grpc.StatusCode, str]] = [
        ("junk", publish_requests(_header("junk", "torchscript", junk, spec), junk),
         grpc.StatusCode.INVALID_ARGUMENT, "zip"),
        ("broken", publish_requests(_header("broken", "torchscript", broken, spec), broken),
         grpc.StatusCode.INVALID_ARGUMENT, "failed its check"),
        ("no-metadata", publish_requests(_header("no-metadata", "torchscript", clean, None),
         clean), grpc.StatusCode.INVALID_ARGUMENT, "no metadata"),
        ("wrong-outputs", publish_requests(
            _header("wrong-outputs", "torchscript", clean, wrong_outputs), clean),
         grpc.StatusCode.INVALID_ARGUMENT, "output 'output' has shape [2, 2]"),
        ("no-digest", publish_requests(_header("no-digest", "torchscript", clean, spec), clean,
         digest=False), grpc.StatusCode.INVALID_ARGUMENT, "sha256"),
        # The digest of the original, the second half altered in transit.
        ("altered", publish_requests(header_with(_header("altered", "torchscript", clean, spec),
         clean), altered), grpc.StatusCode.DATA_LOSS, "damaged in transit"),
    ]  # fmt: skip
    for name, reqs, code, problem in cases:
        err = _refused(lambda reqs=reqs: publisher.PublishModel(reqs, timeout=120))
        assert err.code() == code, (name, err.details())
        assert problem in (err.details() or ""), (name, err.details())
        refused_names.append(name)

    # A good model replicated to every node: gossip has had time to carry anything refused.
    good = header_with(_header("good", "torchscript", clean, spec, replicas="all"), clean)
    publisher.PublishModel(publish_requests(good, clean), timeout=120)
    _everywhere(c, "good")
    for node in NODES:
        assert not _names(c, node) & set(refused_names), node
        # Nothing of a refused upload stays on any node's disk either.
        assert _manifests_on_disk(c, node) <= _listed_ids(c, node), node
    assert not marker.exists()
    assert hashlib.sha256(clean).hexdigest() in {
        v.sha256
        for v in publisher.ListModels(agent_pb2.ListModelsRequest(name="good"), timeout=10).versions
    }
    for node in NODES:
        assert "Traceback" not in (c.nodes[node].log_path.read_text()), node


def test_a_publisher_deletes_and_updates_only_its_own_models_and_an_admin_deletes_any(
    three: Cluster, tmp_path: Path
) -> None:
    c = three
    clean = planted.torchscript(tmp_path / "m.pt").read_bytes()
    header = _header("owned", "torchscript", clean, planted.spec(), replicas="all")
    v = (
        _agent(c, "n1", "publisher")
        .PublishModel(publish_requests(header, clean), timeout=120)
        .version
    )
    owner = "spiffe://test/publisher/publisher"
    assert v.owner == owner
    _everywhere(c, "owned")
    for node in NODES:  # every node lists the owner
        versions = _agent(c, node, "client").ListModels(
            agent_pb2.ListModelsRequest(name="owned"), timeout=10
        )
        assert [x.owner for x in versions.versions] == [owner], node

    # Another publisher may not take the name over with a newer version.
    err = _refused(
        lambda: _agent(c, "n2", "publisher2").PublishModel(
            publish_requests(header, clean), timeout=120
        )
    )
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert f"model 'owned' belongs to {owner}" in (err.details() or ""), err.details()

    delete = agent_pb2.DeleteModelRequest(name="owned")
    err = _refused(lambda: _agent(c, "n2", "publisher2").DeleteModel(delete, timeout=10))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert owner in (err.details() or ""), err.details()
    # A client may not either (refused by the guard's role table, or by ownership before it).
    err = _refused(lambda: _agent(c, "n2", "client").DeleteModel(delete, timeout=10))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert all("owned" in _names(c, node) for node in NODES)

    assert _agent(c, "n3", "admin").DeleteModel(delete, timeout=30).deleted == 1
    c.wait_for(lambda: all("owned" not in _names(c, n) for n in NODES), SETTLE_S, "deleted")


def test_the_cli_lists_owners(three: Cluster) -> None:
    import subprocess
    import sys

    c = three
    r = subprocess.run(
        [sys.executable, "-m", "p2pagent.cli.ctl", "models", "ls", "--target",
         c.nodes["n1"].address, "--certs", str(c.certs), "--json"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert rows and all(row["owner"] == "spiffe://test/publisher/publisher" for row in rows)
