"""A pull between two daemons in network namespaces whose links are shaped with ``tc tbf``
(``Cluster.shape``, what ``bench.models_transfer --link-mbit`` measures at full size): the
shaping is really on both ends of each node's veth pair, and a publish and a pull cross it
and leave the puller holding the exact bytes. Small model; no speed is asserted."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from p2pagent._proto import agent_pb2
from p2pagent.testing import netns
from p2pagent.testing.cluster import Cluster
from p2pagent.testing.uploads import noop_metadata, publish_requests, safetensors_like

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(not netns.available(), reason="shaped links need root, ip and tc"),
]
SETTLE_S = 60.0
CHUNK = 256 * 1024
MBIT = 200


def _alive(c: Cluster) -> bool:
    return all(
        {n for n, (s, _) in c.members(o).items() if s == "alive"} >= {"n1", "n2"}
        for o in ("n1", "n2")
    )


def _qdisc(prefix: list[str], dev: str) -> str:
    out = subprocess.run([*prefix, "tc", "qdisc", "show", "dev", dev],
                         capture_output=True, text=True, check=True)  # fmt: skip
    return out.stdout


def test_pull_over_links_shaped_with_tbf(tmp_path: Path) -> None:
    data = safetensors_like(4 * 1024 * 1024 + 1234, seed=3)
    with Cluster(tmp_path, 2, use_netns=True) as c:
        assert c.network is not None
        for name in ("n1", "n2"):
            c.shape(name, MBIT)
            host = c.network.hosts[name]
            assert f"rate {MBIT}Mbit" in _qdisc(host.prefix(), host.veth_ns)
            assert f"rate {MBIT}Mbit" in _qdisc([], host.veth_host)
        c.start()
        c.wait_for(lambda: _alive(c), SETTLE_S, "n1, n2 alive")
        header = agent_pb2.PublishModelRequest.Header(
            name="shaped", format="safetensors", size=len(data), chunk_size=CHUNK,
            metadata=noop_metadata(),
        )  # fmt: skip
        v = (
            c.agent("n1", "publisher")
            .PublishModel(publish_requests(header, data), timeout=120)
            .version
        )
        c.wait_for(
            lambda: (
                c.agent("n2")
                .ListModels(agent_pb2.ListModelsRequest(name="shaped"), timeout=10)
                .versions
            ),
            SETTLE_S,
            "the version in n2's registry",
        )
        got = (
            c.agent("n2").PullModel(agent_pb2.PullModelRequest(name="shaped"), timeout=120).version
        )
        assert got.manifest_id == v.manifest_id and "n2" in got.holders
        files = list((c.nodes["n2"].data / "models" / "versions").glob(f"{v.manifest_id}.*"))
        assert len(files) == 1 and files[0].read_bytes() == data
