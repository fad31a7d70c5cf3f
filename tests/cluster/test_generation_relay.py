"""Generation placed through a 3-node mesh of real daemons. The door, n1, has a KV budget
too small for the test's sequences (it is full for them), so it asks n2 and n3 for their
load and relays the sequence to one of them: the greedy ids equal transformers' ``generate``
on the same folder; a client that hangs up cancels the sequence on the peer; a peer killed
after it took the sequence but before its first token is passed over, and the next runs it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from p2pagent._proto import agent_pb2
from p2pagent.client import Client
from p2pagent.testing.cluster import Cluster
from p2pagent.testing.decoder_folders import build_gpt2_folder
from tests.cluster.test_generation import reference

pytestmark = pytest.mark.cluster
SETTLE_S = 60.0
WAIT_S = 120.0
NODES = ["n1", "n2", "n3"]
PROMPT = "Return the path of the file."
NEW_TOKENS = 24
#: Tokens a sequence on n1 may hold: the warm-up fits, the test's sequences do not.
DOOR_TOKENS = 24


def _door_budget(folder: Path) -> int:
    from p2pagent.inference.generation.engine import budgeted_bytes_per_token
    from p2pagent.inference.generation.folder import load_decoder_folder

    return budgeted_bytes_per_token(load_decoder_folder(folder, "cpu")) * DOOR_TOKENS


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("decoders")
    return {"a": build_gpt2_folder(root / "a", seed=1), "b": build_gpt2_folder(root / "b", seed=2)}


@pytest.fixture(scope="module")
def three(tmp_path_factory: pytest.TempPathFactory, folders: dict[str, Path]) -> Iterator[Cluster]:
    with Cluster(tmp_path_factory.mktemp("relay"), 3, use_netns=False) as c:
        c.nodes["n1"].env["P2PAGENT_GENERATION__KV_CACHE_BYTES"] = str(_door_budget(folders["a"]))
        c.start()
        c.wait_for(lambda: all(_alive(c, n) >= set(NODES) for n in NODES), SETTLE_S, "alive")
        yield c


def _alive(c: Cluster, node: str) -> set[str]:
    return {n for n, (state, _) in c.members(node).items() if state == "alive"}


def _prompt_ids(folder: Path) -> list[int]:
    from tokenizers import Tokenizer

    return list(Tokenizer.from_file(str(folder / "tokenizer.json")).encode(PROMPT).ids)


async def _publish_and_warm(c: Cluster, folder: Path, name: str) -> None:
    """Pushes the folder to n1 and runs a short sequence there (it fits), so n1 holds the
    engine and knows it has no room for the longer ones."""
    async with Client.from_certs(
        [c.nodes["n1"].address], c.certs, identity="publisher", timeout_s=300
    ) as pub:
        await pub.publish(folder, name)
    async with Client.from_certs([c.nodes["n1"].address], c.certs, timeout_s=300) as client:
        warm = [m async for m in client.generate(name, PROMPT, max_new_tokens=2)]
    assert warm[-1].node == "n1"


async def _generate(c: Cluster, name: str, new: int) -> list[agent_pb2.GenerateResponse]:
    async with Client.from_certs(
        [c.nodes["n1"].address], c.certs, timeout_s=300, follow_s=300
    ) as client:
        return [m async for m in client.generate(name, PROMPT, max_new_tokens=new)]


def _ids(messages: list[agent_pb2.GenerateResponse]) -> list[int]:
    return [t for m in messages[:-1] for t in m.token_ids]


async def _log_shows(c: Cluster, nodes: list[str], text: str) -> str:
    """The first of ``nodes`` whose log shows ``text``, waiting up to WAIT_S."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        for name in nodes:
            if text in c.nodes[name].log_tail(400):
                return name
        await asyncio.sleep(0.02)
    raise AssertionError(f"no log of {nodes} shows {text!r}")


async def test_a_full_door_places_the_sequence_on_a_peer(
    three: Cluster, folders: dict[str, Path]
) -> None:
    await _publish_and_warm(three, folders["a"], "relay-a")
    messages = await _generate(three, "relay-a", NEW_TOKENS)
    last = messages[-1]
    assert last.finish_reason == "length" and last.generated_tokens == NEW_TOKENS
    assert last.node in ("n2", "n3")  # n1 had no room: a peer ran it, n1 relayed it
    prompt = _prompt_ids(folders["a"])
    assert last.prompt_tokens == len(prompt)
    assert _ids(messages) == reference(folders["a"], prompt, NEW_TOKENS)
    assert "placed here by n1" in three.nodes[last.node].log_tail(400)


async def test_a_client_hanging_up_cancels_the_sequence_on_the_peer(three: Cluster) -> None:
    async with Client.from_certs([three.nodes["n1"].address], three.certs, timeout_s=300) as client:
        stream = client.generate("relay-a", PROMPT, max_new_tokens=480)
        first = await anext(stream)
        assert first.token_ids
        await stream.aclose()  # type: ignore[attr-defined]
    await _log_shows(three, ["n2", "n3"], "placed here by n1 cancelled by its origin")
    for name in NODES:
        assert "Traceback" not in three.nodes[name].log_tail(400)


async def test_a_peer_killed_before_its_first_token_is_passed_over(
    three: Cluster, folders: dict[str, Path]
) -> None:
    # Version b is loaded nowhere but on n1; both peers have room, so n2 (first by name
    # among equals) takes it and starts pulling it: killed then, before any token.
    await _publish_and_warm(three, folders["b"], "relay-b")
    task = asyncio.create_task(_generate(three, "relay-b", NEW_TOKENS))
    took = await _log_shows(three, ["n2", "n3"], "generation of relay-b@")
    three.kill(took)
    messages = await asyncio.wait_for(task, WAIT_S)
    last = messages[-1]
    other = "n3" if took == "n2" else "n2"
    assert last.node == other and last.generated_tokens == NEW_TOKENS
    assert f"{took} could not take it, trying the next" in three.nodes["n1"].log_tail(400)
    prompt = _prompt_ids(folders["b"])
    assert _ids(messages) == reference(folders["b"], prompt, NEW_TOKENS)
    for name in ("n1", other):
        assert "Traceback" not in three.nodes[name].log_tail(400)
