"""A tiny GPT-2 folder through a 3-node mesh of real daemons: pushed to n1 as a model version
(its publish check generates a few tokens), generated with through n3, which did not receive
the push and has no local decoder folders: n3 pulls the version, unpacks and checks every
file, and streams greedy token ids equal to transformers' ``generate`` on the same folder. A
version can be pinned; an encoder model asked to generate is refused naming what it is."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from p2pagent.client import Client
from p2pagent.errors import InvalidArgument, NotFound
from p2pagent.testing.cluster import Cluster
from p2pagent.testing.decoder_folders import build_gpt2_folder
from p2pagent.testing.hf_folders import classifier_folder

pytestmark = pytest.mark.cluster
SETTLE_S = 60.0
NODES = ["n1", "n2", "n3"]
PROMPT = "Return the path of the file."
NEW_TOKENS = 24


@pytest.fixture(scope="module")
def three(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with Cluster(tmp_path_factory.mktemp("generation"), 3, use_netns=False) as c:
        c.start()
        c.wait_for(lambda: all(_alive(c, n) >= set(NODES) for n in NODES), SETTLE_S, "alive")
        yield c


def _alive(c: Cluster, node: str) -> set[str]:
    return {n for n, (state, _) in c.members(node).items() if state == "alive"}


def reference(folder: Path, prompt: list[int], new: int) -> list[int]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
    ids = torch.tensor([prompt])
    out = model.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, do_sample=False
    )
    return list(out[0, len(prompt) :].tolist())


async def test_gpt2_generates_through_a_node_that_did_not_receive_the_push(
    three: Cluster, tmp_path: Path
) -> None:
    from tokenizers import Tokenizer

    folder = build_gpt2_folder(tmp_path / "gpt2")
    async with Client.from_certs(
        [three.nodes["n1"].address], three.certs, identity="publisher", timeout_s=300
    ) as pub:
        version = await pub.publish(folder, "tiny-gpt2")
        assert version.holders == ["n1"]
    prompt = Tokenizer.from_file(str(folder / "tokenizer.json")).encode(PROMPT).ids
    async with Client.from_certs(
        [three.nodes["n3"].address], three.certs, timeout_s=300, follow_s=300
    ) as client:
        messages = [
            m async for m in client.generate("tiny-gpt2", PROMPT, max_new_tokens=NEW_TOKENS)
        ]
        pinned = [
            m
            async for m in client.generate(
                "tiny-gpt2",
                prompt_ids=prompt,
                max_new_tokens=NEW_TOKENS,
                model_version=version.manifest_id[:12],
            )
        ]
        listed = await client.models("tiny-gpt2")
        with pytest.raises(NotFound, match="'nope' is not published"):
            async for _ in client.generate("nope", PROMPT):
                pass
        with pytest.raises(NotFound, match="no version"):
            async for _ in client.generate("tiny-gpt2", PROMPT, model_version="0" * 64):
                pass
    assert "n3" in listed[-1].holders  # it pulled the version to run it
    ids = [t for m in messages[:-1] for t in m.token_ids]
    assert messages[-1].finish_reason == "length"
    assert messages[-1].prompt_tokens == len(prompt)
    assert messages[-1].generated_tokens == NEW_TOKENS
    assert ids == reference(folder, prompt, NEW_TOKENS)
    assert [t for m in pinned[:-1] for t in m.token_ids] == ids
    for name in NODES:
        assert "Traceback" not in three.nodes[name].log_tail(400)


async def test_an_encoder_model_asked_to_generate_is_refused(
    three: Cluster, tmp_path: Path
) -> None:
    folder = classifier_folder(tmp_path / "cls")
    async with Client.from_certs(
        [three.nodes["n1"].address], three.certs, identity="publisher", timeout_s=300
    ) as pub:
        await pub.publish(folder, "tiny-classifier")
    async with Client.from_certs([three.nodes["n2"].address], three.certs) as client:
        with pytest.raises(InvalidArgument, match="classification folder, not a text-generation"):
            async for _ in client.generate("tiny-classifier", PROMPT):
                pass
