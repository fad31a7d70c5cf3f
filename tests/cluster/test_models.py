"""Model sharing with real daemons: publish on one node, pull on others (which then serve it),
infer by name on a node that pulled it, a holder serving corrupt chunks detected and avoided,
a pull that survives the publisher's death and the puller's own SIGKILL (it resumes from the
chunks on disk), and ``replicas: all`` replicating by itself.

Roles in the 4-node cluster: n1 publishes; n2 serves at a capped rate (so a pull from it
takes a few seconds and can be interrupted); n3 serves corrupt chunks (test-only fault hook
``P2PAGENT_TEST_CORRUPT_CHUNKS``, see ``p2pagent/models/driver.py``); n4 joins after n1 died.
Waits are generous upper bounds, never assertions about speed.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from p2pagent._proto import agent_pb2, common_pb2
from p2pagent.testing.cluster import Cluster
from p2pagent.testing.uploads import noop_metadata, publish_requests

pytestmark = pytest.mark.cluster
SETTLE_S = 60.0
CHUNK = 64 * 1024


def _all_alive(c: Cluster, names: list[str]) -> bool:
    return all(
        {n for n, (state, _) in c.members(o).items() if state == "alive"} >= set(names)
        for o in names
    )


def _versions(c: Cluster, node: str, name: str) -> list[agent_pb2.ModelVersion]:
    try:
        req = agent_pb2.ListModelsRequest(name=name)
        return list(c.agent(node).ListModels(req, timeout=5).versions)
    except grpc.RpcError:
        return []


def _holders(c: Cluster, node: str, name: str) -> set[str]:
    versions = _versions(c, node, name)
    return set(versions[-1].holders) if versions else set()


def _upload(
    path: Path, name: str, metadata: agent_pb2.ModelMetadata, replicas: str = "1"
) -> Iterator[agent_pb2.PublishModelRequest]:
    data = path.read_bytes()
    header = agent_pb2.PublishModelRequest.Header(
        name=name, format="torchscript", metadata=metadata, size=len(data), chunk_size=CHUNK,
        replicas=replicas,
    )  # fmt: skip
    return publish_requests(header, data)


def _noop_metadata(demo: Path) -> agent_pb2.ModelMetadata:
    from p2pagent.inference.spec import ModelSpec

    return ModelSpec.from_dict(json.loads((demo / "noop.metadata.json").read_text())).to_proto()


def _infer(c: Cluster, node: str, demo: Path) -> agent_pb2.InferResponse:
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
    return c.agent(node).Infer(req, timeout=60)


def _check_output(resp: agent_pb2.InferResponse, demo: Path) -> None:
    out = resp.outputs[0]
    got = np.frombuffer(out.data, dtype="<f4").reshape(tuple(out.shape))
    expected = np.array(json.loads((demo / "sample_output.json").read_text())["output"])
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def _log(c: Cluster, node: str) -> str:
    return c.nodes[node].log_path.read_text(errors="replace")


def _chunk_count(c: Cluster, node: str) -> int:
    """Chunks the node's partial versions name in their index (verified and durable)."""
    root = c.nodes[node].data / "models" / "versions"
    return sum(bin(b).count("1") for p in root.glob("*.index") for b in p.read_bytes())


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    subprocess.run(
        [sys.executable, "-m", "p2pagent.inference.demo_model", "--out", str(out)],
        check=True,
        capture_output=True,
    )
    return out


@pytest.fixture(scope="module")
def four(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with Cluster(tmp_path_factory.mktemp("models"), 4, use_netns=False) as c:
        c.nodes["n2"].env.update(
            P2PAGENT_MODELS__UPLOAD_RATE_BYTES_PER_S="1000000",
            P2PAGENT_MODELS__UPLOAD_BURST_BYTES=str(CHUNK),
        )
        c.nodes["n3"].env["P2PAGENT_TEST_CORRUPT_CHUNKS"] = "1"
        c.nodes["n4"].seeds = [c.nodes["n2"].address]
        names = ["n1", "n2", "n3"]
        c.start(names)
        c.wait_for(lambda: _all_alive(c, names), SETTLE_S, "n1..n3 alive")
        yield c


def test_publish_pull_on_two_nodes_then_infer_by_name_where_pulled(
    four: Cluster, demo: Path
) -> None:
    c = four
    meta = json.loads((demo / "demo.metadata.json").read_text())
    from p2pagent.inference.spec import ModelSpec

    metadata = ModelSpec.from_dict(meta).to_proto()
    v = (
        c.agent("n1", "publisher")
        .PublishModel(_upload(demo / "demo.torchscript.pt", "mlp", metadata), timeout=60)
        .version
    )
    assert v.chunks > 16 and list(v.holders) == ["n1"]
    for node in ("n2", "n3"):
        c.wait_for(lambda node=node: _versions(c, node, "mlp"), SETTLE_S, f"registry on {node}")
        pulled = (
            c.agent(node).PullModel(agent_pb2.PullModelRequest(name="mlp"), timeout=120).version
        )
        assert pulled.manifest_id == v.manifest_id and node in pulled.holders
    for node in ("n1", "n2", "n3"):
        c.wait_for(
            lambda node=node: _holders(c, node, "mlp") >= {"n1", "n2", "n3"},
            SETTLE_S,
            f"n1..n3 listed as holders on {node}",
        )
    # n3 pulled it: it runs it by name, with the publisher's answer.
    resp = _infer(c, "n3", demo)
    assert resp.executor == "n3"
    _check_output(resp, demo)
    # The version's file on n3 is the published one, byte for byte.
    files = list((c.nodes["n3"].data / "models" / "versions").glob(f"{v.manifest_id}.*"))
    assert [f.read_bytes() for f in files] == [(demo / "demo.torchscript.pt").read_bytes()]


def test_after_the_publisher_dies_a_new_node_pulls_resumes_and_avoids_the_corrupt_holder(
    four: Cluster, demo: Path
) -> None:
    c = four
    assert _holders(c, "n2", "mlp") >= {"n1", "n2", "n3"}, "needs the previous test"
    c.kill("n1")
    c.start(["n4"])
    c.wait_for(lambda: _all_alive(c, ["n2", "n3", "n4"]), SETTLE_S, "n2..n4 alive")
    c.wait_for(lambda: _holders(c, "n4", "mlp") >= {"n2", "n3"}, SETTLE_S, "registry on n4")

    # Pull on n4 (n2 serves ~1 MB/s, n3 serves corrupt chunks); SIGKILL n4 mid-way.
    errors: list[BaseException] = []

    def pull() -> None:
        try:
            c.agent("n4").PullModel(agent_pb2.PullModelRequest(name="mlp"), timeout=120)
        except grpc.RpcError as e:
            errors.append(e)

    t = threading.Thread(target=pull)
    t.start()
    c.wait_for(lambda: _chunk_count(c, "n4") >= 8, SETTLE_S, "some chunks on n4's disk")
    c.kill("n4")
    t.join(30)
    assert errors, "the pull answered although n4 was killed mid-way"
    on_disk = _chunk_count(c, "n4")
    c.restart("n4")
    c.wait_for(lambda: _all_alive(c, ["n2", "n3", "n4"]), SETTLE_S, "n4 back")
    pulled = c.agent("n4").PullModel(agent_pb2.PullModelRequest(name="mlp"), timeout=120).version
    assert "n4" in pulled.holders
    c.wait_for(lambda: _holders(c, "n2", "mlp") >= {"n2", "n3", "n4"}, SETTLE_S, "n4 a holder")

    log = _log(c, "n4")
    resumed = [int(n) for n in re.findall(r"pulling mlp \(\w+\): (\d+) of \d+ chunks", log)]
    assert len(resumed) >= 2 and resumed[0] == 0 and resumed[-1] >= on_disk >= 8, resumed
    assert "from n3 failed verification" in log
    finished = re.findall(r"models: pulled mlp .* from (\{.*?\}); corrupt=(\d+) banned=(.*)", log)
    assert finished, "no finished pull in n4's log"
    sources, _corrupt, _banned = finished[-1]
    assert "n1" not in sources and "n3" not in sources
    # n4 runs the model; the file it loads matches the manifest (a corrupt one never would).
    _check_output(_infer(c, "n4", demo), demo)


def test_replicas_all_replicates_without_being_asked(four: Cluster, demo: Path) -> None:
    c = four
    live = ["n2", "n3", "n4"]
    metadata = _noop_metadata(demo)
    v = (
        c.agent("n2", "publisher")
        .PublishModel(
            _upload(demo / "noop.torchscript.pt", "noop-all", metadata, replicas="all"), timeout=60
        )
        .version
    )
    assert v.replicas == "all"
    for node in live:
        c.wait_for(
            lambda node=node: _holders(c, node, "noop-all") >= set(live),
            SETTLE_S,
            f"every live node a holder, seen from {node}",
        )


def test_infer_by_name_pulls_a_model_the_node_does_not_hold(four: Cluster, demo: Path) -> None:
    from p2pagent.inference.spec import ModelSpec

    c = four
    meta = ModelSpec.from_dict(json.loads((demo / "demo.metadata.json").read_text())).to_proto()
    c.agent("n2", "publisher").PublishModel(
        _upload(demo / "demo.torchscript.pt", "mlp-lazy", meta), timeout=60
    )
    c.wait_for(lambda: _versions(c, "n4", "mlp-lazy"), SETTLE_S, "registry on n4")
    assert "n4" not in _holders(c, "n4", "mlp-lazy")
    x = np.load(demo / "sample_input.npy")
    req = agent_pb2.InferRequest(
        model="mlp-lazy",
        inputs=[common_pb2.Tensor(name="input", dtype=common_pb2.DTYPE_FLOAT32, shape=list(x.shape),
                                  data=x.astype("<f4").tobytes())],
    )  # fmt: skip
    _check_output(c.agent("n4").Infer(req, timeout=120), demo)
    c.wait_for(lambda: "n4" in _holders(c, "n4", "mlp-lazy"), SETTLE_S, "n4 became a holder")


def test_replicas_k_rereplicates_after_holders_die(
    tmp_path_factory: pytest.TempPathFactory, demo: Path
) -> None:
    """``replicas: 2``: two nodes hold the model without being asked; SIGKILL every holder but
    the publisher, and a survivor pulls it by itself until two live nodes hold it again."""
    names = ["n1", "n2", "n3", "n4"]
    with Cluster(tmp_path_factory.mktemp("rereplicate"), 4, use_netns=False) as c:
        c.start()
        c.wait_for(lambda: _all_alive(c, names), SETTLE_S, "n1..n4 alive")
        model = demo / "noop.torchscript.pt"
        v = (
            c.agent("n1", "publisher")
            .PublishModel(_upload(model, "noop-k", _noop_metadata(demo), replicas="2"), timeout=60)
            .version
        )
        assert v.replicas == "2" and list(v.holders) == ["n1"]
        c.wait_for(lambda: len(_holders(c, "n1", "noop-k")) >= 2, SETTLE_S, "two holders")
        victims = sorted(_holders(c, "n1", "noop-k") - {"n1"})
        for victim in victims:
            c.kill(victim)
        survivors = [n for n in names if n not in victims]
        assert len(survivors) >= 2  # at most 3 holders of 4 nodes: someone can pull

        def restored() -> set[str]:
            return _holders(c, "n1", "noop-k") & set(survivors)

        c.wait_for(lambda: len(restored()) >= 2, SETTLE_S, "two live holders again")
        fresh = restored() - {"n1"}
        assert fresh and not fresh & set(victims)
        for node in fresh:
            assert re.search(r"models: pulled noop-k \(", _log(c, node)), node
            files = (c.nodes[node].data / "models" / "manifests").glob(f"{v.manifest_id}.json")
            assert list(files), f"{node} is listed as a holder but has no manifest on disk"


def _safetensors_like(size: int, seed: int) -> bytes:
    header = b'{"__metadata__":{}}'
    body = np.random.default_rng(seed).integers(0, 256, size - 8 - len(header), dtype=np.uint8)
    return len(header).to_bytes(8, "little") + header + body.tobytes()


def test_pullers_serve_each_other_while_they_pull(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """n1 publishes at a capped upload rate; n2, n3 and n4 pull at once. Each advertises the
    chunks it has mid-pull and serves them, so each receives chunks from the others and n1
    sends each chunk about once (four times less than serving every puller itself)."""
    names = ["n1", "n2", "n3", "n4"]
    pullers = names[1:]
    root = tmp_path_factory.mktemp("swarm")
    with Cluster(root, 4, use_netns=False) as c:
        c.nodes["n1"].env.update(
            P2PAGENT_MODELS__UPLOAD_RATE_BYTES_PER_S="400000",
            P2PAGENT_MODELS__UPLOAD_BURST_BYTES=str(CHUNK),
        )
        c.start()
        c.wait_for(lambda: _all_alive(c, names), SETTLE_S, "n1..n4 alive")
        data = _safetensors_like(48 * CHUNK, seed=5)  # ~8 s from n1 alone
        path = root / "blob.safetensors"
        path.write_bytes(data)
        header = agent_pb2.PublishModelRequest.Header(
            name="blob", format="safetensors", size=len(data), chunk_size=CHUNK,
            metadata=noop_metadata(),
        )  # fmt: skip
        requests = publish_requests(header, data, CHUNK * 8)
        c.agent("n1", "publisher").PublishModel(requests, timeout=60)
        for node in pullers:
            c.wait_for(lambda node=node: _versions(c, node, "blob"), SETTLE_S, f"{node} sees it")
        errors: list[BaseException] = []

        def pull(node: str) -> None:
            try:
                c.agent(node).PullModel(agent_pb2.PullModelRequest(name="blob"), timeout=120)
            except grpc.RpcError as e:
                errors.append(e)

        threads = [threading.Thread(target=pull, args=(n,)) for n in pullers]
        for t in threads:
            t.start()
        for t in threads:
            t.join(150)
        assert not errors, errors
        from_n1 = 0
        for node in pullers:
            lines = re.findall(r"models: pulled blob .* bytes_from=(\{.*?\})", _log(c, node))
            assert lines, f"{node} logged no finished pull"
            got = {k: int(v) for k, v in re.findall(r"'(\w+)': (\d+)", lines[-1])}
            assert set(got) - {"n1"}, f"{node} got nothing from a fellow puller: {got}"
            from_n1 += got.get("n1", 0)
        # Served directly, n1 would send 3x the model; the swarm keeps it well under 2x.
        assert from_n1 < 2 * len(data), from_n1 / len(data)
