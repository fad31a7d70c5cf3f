"""Sequences waiting in a full node's generation queue move to a peer that becomes idle
later (inference/generation/moving.py), through two real daemons: n1 and n2 run one
sequence at a time; each is busy with a long one when three short sequences reach n1, so
they queue there. Once n2's long sequence ends, n1 hands its waiting sequences to n2 one
after another while its own long sequence still runs: all three finish on n2 with
transformers' greedy ids.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from p2pagent._proto import agent_pb2
from p2pagent.client import Client
from p2pagent.testing.cluster import Cluster
from p2pagent.testing.decoder_folders import build_gpt2_folder
from tests.cluster.test_generation import reference

pytestmark = pytest.mark.cluster
SETTLE_S = 60.0
WAIT_S = 180.0
PROMPT = "Return the path of the file."
NEW_TOKENS = 16
#: The long sequences: most of the small model's 1024 positions (seconds of decoding).
LONG_TOKENS = 960
WAITING = 3


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_gpt2_folder(tmp_path_factory.mktemp("decoders") / "lm", seed=4, size="small")


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with Cluster(tmp_path_factory.mktemp("moves"), 2, use_netns=False) as c:
        for node in c.nodes.values():
            node.env["P2PAGENT_GENERATION__MAX_RUNNING"] = "1"
            node.env["P2PAGENT_GENERATION__MOVE_WAITING_AFTER_S"] = "0.3"
            node.env["P2PAGENT_GENERATION__MOVE_MAX_GAP_S"] = "0.5"
        c.start()
        c.wait_for(
            lambda: all(
                {n for n, (s, _) in c.members(name).items() if s == "alive"} >= {"n1", "n2"}
                for name in ("n1", "n2")
            ),
            SETTLE_S,
            "alive",
        )
        yield c


def _client(c: Cluster, node: str) -> Client:
    return Client.from_certs([c.nodes[node].address], c.certs, timeout_s=300, follow_s=300)


async def _short(c: Cluster) -> list[agent_pb2.GenerateResponse]:
    async with _client(c, "n1") as client:
        return [m async for m in client.generate("moves", PROMPT, max_new_tokens=NEW_TOKENS)]


async def _started(stream: AsyncIterator[agent_pb2.GenerateResponse]) -> None:
    first = await asyncio.wait_for(anext(stream), WAIT_S)
    assert first.token_ids


async def test_waiting_sequences_move_to_a_peer_that_became_idle(
    two: Cluster, folder: Path
) -> None:
    from tokenizers import Tokenizer

    async with Client.from_certs(
        [two.nodes["n1"].address], two.certs, identity="publisher", timeout_s=300
    ) as pub:
        await pub.publish(folder, "moves")
    async with _client(two, "n1") as c1, _client(two, "n2") as c2:
        # n1's own long sequence: cold everywhere, n1 wins the tie and loads the model.
        hold_n1 = c1.generate("moves", PROMPT, max_new_tokens=LONG_TOKENS)
        await _started(hold_n1)
        # n2's: n1 has no room, so n2 loads the model and runs it itself.
        hold_n2 = c2.generate("moves", PROMPT, max_new_tokens=LONG_TOKENS)
        await _started(hold_n2)
        # Both full: the short ones queue on n1 (n2 answers that it has no room).
        shorts = [asyncio.create_task(_short(two)) for _ in range(WAITING)]
        await asyncio.sleep(1.0)
        assert not any(t.done() for t in shorts)
        await hold_n2.aclose()  # type: ignore[attr-defined]  # n2 is idle now
        results = await asyncio.wait_for(asyncio.gather(*shorts), WAIT_S)
        await hold_n1.aclose()  # type: ignore[attr-defined]
    prompt = list(Tokenizer.from_file(str(folder / "tokenizer.json")).encode(PROMPT).ids)
    expected = reference(folder, prompt, NEW_TOKENS)
    for messages in results:
        last = messages[-1]
        assert last.node == "n2" and last.generated_tokens == NEW_TOKENS
        assert [t for m in messages[:-1] for t in m.token_ids] == expected
    log = two.nodes["n1"].log_tail(400)
    assert log.count("here, moved to n2") == WAITING, log
    for name in ("n1", "n2"):
        assert "Traceback" not in two.nodes[name].log_tail(400)
