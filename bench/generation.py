"""The decode engine (continuous batching) against transformers' static batched generate.

    python -m bench.generation [--small] [--family llama|gpt2] [--size tiny|small|medium]
                               [--device cpu|cuda:N] [--threads N] [--json]

All on one model folder built in code (``p2pagent.testing.decoder_folders``, seeded random
weights, ``medium`` by default: 6 layers, width 768), in this process, same threads:

- throughput: 32 requests, prompt lengths drawn from 16-256 and ``max_new_tokens`` from
  16-256 (seeded). The engine gets all 32 at once and runs them with continuous batching;
  the baseline is ``model.generate`` on the same 32 prompts left-padded into one batch of 32,
  which must run every row to the longest ``max_new_tokens`` (a static batch cannot let a
  row leave). Both count only the tokens each request asked for; the end-of-sequence token
  is suppressed in both, so every request gets exactly its tokens.
- concurrency 1: time to first token and inter-token latency of the engine, one request at a
  time, against the offline floor measured in the same run: the model's own forward on the
  prompt (prefill, with the language-model head on the last position only, as transformers'
  ``generate`` runs it; the head over every position is reported beside it) and on one token
  with the cache (per-token), called directly. Each request runs the floor and the engine
  one after the other, the floor first for even requests and the engine first for odd ones,
  so neither side always runs in the other's wake; each request also runs
  ``--ttft-repeats`` more such pairs up to the first token only (prefills are short: more
  samples of the time to first token for little time). Those also report the engine's own
  time before the first token, outside the model's forward, which the load does not blur.
- memory: 64 requests queued at once under ``generation.kv_cache_bytes``; the peak RSS
  growth over the process before the model was loaded, against the budget plus the model's
  bytes plus 15%.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from p2pagent.cli import malloc_tuning
from p2pagent.inference.generation.config import GenerationConfig
from p2pagent.inference.generation.engine import DecodeEngine, TokenEvent, last_logits_only
from p2pagent.inference.generation.folder import DecoderFolder, load_decoder_folder
from p2pagent.inference.generation.sampling import SamplingParams
from p2pagent.testing.decoder_folders import BUILDERS

MIB = 1024 * 1024


_T0 = time.perf_counter()


def progress(what: str) -> None:
    """A line on stderr per phase: on a shared machine a run can take long."""
    print(f"[{time.perf_counter() - _T0:7.1f}s] {what}", file=sys.stderr, flush=True)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


Request = tuple[list[int], int]


def requests(folder: DecoderFolder, n: int, seed: int, lo: int, hi: int) -> list[Request]:
    """``n`` (prompt ids, max_new_tokens) pairs; prompts are real text cut to a drawn length."""
    rng = random.Random(seed)
    vocab = int(folder.model.config.vocab_size)
    text = folder.encode(" ".join(Path(__file__).read_text().split()) * 4)
    out = []
    for _ in range(n):
        length = rng.randint(lo, hi)
        start = rng.randrange(0, len(text) - length)
        prompt = [t % vocab for t in text[start : start + length]]
        out.append((prompt, rng.randint(lo, hi)))
    return out


def no_eos(folder: DecoderFolder) -> DecoderFolder:
    return dataclasses.replace(folder, eos_token_ids=frozenset())


def run_engine(engine: DecodeEngine, reqs: list[Request]) -> tuple[int, float]:
    start = time.perf_counter()
    for prompt, new in reqs:
        engine.submit(prompt, SamplingParams(max_new_tokens=new))
    tokens = 0
    while not engine.idle:
        tokens += sum(isinstance(e, TokenEvent) for e in engine.step())
    return tokens, time.perf_counter() - start


@torch.inference_mode()
def run_static(folder: DecoderFolder, reqs: list[Request]) -> tuple[int, float]:
    """transformers' generate on all requests as one left-padded batch."""
    width = max(len(p) for p, _ in reqs)
    longest = max(n for _, n in reqs)
    device = next(folder.model.parameters()).device
    ids = torch.zeros((len(reqs), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, (p, _) in enumerate(reqs):
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    start = time.perf_counter()
    out = folder.model.generate(
        ids.to(device),
        attention_mask=mask.to(device),
        max_new_tokens=longest,
        min_new_tokens=longest,  # no row ends early: the same tokens as the engine's
        do_sample=False,
        pad_token_id=0,
    )
    elapsed = time.perf_counter() - start
    assert out.shape[1] == width + longest
    return sum(n for _, n in reqs), elapsed


@torch.inference_mode()
def offline_latency(folder: DecoderFolder, prompt: list[int], new: int) -> tuple[float, float]:
    """The model called directly: prefill time (logits of the last position only, what the
    first token needs), and median time of one cached decode step."""
    from transformers import DynamicCache

    device = next(folder.model.parameters()).device
    ids = torch.tensor([prompt], device=device)
    cache = DynamicCache()
    start = time.perf_counter()
    out = folder.model(input_ids=ids, cache=cache, use_cache=True, **last_logits_only(folder.model))
    token = int(out.logits[0, -1].argmax())
    prefill = time.perf_counter() - start
    steps = []
    for _ in range(new):
        t0 = time.perf_counter()
        out = folder.model(input_ids=torch.tensor([[token]], device=device), cache=cache)
        token = int(out.logits[0, -1].argmax())
        steps.append(time.perf_counter() - t0)
    return prefill, statistics.median(steps)


@torch.inference_mode()
def exact(folder: DecoderFolder, prompt: list[int], new: int) -> bool:
    """Greedy tokens of the engine equal transformers' generate on the same folder."""
    engine = DecodeEngine(folder)
    engine.submit(prompt, SamplingParams(max_new_tokens=new))
    ours = [e.token_id for _ in range(new + 1) for e in engine.step() if isinstance(e, TokenEvent)]
    ids = torch.tensor([prompt], device=next(folder.model.parameters()).device)
    out = folder.model.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
        do_sample=False, pad_token_id=0,
    )  # fmt: skip
    return bool(ours == out[0, len(prompt) :].tolist())


@torch.inference_mode()
def offline_prefill(folder: DecoderFolder, prompt: list[int], *, last_only: bool = True) -> float:
    """Prefill time of the model called directly and its first token: the head on the last
    position only, or (``last_only=False``) on every position, the model's default."""
    from transformers import DynamicCache

    ids = torch.tensor([prompt], device=next(folder.model.parameters()).device)
    head = last_logits_only(folder.model) if last_only else {}
    start = time.perf_counter()
    out = folder.model(input_ids=ids, cache=DynamicCache(), use_cache=True, **head)
    int(out.logits[0, -1].argmax())
    return time.perf_counter() - start


def engine_first_token(folder: DecoderFolder, prompt: list[int]) -> tuple[float, float]:
    """Time from submit to the engine's first token, and the part of it spent outside the
    model's forward (the engine's own work: checks, scheduling, sampling, detokenizing,
    joining the batch; the forward's time varies with the machine's load, this does not).
    The sequence asks for two tokens, so it joins the running batch after its prefill as a
    real one does (its second token is not timed)."""
    engine = DecodeEngine(folder)
    forward: list[float] = []
    model = folder.model
    pre = model.register_forward_pre_hook(lambda *_: forward.append(-time.perf_counter()))
    post = model.register_forward_hook(lambda *_: forward.append(time.perf_counter()))
    try:
        start = time.perf_counter()
        engine.submit(prompt, SamplingParams(max_new_tokens=2))
        first = None
        while first is None:
            events = engine.step()
            if any(isinstance(e, TokenEvent) for e in events):
                first = time.perf_counter() - start
    finally:
        pre.remove()
        post.remove()
    while not engine.idle:
        engine.step()
    return first, first - sum(forward)


def engine_latency(engine: DecodeEngine, prompt: list[int], new: int) -> tuple[float, float]:
    start = time.perf_counter()
    engine.submit(prompt, SamplingParams(max_new_tokens=new))
    stamps: list[float] = []
    while not engine.idle:
        for e in engine.step():
            if isinstance(e, TokenEvent):
                stamps.append(time.perf_counter())
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    return stamps[0] - start, statistics.median(gaps)


def memory(
    folder_path: Path, device: str, kv_budget: int, n: int, seed: int, hi: int
) -> dict[str, Any]:
    before = rss_bytes()
    folder = no_eos(load_decoder_folder(folder_path, device))
    model_bytes = sum(p.numel() * p.element_size() for p in folder.model.parameters())
    engine = DecodeEngine(folder, GenerationConfig(kv_cache_bytes=kv_budget, max_queued=n))
    reqs = requests(folder, n, seed + 1, hi // 2, hi)
    for prompt, new in reqs:
        engine.submit(prompt, SamplingParams(max_new_tokens=new))
    peak, peak_reserved, max_waiting = 0, 0, engine.scheduler.waiting
    while not engine.idle:
        engine.step()
        peak = max(peak, rss_bytes() - before)
        peak_reserved = max(peak_reserved, engine.scheduler.reserved_bytes)
    bound = (kv_budget + model_bytes) * 1.15
    return {
        "requests": n,
        "queued_at_start": max_waiting,
        "kv_cache_bytes": kv_budget,
        "model_bytes": model_bytes,
        "peak_reserved_bytes": peak_reserved,
        "peak_rss_growth_bytes": peak,
        "bound_bytes": int(bound),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--family", default="llama", choices=sorted(BUILDERS))
    p.add_argument("--size", default="medium", choices=["tiny", "small", "medium"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--streams", type=int, default=32)
    p.add_argument("--latency-runs", type=int, default=11)
    p.add_argument(
        "--ttft-repeats",
        type=int,
        default=2,
        help="first-token-only pairs (floor, engine) per latency request, beside the full one",
    )
    p.add_argument("--kv-mib", type=int, default=64, help="KV budget of the memory run")
    p.add_argument("--queued", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--small", action="store_true", help="CI size")
    p.add_argument(
        "--latency-only",
        action="store_true",
        help="only the exactness and concurrency-1 rows (on a busy machine the memory and "
        "throughput runs take long)",
    )
    p.add_argument("--json", action="store_true", help="print {'targets': [...]} as JSON")
    args = p.parse_args(argv)
    malloc_tuning.tune()  # as p2pagentd does: freed buffers go back to the system
    hi = 256
    if args.small:  # CI: keeps the benchmark working, in about a minute
        args.size, args.streams, args.latency_runs, args.queued, hi = "tiny", 8, 2, 16, 64
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        path = BUILDERS[args.family](Path(tmp) / args.family, seed=args.seed, size=args.size)
        mem = None
        if not args.latency_only:
            progress("memory run")
            mem = memory(path, args.device, args.kv_mib * MIB, args.queued, args.seed, hi)
        folder = no_eos(load_decoder_folder(path, args.device))
    reqs = requests(folder, args.streams, args.seed, 16, hi)
    run_engine(DecodeEngine(folder), reqs[:2])  # warm up both paths
    run_static(folder, reqs[:2])
    engine_tps = static_tps = e_tokens = 0.0
    if not args.latency_only:
        progress("throughput: engine")
        e_tokens, e_time = run_engine(DecodeEngine(folder), reqs)
        progress(f"throughput: static batch ({e_tokens / e_time:.1f} tokens/s engine)")
        s_tokens, s_time = run_static(folder, reqs)
        assert e_tokens == s_tokens, (e_tokens, s_tokens)
        engine_tps, static_tps = e_tokens / e_time, s_tokens / s_time
    progress("latency")

    ttft, itl, pre, tok, full, overhead = [], [], [], [], [], []
    lat_reqs = requests(folder, args.latency_runs, args.seed + 2, 16, hi // 2)
    for i, (prompt, new) in enumerate(lat_reqs):
        if i % 2:
            c, d = engine_latency(DecodeEngine(folder), prompt, new)
            a, b = offline_latency(folder, prompt, new)
        else:
            a, b = offline_latency(folder, prompt, new)
            c, d = engine_latency(DecodeEngine(folder), prompt, new)
        pre.append(a)
        tok.append(b)
        ttft.append(c)
        itl.append(d)
        for r in range(1, args.ttft_repeats + 1):  # more first tokens: prefills are short
            if (i + r) % 2:
                first, own = engine_first_token(folder, prompt)
                pre.append(offline_prefill(folder, prompt))
            else:
                pre.append(offline_prefill(folder, prompt))
                first, own = engine_first_token(folder, prompt)
            ttft.append(first)
            overhead.append(own)
        full.append(offline_prefill(folder, prompt, last_only=False))
    same = exact(folder, reqs[0][0], 64)
    ms = 1e3
    ttft_p50, pre_p50 = statistics.median(ttft) * ms, statistics.median(pre) * ms
    itl_p50, tok_p50 = statistics.median(itl) * ms, statistics.median(tok) * ms
    targets = [
        {
            "name": f"greedy: engine tokens == transformers generate, 64 new ({args.family})",
            "measured": same,
            "target": True,
            "met": same,
        },
        {
            "name": "c=1 time to first token p50 (ms) <= offline prefill + 3 ms",
            "measured": round(ttft_p50, 2),
            "target": round(pre_p50 + 3, 2),
            "met": ttft_p50 <= pre_p50 + 3,
        },
        {
            "name": "c=1 inter-token latency p50 (ms) <= 1.1x offline per-token + 1 ms",
            "measured": round(itl_p50, 2),
            "target": round(tok_p50 * 1.1 + 1, 2),
            "met": itl_p50 <= tok_p50 * 1.1 + 1,
        },
    ]
    if not args.latency_only:
        targets.insert(
            1,
            {
                "name": f"{args.streams} streams: engine tokens/s over static batched generate",
                "measured": round(engine_tps / static_tps, 2),
                "target": 1.5,
                "met": engine_tps / static_tps >= 1.5,
            },
        )
    if mem is not None:
        targets.append(
            {
                "name": f"{args.queued} queued: peak RSS growth (MiB) <= (KV budget + model) "
                "x 1.15",
                "measured": round(mem["peak_rss_growth_bytes"] / MIB, 1),
                "target": round(mem["bound_bytes"] / MIB, 1),
                "met": mem["peak_rss_growth_bytes"] <= mem["bound_bytes"],
            }
        )
    detail = {
        "family": args.family,
        "size": args.size,
        "device": args.device,
        "threads": torch.get_num_threads(),
        "engine_tokens_per_s": round(engine_tps, 1),
        "static_tokens_per_s": round(static_tps, 1),
        "tokens": e_tokens,
        "first_token_samples": len(ttft),
        "offline_prefill_ms_p50": round(pre_p50, 2),
        "engine_ms_outside_the_forward_before_first_token_p50": (
            round(statistics.median(overhead) * ms, 3) if overhead else None
        ),
        "offline_prefill_all_positions_head_ms_p50": round(statistics.median(full) * ms, 2),
        "offline_per_token_ms_p50": round(tok_p50, 3),
        "memory": mem,
    }
    if args.json:
        print(json.dumps({**detail, "targets": targets}, indent=2))
    else:
        for k, v in detail.items():
            print(f"{k:28} {v}")
        print("| target | measured | target | met |")
        print("|---|---:|---:|---|")
        for t in targets:
            print(f"| {t['name']} | {t['measured']} | {t['target']} | {t['met']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
