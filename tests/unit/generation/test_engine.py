"""The decode engine on the tiny GPT-2 and Llama folders: exactness against transformers'
generate, continuous batching, seeded sampling, stop strings, cancellation, model failure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from p2pagent.inference.generation.config import GenerationConfig
from p2pagent.inference.generation.engine import DecodeEngine, FinishEvent, TokenEvent
from p2pagent.inference.generation.folder import DecoderFolder, load_decoder_folder
from p2pagent.inference.generation.sampling import SamplingParams
from p2pagent.inference.generation.scheduler import FinishReason

FAMILIES = ["gpt2", "llama"]
PROMPTS = [
    "Return the path of the file.",
    "A",
    "Create a new thread and start it running. " * 6,
]


@pytest.fixture(scope="module")
def folders(decoder_folders: dict[str, Path]) -> dict[str, DecoderFolder]:
    return {f: load_decoder_folder(decoder_folders[f]) for f in FAMILIES}


def reference(folder: DecoderFolder, prompt: list[int], new: int) -> list[int]:
    """transformers' own greedy generate on the same folder."""
    ids = torch.tensor([prompt])
    out = folder.model.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, do_sample=False
    )
    return list(out[0, len(prompt) :].tolist())


def run(engine: DecodeEngine) -> tuple[dict[int, list[int]], dict[int, str], dict[int, Any]]:
    tokens: dict[int, list[int]] = {}
    text: dict[int, str] = {}
    done: dict[int, FinishEvent] = {}
    for _ in range(10_000):
        if engine.idle:
            break
        for e in engine.step():
            if isinstance(e, TokenEvent):
                tokens.setdefault(e.seq_id, []).append(e.token_id)
                text[e.seq_id] = text.get(e.seq_id, "") + e.text
            else:
                text[e.seq_id] = text.get(e.seq_id, "") + e.text
                done[e.seq_id] = e
    return tokens, text, done


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_matches_transformers_generate_alone_and_batched(
    folders: dict[str, DecoderFolder], family: str
) -> None:
    folder = folders[family]
    prompts = [folder.encode(p) for p in PROMPTS]
    expected = [reference(folder, p, 64) for p in prompts]
    # Alone.
    engine = DecodeEngine(folder)
    seq = engine.submit(prompts[0], SamplingParams(max_new_tokens=64))
    tokens, _, done = run(engine)
    assert tokens[seq] == expected[0]
    assert done[seq].reason is FinishReason.LENGTH and done[seq].generated_tokens == 64
    # Batched: prompts of different lengths, joining at different steps, and a prefill
    # budget small enough to cut the long prompt into chunks.
    engine = DecodeEngine(folder, GenerationConfig(prefill_tokens_per_step=16))
    ids = [engine.submit(prompts[0], SamplingParams(max_new_tokens=64))]
    for _ in range(5):
        engine.step()
    ids += [engine.submit(p, SamplingParams(max_new_tokens=64)) for p in prompts[1:]]
    rest, _, _ = run(engine)
    assert [rest[i][-64:] if i == ids[0] else rest[i] for i in ids[1:]] == expected[1:]


@pytest.mark.parametrize("family", FAMILIES)
def test_seeded_sampling_is_deterministic_whatever_runs_beside(
    folders: dict[str, DecoderFolder], family: str
) -> None:
    folder = folders[family]
    prompt = folder.encode(PROMPTS[0])
    params = SamplingParams(max_new_tokens=32, temperature=0.9, top_p=0.9, top_k=50, seed=7)
    engine = DecodeEngine(folder)
    alone = engine.submit(prompt, params)
    first, _, _ = run(engine)
    engine = DecodeEngine(folder)
    engine.submit(folder.encode(PROMPTS[2]), SamplingParams(max_new_tokens=40, temperature=1.0))
    again = engine.submit(prompt, params)
    other = engine.submit(prompt, SamplingParams(32, temperature=0.9, top_p=0.9, top_k=50, seed=8))
    second, _, _ = run(engine)
    assert second[again] == first[alone]
    assert second[other] != first[alone]
    greedy = reference(folder, prompt, 32)
    assert first[alone] != greedy  # it did sample


def test_top_k_one_is_greedy(folders: dict[str, DecoderFolder]) -> None:
    folder = folders["gpt2"]
    prompt = folder.encode(PROMPTS[0])
    engine = DecodeEngine(folder)
    seq = engine.submit(prompt, SamplingParams(max_new_tokens=16, temperature=2.0, top_k=1))
    tokens, _, _ = run(engine)
    assert tokens[seq] == reference(folder, prompt, 16)


@pytest.mark.parametrize("family", FAMILIES)
def test_stop_string_ends_the_text_before_it(
    folders: dict[str, DecoderFolder], family: str
) -> None:
    folder = folders[family]
    prompt = folder.encode(PROMPTS[0])
    engine = DecodeEngine(folder)
    seq = engine.submit(prompt, SamplingParams(max_new_tokens=40))
    _, text, _ = run(engine)
    full = text[seq]
    assert full == folder.decode(reference(folder, prompt, 40))
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    engine = DecodeEngine(folder)
    seq = engine.submit(prompt, SamplingParams(max_new_tokens=40, stop=(stop,)))
    tokens, text, done = run(engine)
    assert text[seq] == full[: full.index(stop)]
    assert done[seq].reason is FinishReason.STOP
    assert len(tokens[seq]) < 40


def test_cancel_frees_the_slot_for_the_next(folders: dict[str, DecoderFolder]) -> None:
    folder = folders["llama"]
    engine = DecodeEngine(folder, GenerationConfig(max_running=1))
    prompt = folder.encode(PROMPTS[0])
    first = engine.submit(prompt, SamplingParams(max_new_tokens=200))
    second = engine.submit(prompt, SamplingParams(max_new_tokens=5))
    queued = engine.submit(prompt, SamplingParams(max_new_tokens=5))
    engine.cancel(queued)  # queued: gone at once
    for _ in range(3):
        engine.step()
    assert engine.scheduler.running == 1 and engine.scheduler.waiting == 1
    engine.cancel(first)
    tokens, _, done = run(engine)
    assert first not in done and queued not in done and queued not in tokens
    assert done[second].reason is FinishReason.LENGTH
    assert tokens[second] == reference(folder, prompt, 5)


def test_a_model_that_raises_fails_only_its_sequences(folders: dict[str, DecoderFolder]) -> None:
    folder = folders["gpt2"]
    poison = folder.encode("Zebra")[0]

    def hook(_module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        ids = kwargs.get("input_ids")
        if ids is not None and ids.shape[1] > 1 and int(ids[0, 0]) == poison:
            raise RuntimeError("poisoned prompt")

    handle = folder.model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        engine = DecodeEngine(folder)
        good = folder.encode(PROMPTS[0])
        a = engine.submit(good, SamplingParams(max_new_tokens=20))
        bad = engine.submit([poison, *good], SamplingParams(max_new_tokens=20))
        b = engine.submit(good, SamplingParams(max_new_tokens=20))
        tokens, _, done = run(engine)
    finally:
        handle.remove()
    assert done[bad].reason is FinishReason.ERROR
    assert "poisoned prompt" in done[bad].error and bad not in tokens
    assert tokens[a] == tokens[b] == reference(folder, good, 20)


def test_a_decode_failure_ends_that_batch_and_the_engine_goes_on(
    folders: dict[str, DecoderFolder],
) -> None:
    folder = folders["llama"]
    state = {"decodes": 0}

    def hook(_module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        ids = kwargs.get("input_ids")
        if ids is not None and ids.shape[1] == 1:
            state["decodes"] += 1
            if state["decodes"] == 3:
                raise ValueError("device lost")

    handle = folder.model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        engine = DecodeEngine(folder)
        prompt = folder.encode(PROMPTS[0])
        ids = [engine.submit(prompt, SamplingParams(max_new_tokens=10)) for _ in range(2)]
        _, _, done = run(engine)
        assert {done[i].reason for i in ids} == {FinishReason.ERROR}
        assert "device lost" in done[ids[0]].error
        later = engine.submit(prompt, SamplingParams(max_new_tokens=10))
        tokens, _, done = run(engine)
    finally:
        handle.remove()
    assert done[later].reason is FinishReason.LENGTH
    assert tokens[later] == reference(folder, prompt, 10)


def test_end_of_sequence_token_stops(folders: dict[str, DecoderFolder]) -> None:
    folder = folders["gpt2"]
    (eos,) = folder.eos_token_ids
    prompt = folder.encode(PROMPTS[0])
    biased = torch.zeros(folder.model.config.vocab_size)
    biased[eos] = 1e4

    def hook(_module: Any, _args: Any, output: Any) -> Any:
        output.logits[:, -1, :] += biased
        return output

    handle = folder.model.register_forward_hook(hook)
    try:
        engine = DecodeEngine(folder)
        seq = engine.submit(prompt, SamplingParams(max_new_tokens=10))
        tokens, text, done = run(engine)
    finally:
        handle.remove()
    assert tokens[seq] == [eos] and text[seq] == ""
    assert done[seq].reason is FinishReason.STOP and done[seq].generated_tokens == 1


@pytest.mark.parametrize("family", FAMILIES)
def test_prefill_computes_logits_for_the_last_position_only(
    folders: dict[str, DecoderFolder], family: str
) -> None:
    """The language-model head runs on one position per prefill chunk, not the whole prompt
    (a chunked prompt included), and the tokens stay transformers' own."""
    folder = folders[family]
    rows: list[int] = []

    def hook(_module: Any, _args: Any, output: Any) -> None:
        rows.append(int(output.logits.shape[1]))

    prompt = folder.encode(PROMPTS[2])
    assert len(prompt) > 16
    handle = folder.model.register_forward_hook(hook)
    try:
        engine = DecodeEngine(folder, GenerationConfig(prefill_tokens_per_step=16))
        seq = engine.submit(prompt, SamplingParams(max_new_tokens=8))
        tokens, _, _ = run(engine)
    finally:
        handle.remove()
    chunks = -(-len(prompt) // 16)
    assert len(rows) == chunks + 7 and set(rows) == {1}
    assert tokens[seq] == reference(folder, prompt, 8)
