"""``Generate`` on a real daemon serving the tiny GPT-2 and Llama folders: tokens streamed
equal transformers' generate, the Python client and p2pagentctl, every bad input's status,
a full queue, and a caller that hangs up freeing its slot."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from p2pagent._proto import agent_pb2
from p2pagent.client import Client
from p2pagent.errors import (
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from p2pagent.identity import material as tls
from p2pagent.testing.daemon import Daemon
from p2pagent.testing.decoder_folders import BUILDERS

PROMPT = "Return the path of the file."


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("decoders")
    return {family: build(root / family) for family, build in BUILDERS.items()}


@pytest.fixture(scope="module")
def node(
    tmp_path_factory: pytest.TempPathFactory, certs_dir: Path, folders: dict[str, Path]
) -> Iterator[Daemon]:
    served = ",".join(f"{name}={path}" for name, path in folders.items())
    env = {
        "P2PAGENT_GENERATION__FOLDERS": served,
        # One sequence at a time and one waiting: the queue and cancellation tests need it.
        "P2PAGENT_GENERATION__MAX_RUNNING": "1",
        "P2PAGENT_GENERATION__MAX_QUEUED": "1",
        "P2PAGENT_LOG_LEVEL": "debug",
    }
    d = Daemon("n6", certs_dir, tmp_path_factory.mktemp("generate") / "n6", env=env)
    d.start(timeout=120)
    try:
        yield d
    finally:
        d.kill()


def reference(folder: Path, prompt: list[int], new: int) -> list[int]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
    ids = torch.tensor([prompt])
    out = model.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, do_sample=False
    )
    return list(out[0, len(prompt) :].tolist())


@pytest.mark.parametrize("family", sorted(BUILDERS))
async def test_streamed_tokens_equal_transformers_generate(
    node: Daemon, certs_dir: Path, folders: dict[str, Path], family: str
) -> None:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(folders[family] / "tokenizer.json"))
    prompt = tokenizer.encode(PROMPT).ids
    async with Client.from_certs([node.address], certs_dir, follow_s=120) as c:
        messages = [m async for m in c.generate(family, PROMPT, max_new_tokens=64)]
    ids = [t for m in messages[:-1] for t in m.token_ids]
    assert len(messages) == 65  # one per token, then the last with the counts
    assert ids == reference(folders[family], prompt, 64)
    last = messages[-1]
    assert (last.finish_reason, last.prompt_tokens, last.generated_tokens) == (
        "length",
        len(prompt),
        64,
    )
    text = "".join(m.text for m in messages)
    assert text == tokenizer.decode(ids, skip_special_tokens=True)


async def test_chat_seed_and_stop(node: Daemon, certs_dir: Path) -> None:
    async with Client.from_certs([node.address], certs_dir, follow_s=120) as c:

        async def once(**kw: object) -> tuple[str, list[int], str]:
            ms = [m async for m in c.generate("llama", **kw)]  # type: ignore[arg-type]
            ids = [t for m in ms for t in m.token_ids]
            return "".join(m.text for m in ms), ids, ms[-1].finish_reason

        chat = [("system", "Be short."), ("user", "Open the file.")]
        sampled = {"temperature": 0.8, "top_k": 40, "top_p": 0.9, "seed": 3}
        a = await once(messages=chat, max_new_tokens=24, **sampled)
        b = await once(messages=chat, max_new_tokens=24, **sampled)
        assert a == b  # seeded sampling is deterministic
        text = a[0]
        stop = text[len(text) // 2 : len(text) // 2 + 2]
        stopped = await once(messages=chat, max_new_tokens=24, stop=[stop], **sampled)
        assert stopped[0] == text[: text.index(stop)] and stopped[2] == "stop"


@pytest.mark.parametrize(
    ("kw", "error", "match"),
    [
        ({"model": "nope"}, NotFound, "'nope' is not published.*folders here: gpt2, llama"),
        ({"model": "gpt2", "model_version": "abcdef12"}, InvalidArgument, "local folder"),
        ({"model": ""}, InvalidArgument, "model is empty"),
        ({"prompt": ""}, InvalidArgument, "exactly one of"),
        ({"prompt": "x " * 600}, InvalidArgument, "shorten the prompt"),
        ({"max_new_tokens": 600}, InvalidArgument, "beyond the model's context"),
        ({"temperature": -1.0}, InvalidArgument, "temperature must be >= 0"),
        ({"top_p": 0.0}, InvalidArgument, "top_p"),
        ({"top_p": 1.5}, InvalidArgument, "top_p"),
        ({"prompt_ids": [10**6]}, InvalidArgument, "outside the vocabulary"),
    ],
)
async def test_bad_input_is_refused_with_its_status(
    node: Daemon, certs_dir: Path, kw: dict[str, object], error: type, match: str
) -> None:
    args: dict[str, object] = {"model": "gpt2", "prompt": PROMPT}
    if "prompt_ids" in kw:
        args["prompt"] = ""
    args.update(kw)
    model = args.pop("model")
    async with Client.from_certs([node.address], certs_dir, follow_s=60) as c:
        with pytest.raises(error, match=match):
            async for _ in c.generate(model, **args):  # type: ignore[arg-type]
                pass
    assert "Traceback" not in node.log_tail(200)


async def test_hang_up_frees_the_slot_and_a_full_queue_is_refused(
    node: Daemon, certs_dir: Path
) -> None:
    material = tls.load(tls.TLSPaths.in_dir(certs_dir, "client"))
    async with Client([node.address], material, follow_s=120) as c:
        # max_running 1, max_queued 1: a long one runs, the next waits, a third is refused.
        long = c.generate("gpt2", PROMPT, max_new_tokens=450)
        first = await anext(long)
        assert first.token_ids
        waiting = c.generate("gpt2", PROMPT, max_new_tokens=5)
        queued = asyncio.ensure_future(_collect(waiting))
        for _ in range(200):  # until the node has queued it
            await asyncio.sleep(0.05)
            try:
                async for _ in c.generate("gpt2", PROMPT, max_new_tokens=5):
                    pass
            except ResourceExhausted as e:
                assert "queue full" in str(e)
                break
        else:
            pytest.fail("the third generation was never refused with a full queue")
        await long.aclose()  # hang up: the node frees the long one at its next step
        messages = await asyncio.wait_for(queued, 120)
        assert messages[-1].finish_reason == "length" and messages[-1].generated_tokens == 5
    log = node.log_tail(400)
    assert "cancelled by its caller, freed" in log
    assert "Traceback" not in log


async def _collect(stream: object) -> list[agent_pb2.GenerateResponse]:
    return [m async for m in stream]  # type: ignore[attr-defined]


async def test_node_without_decoders_says_how_to_serve_them(
    daemons: list[Daemon], tmp_path: Path, certs_dir: Path
) -> None:
    d = Daemon("n5", certs_dir, tmp_path / "n5").start()
    daemons.append(d)
    async with Client.from_certs([d.address], certs_dir) as c:
        with pytest.raises(NotFound, match=r"not published.*models push.*generation\.folders"):
            async for _ in c.generate("gpt2", PROMPT):
                pass


def test_ctl_generate_streams_and_prints_json(node: Daemon, certs_dir: Path) -> None:
    base = [sys.executable, "-m", "p2pagent.cli.ctl", "generate", "--target", node.address]
    base += ["--certs", str(certs_dir), "--timeout", "120", "--model", "llama"]
    out = subprocess.run(
        [*base, "--max-new-tokens", "8", "--json", PROMPT],
        capture_output=True, text=True, timeout=300, env={**os.environ},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["finish_reason"] == "length" and len(doc["token_ids"]) == 8
    assert doc["node"] == "n6"  # the node that ran it
    plain = subprocess.run(
        [*base, "--max-new-tokens", "8", PROMPT], capture_output=True, text=True, timeout=300
    )
    assert plain.returncode == 0 and plain.stdout.startswith(doc["text"])
    assert "[length: 8 tokens on n6]" in plain.stdout
    bad = subprocess.run(
        [*base, "--temperature", "-1", PROMPT], capture_output=True, text=True, timeout=300
    )
    assert bad.returncode == 2 and "temperature must be >= 0" in bad.stderr
    assert "Traceback" not in bad.stderr
