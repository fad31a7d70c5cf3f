"""The inference engine in-process against the offline torch ceiling.

    python -m bench.inference_offline [--small] [--requests N] [--repeats R] [--json [FILE]]
                                      [--device cpu|cuda:N] [--model demo|gpu] [--gpu-depth N]

Rows, all measured in this run on the demo model (MLP 256 -> 1024 -> 1024 -> 10, TorchScript),
or with ``--model gpu`` on ``demo-gpu`` (``demo_model.write_gpu``, sized for a GPU):

- offline: the model called directly in a loop at batch 1 and at ``max_batch_size`` rows
  (the ceiling: no queue, no threads, no event loop);
- the engine unbatched (``max_batch_size`` 1) and batched, at concurrency 1, 8 and 32, with
  p50/p95/p99 latency;

then the targets of issue "Inference engine", each with its measured ratio. "loop us" is
the event loop thread's CPU time per request (load generator included). Every engine row
is the median (by throughput) of ``--repeats`` runs, because the machine is shared. Other
load on the machine moves the ceiling as much as the engine, so the ceiling is measured
again right before every engine run and each run is divided by its own: the "x ceil" column
and the ceiling target are medians of those paired ratios. On a GPU the offline rows copy
each batch in from pinned host memory and the outputs back, as the engine must.

``--json`` prints one object on stdout, ``{"targets": [...], "rows": ..., ...}`` (the table
goes to stderr); ``--json FILE`` writes it to FILE and prints the table as before.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench._infer_load import LoadResult, fmt_ms, median_by_throughput, run_load
from bench._targets import Target, add_json_flag, at_least, at_most, emit, human, print_table
from p2pagent.inference import demo_model
from p2pagent.inference.cache import ModelCache
from p2pagent.inference.config import InferenceConfig
from p2pagent.inference.device import select_device
from p2pagent.inference.engine import InferenceEngine, resolve_config
from p2pagent.inference.formats import load_model
from p2pagent.inference.spec import ModelSpec

CONCURRENCY = (1, 8, 32)


def rows_of(kind: str, rows: int, seed: int = demo_model.SEED) -> torch.Tensor:
    """Input rows for the model under test."""
    if kind == "gpu":
        return demo_model.large_input(rows, seed)
    return demo_model.sample_input(rows, seed)


def offline(
    path: Path, spec: ModelSpec, batch: int, seconds: float, device: str, kind: str
) -> float:
    """Rows per second of the model called directly, ``batch`` rows per call."""
    dev = torch.device(device)
    model = load_model("demo", path, spec, dev)
    x = rows_of(kind, batch)
    if dev.type == "cuda":
        x = x.pin_memory()
    with torch.inference_mode():
        for _ in range(20):
            model.fn(x.to(dev, non_blocking=True)).cpu()
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            model.fn(x.to(dev, non_blocking=True)).cpu()
            n += batch
        return n / (time.perf_counter() - start)


async def engine_run(
    path: Path,
    spec: ModelSpec,
    config: InferenceConfig,
    concurrency: int,
    requests: int,
    device_name: str,
    kind: str,
) -> tuple[LoadResult, float]:
    """The load result and the event loop thread's CPU seconds per request (the Python the
    device waits for; other load on the machine moves it far less than throughput)."""
    device = select_device(device_name)
    cache = ModelCache(device.device, 1 << 34)
    cache.register("demo", path, spec)
    engine = InferenceEngine(cache, config, device)
    pool = [rows_of(kind, 1, seed=i) for i in range(64)]

    async def call(i: int) -> Any:
        return await engine.infer("demo", {"input": pool[i % len(pool)]})

    try:
        warmup = min(requests, 200)
        cpu0 = time.thread_time()
        result = await run_load(call, concurrency, requests, warmup=warmup)
        return result, (time.thread_time() - cpu0) / (warmup + requests)
    finally:
        await engine.close()
        cache.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="inference engine vs offline torch")
    p.add_argument("--small", action="store_true", help="a quick run (CI keeps it working)")
    p.add_argument("--requests", type=int, default=2000, help="timed requests per row")
    p.add_argument("--repeats", type=int, default=3, help="runs per engine row (median kept)")
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--pipeline-depth", type=int, default=0, help="0 = auto")
    p.add_argument("--threads", type=int, default=0, help="intra-op threads (0 = auto)")
    p.add_argument("--switch-interval", type=float, default=0.0, help="GIL switch interval")
    p.add_argument("--device", default="cpu", help="cpu or cuda:N")
    p.add_argument("--model", choices=("demo", "gpu"), default="demo")
    p.add_argument(
        "--gpu-depth", type=int, default=demo_model.GPU_DEPTH, help="demo-gpu's layer repeats"
    )
    add_json_flag(p)
    args = p.parse_args(argv)
    if min(args.requests, args.repeats, args.max_batch) <= 0:
        p.error("--requests, --repeats and --max-batch must be positive")
    if args.small:
        args.requests, args.repeats = 200, 1
    if args.switch_interval > 0:
        sys.setswitchinterval(args.switch_interval)

    with human(args.json):
        details, targets = measure(args)
    emit(args.json, targets, **details)
    return 0


def measure(args: argparse.Namespace) -> tuple[dict[str, Any], list[Target]]:
    """Every row of the table (printed as it goes), then the issue's targets."""
    base = InferenceConfig(max_batch_size=args.max_batch, intra_op_threads=args.threads)
    device = select_device(args.device)
    threads = resolve_config(base, device).intra_op_threads
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        files = demo_model.write_all(Path(tmp))
        path, spec_file = files["torchscript"], files["metadata"]
        if args.model == "gpu":
            path = demo_model.write_gpu(Path(tmp), args.gpu_depth)
            spec_file = path.with_name("demo-gpu.metadata.json")
        spec = ModelSpec.from_json(spec_file.read_text())
        seconds = 0.5 if args.small else 2.0

        def offline_rps(batch: int, seconds: float) -> float:
            return offline(path, spec, batch, seconds, device.name, args.model)

        off1 = offline_rps(1, seconds)
        ceiling = offline_rps(args.max_batch, seconds)

        rows: dict[tuple[str, int], LoadResult] = {}
        paired: dict[tuple[str, int], float] = {}
        loop_cpu: dict[tuple[str, int], float] = {}
        ceilings = [ceiling]
        modes = {
            "unbatched": InferenceConfig(
                max_batch_size=1, intra_op_threads=threads, pipeline_depth=args.pipeline_depth
            ),
            "batched": InferenceConfig(
                max_batch_size=args.max_batch,
                intra_op_threads=threads,
                pipeline_depth=args.pipeline_depth,
            ),
        }
        for mode, config in modes.items():
            for c in CONCURRENCY:
                runs, ratios, cpus = [], [], []
                for _ in range(args.repeats):
                    ceilings.append(offline_rps(args.max_batch, seconds / 2))
                    run, cpu = asyncio.run(
                        engine_run(path, spec, config, c, args.requests, device.name, args.model)
                    )
                    runs.append(run)
                    cpus.append(cpu)
                    ratios.append(run.throughput / ceilings[-1])
                rows[(mode, c)] = median_by_throughput(runs)
                paired[(mode, c)] = statistics.median(ratios)
                loop_cpu[(mode, c)] = statistics.median(cpus)
        ceiling = statistics.median(ceilings)

    print(
        f"model {args.model} on {device.description}, "
        f"intra-op threads {threads}, max_batch_size {args.max_batch}, "
        f"{args.requests} requests per row, median of {args.repeats}"
    )
    print(
        f"{'row':<28}{'req/s':>9}{'x ceil':>8}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'loop us':>9}"
    )
    print(f"{'offline batch 1':<28}{off1:9.0f}{off1 / ceiling:8.2f}")
    print(f"{f'offline batch {args.max_batch} (ceiling)':<28}{ceiling:9.0f}{1.0:8.2f}")
    for (mode, c), r in rows.items():
        print(
            f"{f'{mode} c={c}':<28}{r.throughput:9.0f}{paired[(mode, c)]:8.2f}"
            f"{fmt_ms(r.p50):>9}{fmt_ms(r.p95):>9}{fmt_ms(r.p99):>9}"
            f"{loop_cpu[(mode, c)] * 1e6:9.1f}" + (f"  errors {r.errors}" if r.errors else "")
        )
    b32, u32 = rows[("batched", 32)], rows[("unbatched", 32)]
    b1, u1 = rows[("batched", 1)], rows[("unbatched", 1)]
    targets = [
        at_least("batched c=32 / unbatched c=32 throughput", b32.throughput / u32.throughput, 3),
        at_least("batched c=32 / offline ceiling (median of paired runs)",
                 paired[("batched", 32)], 0.8),
        at_most("p95 batched c=32 / unbatched c=32", b32.p95 / u32.p95, 1),
        at_most("p50 batched c=1 - unbatched c=1 (ms)", (b1.p50 - u1.p50) * 1e3, 1),
    ]  # fmt: skip
    print()
    print_table(targets)
    details = {
        "model": args.model,
        "device": device.description,
        "threads": threads,
        "max_batch_size": args.max_batch,
        "offline_batch1_rps": off1,
        "ceiling_rps": ceiling,
        "rows": {
            f"{m} c={c}": {
                **r.to_dict(),
                "x_ceiling": paired[(m, c)],
                "loop_cpu_us": loop_cpu[(m, c)] * 1e6,
            }
            for (m, c), r in rows.items()
        },
    }
    return details, targets


if __name__ == "__main__":
    raise SystemExit(main())
