"""Inference through a real daemon over mutual TLS, against the offline torch ceiling.

    python -m bench.inference_grpc [--small] [--json FILE]

Rows, all measured in this run: offline batched torch throughput of the demo model (the
ceiling); the daemon unbatched (max_batch_size 1) and batched at concurrency 1, 8 and 32,
with p50/p95/p99; and a no-op model's Infer latency (pure RPC + engine overhead).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np
import torch

from p2pagent._proto import agent_pb2, agent_pb2_grpc, common_pb2
from p2pagent.identity import certs
from p2pagent.identity.spiffe import Role
from p2pagent.inference import demo_model
from p2pagent.testing.daemon import Daemon
from p2pagent.transport.channels import channel_options


def offline_ceiling(batch: int, seconds: float) -> float:
    module, _ = demo_model.build_demo()
    x = demo_model.sample_input(batch)
    with torch.inference_mode():
        module(x)
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            module(x)
            n += batch
    return n / (time.perf_counter() - start)


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


async def load(
    stub: agent_pb2_grpc.AgentStub, model: str, x: np.ndarray, concurrency: int, total: int
) -> tuple[float, list[float]]:
    t = common_pb2.Tensor(
        name="input", dtype=common_pb2.FLOAT32, shape=list(x.shape), data=x.astype("<f4").tobytes()
    )
    req = agent_pb2.InferRequest(model=model, inputs=[t])
    latencies: list[float] = []
    remaining = total

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            start = time.perf_counter()
            await stub.Infer(req, timeout=60)
            latencies.append(time.perf_counter() - start)

    for _ in range(min(20, total)):  # warm up: model load, channel, allocator
        await stub.Infer(req, timeout=60)
    start = time.perf_counter()
    await asyncio.gather(*[worker() for _ in range(concurrency)])
    return total / (time.perf_counter() - start), latencies


async def run(small: bool) -> dict[str, object]:
    root = Path(tempfile.mkdtemp(prefix="p2p-bench-"))
    certs.init_ca(root / "certs", "bench")
    for name in ("b1", "b2"):
        certs.issue(root / "certs", name, Role.NODE)
    certs.issue(root / "certs", "client", Role.CLIENT)
    files = demo_model.write_all(root / "model")
    serve = [
        "--serve",
        f"demo={files['torchscript']}",
        "--serve",
        f"noop={files['noop_torchscript']}",
    ]
    batched = Daemon("b1", root / "certs", root / "b1", args=serve)
    unbatched = Daemon(
        "b2",
        root / "certs",
        root / "b2",
        args=serve,
        env={"P2PAGENT_INFERENCE__MAX_BATCH_SIZE": "1"},
    )
    total = 200 if small else 2000
    rows: list[dict[str, object]] = []
    ceiling = offline_ceiling(32, 1.0 if small else 5.0)
    rows.append({"row": "offline torch, batch 32 (ceiling)", "rps": ceiling})
    x = demo_model.sample_input(1).numpy()
    creds = grpc.ssl_channel_credentials(
        (root / "certs/ca.crt").read_bytes(),
        (root / "certs/client.key").read_bytes(),
        (root / "certs/client.crt").read_bytes(),
    )
    try:
        for d in (batched, unbatched):
            d.start()
        results: dict[str, tuple[float, list[float]]] = {}
        for label, d in (("unbatched", unbatched), ("batched", batched)):
            async with grpc.aio.secure_channel(
                d.address, creds, options=channel_options("bench", 64 << 20)
            ) as ch:
                stub = agent_pb2_grpc.AgentStub(ch)
                for c in (1, 8, 32):
                    results[f"{label} c={c}"] = await load(stub, "demo", x, c, total)
                if label == "batched":
                    results["noop c=1"] = await load(stub, "noop", x, 1, total)
        for key, (rps, lat) in results.items():
            rows.append(
                {
                    "row": key,
                    "rps": rps,
                    "p50_ms": pct(lat, 0.5) * 1e3,
                    "p95_ms": pct(lat, 0.95) * 1e3,
                    "p99_ms": pct(lat, 0.99) * 1e3,
                }
            )
    finally:
        batched.kill()
        unbatched.kill()
    r = dict(results.items())
    checks = {
        "batched c=32 / unbatched c=32 >= 3": r["batched c=32"][0] / r["unbatched c=32"][0],
        "batched c=32 / offline ceiling >= 0.8": r["batched c=32"][0] / ceiling,
        "p95 batched c=32 / unbatched c=32 <= 1": pct(r["batched c=32"][1], 0.95)
        / pct(r["unbatched c=32"][1], 0.95),
        "p50 batched c=1 - unbatched c=1 (ms) <= 1": (
            statistics.median(r["batched c=1"][1]) - statistics.median(r["unbatched c=1"][1])
        )
        * 1e3,
        "noop p50 (ms) <= 2": statistics.median(r["noop c=1"][1]) * 1e3,
    }
    return {"rows": rows, "checks": checks}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--small", action="store_true", help="CI size: a few hundred requests")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    out = asyncio.run(run(args.small))
    print(f"{'row':38} {'req/s':>9} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}")
    for row in out["rows"]:  # type: ignore[attr-defined]
        print(
            f"{row['row']:38} {row['rps']:9.0f} {row.get('p50_ms', float('nan')):8.2f} "
            f"{row.get('p95_ms', float('nan')):8.2f} {row.get('p99_ms', float('nan')):8.2f}"
        )
    print()
    for name, value in out["checks"].items():  # type: ignore[attr-defined]
        print(f"{name:45} {value:8.2f}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
