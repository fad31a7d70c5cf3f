"""Inference through a real daemon over mutual TLS, against the offline torch ceiling.

    python -m bench.inference_grpc [--model demo|large|gpu|gpu-sim] [--device auto|cpu|cuda:N]
                                   [--gpu-depth N] [--small] [--no-pin] [--repeats R]
                                   [--json [FILE]]

Rows, all measured in this run: offline batched torch throughput of the demo model (the
ceiling); the daemon unbatched (max_batch_size 1) and batched at concurrency 1, 8 and 32,
with p50/p95/p99; and a no-op model's Infer latency (pure RPC + engine overhead).

Streaming rows (issue 26): 32 requests in flight on one ``InferStream`` to the batched daemon,
for the no-op model and the model under test, against a bare grpc.aio bidirectional echo
stream carrying the same messages (``bench._grpc_echo``), each with the daemon's CPU per
request. The issue's targets: streaming no-op >= 0.8x the echo stream's throughput with
<= 1.5x its CPU per request; unary no-op CPU per request <= 2x the bare unary echo's; the
model batched over the stream >= 0.8x min(offline ceiling, echo stream rate). ``--json``
prints them as ``{"targets": [{"name", "measured", "target", "met"}]}`` (last line);
``--json FILE`` also writes every row and check to FILE.

Fairness on a small machine: by default (with at least 2 cores) the load generator is pinned
to one core and the daemons to the others (``taskset``), so the client's gRPC work does not
steal the daemon's core; the ceiling is measured in a process pinned like the daemons, on the
same TorchScript file with the daemon's intra-op thread count, three times (start, middle,
end; the median is used) since other load moves it. Each row reports the daemon's CPU time
per request (from /proc), which other load on the machine barely moves: it shows what
bounds the throughput when the ratios are noisy. Rows are medians of ``--repeats`` runs.

``--model large`` runs the same rows on ``demo-large`` (an MLP 1024 -> 3 x 4096 -> 1000, built
by ``demo_model.write_large``), a model whose forward pass dominates a request, as the models
an inference server is for do; with ``demo`` (5 MB) the RPC around a request costs more than
its share of a batch, so batching cannot show. Placement for it: the forward passes run on
the engine's worker thread with one intra-op thread, as the ceiling does, and the daemon's
event loop (gRPC, TLS, scheduling) gets the other core, as a GPU host's CPU serves the RPCs
while the device computes; the client is pinned to one core and the daemons are not pinned.

On a GPU (``--device cuda:N``, or ``auto`` on a host with one; daemons and ceiling both use
it): the client is pinned to the first core and the daemons to the others, as for ``demo``
on a CPU; the ceiling copies each batch in from pinned host memory and its outputs back, as a
server must. ``--model gpu`` runs ``demo-gpu`` (``demo_model.write_gpu``: a 256 MB layer
applied ``--gpu-depth`` times, memory-bound, milliseconds at any batch size up to 32): on a GPU
``demo`` and ``demo-large`` take microseconds, so their rows measure the RPC, not batching.

``--model gpu-sim`` runs, on any host, a stand-in with demo-gpu's costs as measured on an
H200 (``GPU_SIM``: 14 ms a batch + 0.64 ms a row, holding the engine's worker without using
a CPU, the ``busy`` architecture): the batching policy's behaviour against a GPU-like device
where no GPU is lent.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np
import torch

from bench._proc import NO_RATE_LIMIT, cpu_seconds
from bench._targets import human
from p2pagent._proto import agent_pb2, agent_pb2_grpc, common_pb2
from p2pagent.identity import certs
from p2pagent.identity.spiffe import Role
from p2pagent.inference import architectures, demo_model
from p2pagent.testing.daemon import Daemon, free_port
from p2pagent.transport.channels import channel_options

_CEILING = """
import sys, time, torch
torch.set_num_threads(int(sys.argv[3]))
device = torch.device(sys.argv[6])
module = torch.jit.load(sys.argv[1], map_location=device)
batch, seconds, width = int(sys.argv[2]), float(sys.argv[4]), int(sys.argv[5])
# On a GPU, what a server cannot avoid is counted: rows copied in from pinned host memory,
# outputs copied back (which waits for the forward pass).
x = torch.randn(batch, width, pin_memory=device.type == "cuda")
with torch.inference_mode():
    for _ in range(20):
        module(x.to(device, non_blocking=True)).cpu()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        module(x.to(device, non_blocking=True)).cpu()
        n += batch
print(n / (time.perf_counter() - start))
"""


def offline_ceiling(
    model: Path,
    batch: int,
    seconds: float,
    threads: int,
    prefix: list[str],
    width: int,
    device: str,
) -> float:
    """Rows/s of the model called directly, in a process placed and threaded like a daemon."""
    cmd = [*prefix, sys.executable, "-c", _CEILING, str(model), str(batch), str(threads)]
    out = subprocess.run(
        [*cmd, str(seconds), str(width), device],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return float(out.stdout.strip())


def start_echo(prefix: list[str], certs_dir: Path, address: str) -> subprocess.Popen[bytes]:
    """The bare gRPC echo server (bench._grpc_echo), placed like the daemons; once ready."""
    cmd = [*prefix, sys.executable, "-m", "bench._grpc_echo", str(certs_dir), "b1", address]
    echo = subprocess.Popen(cmd, stdout=subprocess.PIPE)
    assert echo.stdout is not None
    if echo.stdout.readline().strip() != b"ready":
        echo.kill()
        raise RuntimeError(f"the echo server did not start: {cmd}")
    return echo


def placement(pin: bool, large: bool, cuda: bool) -> tuple[set[int] | None, list[str], int]:
    """(client cores, daemon command prefix, daemon intra-op threads)."""
    cores = sorted(os.sched_getaffinity(0))
    if not pin or len(cores) < 2:
        return None, [], 0
    if large and not cuda:  # the daemons' loops use the core the model does not (docstring)
        return {cores[0]}, [], 1
    daemon = cores[1:]
    prefix = ["taskset", "-c", ",".join(map(str, daemon))]
    # On a GPU the engine's own rule stands (0 = auto: 1 intra-op thread): torch's CPU
    # threads only concatenate inputs there.
    return {cores[0]}, prefix, 0 if cuda else max(1, len(daemon) - 1)


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


async def stream_load(
    stub: agent_pb2_grpc.AgentServiceStub,
    model: str,
    x: np.ndarray,
    in_flight: int,
    total: int,
    pid: int,
) -> tuple[float, list[float], float]:
    """(requests/s, latencies, daemon CPU seconds per request) of ``total`` requests on one
    InferStream with ``in_flight`` of them awaiting their answer at any time."""
    t = common_pb2.Tensor(
        name="input",
        dtype=common_pb2.DTYPE_FLOAT32,
        shape=list(x.shape),
        data=x.astype("<f4").tobytes(),
    )
    call = stub.InferStream()
    # One message reused: grpc serializes it inside write, before the next id is set.
    req = agent_pb2.InferStreamRequest(model=model, inputs=[t], timeout_s=60)
    next_id = 0

    async def burst(n: int) -> list[float]:
        nonlocal next_id
        slots = asyncio.Semaphore(in_flight)
        sent_at: dict[int, float] = {}
        latencies: list[float] = []

        async def write() -> None:
            nonlocal next_id
            for _ in range(n):
                await slots.acquire()
                next_id += 1
                req.request_id = next_id
                sent_at[next_id] = time.perf_counter()
                await call.write(req)

        async def read() -> None:
            for _ in range(n):
                answer = await call.read()
                if answer.error_code:
                    raise RuntimeError(f"{answer.error_code}: {answer.error_message}")
                latencies.append(time.perf_counter() - sent_at.pop(answer.request_id))
                slots.release()

        await asyncio.gather(write(), read())
        return latencies

    await burst(min(20, total))  # warm up
    cpu0, start = cpu_seconds(pid), time.perf_counter()
    latencies = await burst(total)
    wall = time.perf_counter() - start
    cpu = (cpu_seconds(pid) - cpu0) / total
    await call.done_writing()
    if await call.code() is not grpc.StatusCode.OK:
        raise RuntimeError(f"the stream ended with {await call.code()}: {await call.details()}")
    return total / wall, latencies, cpu


async def batch_counts(stub: agent_pb2_grpc.AgentServiceStub, model: str) -> tuple[int, int]:
    """(batches, rows) the daemon has run of ``model`` so far (Status)."""
    status = await stub.Status(agent_pb2.StatusRequest(), timeout=30)
    for b in status.batching:
        if b.model == model:
            return b.batches, b.rows
    return 0, 0


async def load(
    stub: agent_pb2_grpc.AgentServiceStub,
    model: str,
    x: np.ndarray,
    concurrency: int,
    total: int,
    pid: int,
) -> tuple[float, list[float], float]:
    """(requests/s, latencies, daemon CPU seconds per request)."""
    t = common_pb2.Tensor(
        name="input",
        dtype=common_pb2.DTYPE_FLOAT32,
        shape=list(x.shape),
        data=x.astype("<f4").tobytes(),
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
    cpu0, start = cpu_seconds(pid), time.perf_counter()
    await asyncio.gather(*[worker() for _ in range(concurrency)])
    wall = time.perf_counter() - start
    return total / wall, latencies, (cpu_seconds(pid) - cpu0) / total


#: demo-gpu's forward pass on an H200 (bench/RESULTS.md): batch 1 about 14 ms, batch 32 about
#: 34 ms (943 rows/s).
GPU_SIM = {"features": demo_model.LARGE_IN, "ms_per_batch": 14.0, "ms_per_row": 0.64}


def write_gpu_sim(out: Path) -> Path:
    """The gpu-sim model: empty weights of the ``busy`` architecture and its metadata."""
    return demo_model.write_busy(out, "gpu-sim", GPU_SIM)


def busy_ceiling(batch: int, seconds: float) -> float:
    """Rows/s of the gpu-sim module called directly (it only sleeps: no placement needed)."""
    module = architectures.get("busy").build(GPU_SIM)
    x = torch.zeros(batch, demo_model.LARGE_IN)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        module(x)
        n += batch
    return n / (time.perf_counter() - start)


def resolve_device(device: str) -> str:
    """The torch device the daemons' ``--device`` will pick (for the ceiling)."""
    if device != "auto":
        return device
    import torch

    return "cuda:0" if torch.cuda.is_available() else "cpu"


async def run(
    small: bool,
    pin: bool,
    repeats: int,
    kind: str,
    device: str,
    gpu_depth: int,
    requests: int = 0,
) -> dict[str, object]:
    large = kind in ("large", "gpu", "gpu-sim")
    device = resolve_device(device)
    root = Path(tempfile.mkdtemp(prefix="p2p-bench-"))
    certs.init_ca(root / "certs", "bench")
    for name in ("b1", "b2"):
        certs.issue(root / "certs", name, Role.NODE)
    certs.issue(root / "certs", "client", Role.CLIENT)
    files = demo_model.write_all(root / "model")
    served = files["torchscript"]  # the model under test's file
    if kind == "large":
        served = demo_model.write_large(root / "model")
    elif kind == "gpu":
        served = demo_model.write_gpu(root / "model", gpu_depth)
    elif kind == "gpu-sim":
        served = write_gpu_sim(root / "model")
    model = {"demo": "demo", "large": "demo-large", "gpu": "demo-gpu", "gpu-sim": "gpu-sim"}[kind]
    serve = [
        "--device",
        device,
        "--serve",
        f"{model}={served}",
        "--serve",
        f"noop={files['noop_torchscript']}",
    ]
    client_cores, prefix, threads = placement(pin, large, device.startswith("cuda"))
    if client_cores is not None:
        os.sched_setaffinity(0, client_cores)
    threads_env = {"P2PAGENT_INFERENCE__INTRA_OP_THREADS": str(threads)} if threads else {}
    threads_env.update(NO_RATE_LIMIT)
    batched = Daemon("b1", root / "certs", root / "b1", args=serve, env=threads_env, prefix=prefix)
    unbatched = Daemon(
        "b2",
        root / "certs",
        root / "b2",
        args=serve,
        env={"P2PAGENT_INFERENCE__MAX_BATCH_SIZE": "1", **threads_env},
        prefix=prefix,
    )
    total = (60 if small else 400) if large else (200 if small else 2000)
    if kind in ("gpu", "gpu-sim"):
        total = 60 if small else 640
    total = requests or total
    # The streaming rows are cheap per request: more of them, for a steadier rate.
    stream_total = total if large else 2 * total
    rows: list[dict[str, object]] = []
    ceiling_threads = threads or max(1, len(os.sched_getaffinity(0)) - 1)
    seconds = 1.0 if small else 3.0

    def ceiling_now() -> float:
        if kind == "gpu-sim":
            return busy_ceiling(32, seconds)
        width = demo_model.LARGE_IN if large else demo_model.DEMO_IN
        return offline_ceiling(served, 32, seconds, ceiling_threads, prefix, width, device)

    ceilings = [ceiling_now()]
    x = (demo_model.large_input(1) if large else demo_model.sample_input(1)).numpy()
    noop_x = demo_model.sample_input(1).numpy()
    creds = grpc.ssl_channel_credentials(
        (root / "certs/ca.crt").read_bytes(),
        (root / "certs/client.key").read_bytes(),
        (root / "certs/client.crt").read_bytes(),
    )
    echo_address = f"127.0.0.1:{free_port()}"
    echo: subprocess.Popen[bytes] | None = None
    try:
        for d in (batched, unbatched):
            d.start()
        echo = start_echo(prefix, root / "certs", echo_address)
        results: dict[str, tuple[float, list[float], float]] = {}
        #: Rows per batch on the daemon during each stream row (Status, issue 26).
        stream_rows: dict[str, float] = {}
        targets = [("bare gRPC echo", echo_address, echo.pid)]
        targets += [(label, d.address, d.proc.pid) for label, d in  # type: ignore[union-attr]
                    (("unbatched", unbatched), ("batched", batched))]  # fmt: skip
        for label, address, pid in targets:
            async with grpc.aio.secure_channel(
                address, creds, options=channel_options("bench", 64 << 20)
            ) as ch:
                stub = agent_pb2_grpc.AgentServiceStub(ch)
                for c in (1, 32) if label == "bare gRPC echo" else (1, 8, 32):
                    use = (model, x) if label != "bare gRPC echo" else ("demo", noop_x)
                    runs = [await load(stub, *use, c, total, pid) for _ in range(repeats)]
                    results[f"{label} c={c}"] = sorted(runs, key=lambda r: r[0])[len(runs) // 2]
                if label == "bare gRPC echo":
                    runs = [
                        await stream_load(stub, "demo", noop_x, 32, stream_total, pid)
                        for _ in range(repeats)
                    ]
                    results["bare gRPC echo stream c=32"] = median_run(runs)
                if label == "batched":
                    runs = [await load(stub, "noop", noop_x, 1, total, pid) for _ in range(repeats)]
                    results["noop c=1"] = sorted(runs, key=lambda r: r[0])[len(runs) // 2]
                    for row, use in (("noop", ("noop", noop_x)), ("batched", (model, x))):
                        before = await batch_counts(stub, use[0])
                        runs = [
                            await stream_load(stub, *use, 32, stream_total, pid)
                            for _ in range(repeats)
                        ]
                        results[f"{row} stream c=32"] = median_run(runs)
                        after = await batch_counts(stub, use[0])
                        batches = max(1, after[0] - before[0])
                        stream_rows[f"{row} stream c=32"] = (after[1] - before[1]) / batches
            ceilings.append(ceiling_now())
        ceiling = statistics.median(ceilings)
        rows.append({"row": "offline torch, batch 32 (ceiling)", "rps": ceiling, "all": ceilings})
        for key, (rps, lat, cpu) in results.items():
            rows.append(
                {
                    "row": key,
                    "rps": rps,
                    "p50_ms": pct(lat, 0.5) * 1e3,
                    "p95_ms": pct(lat, 0.95) * 1e3,
                    "p99_ms": pct(lat, 0.99) * 1e3,
                    "daemon_cpu_us": cpu * 1e6,
                    **({"rows_per_batch": stream_rows[key]} if key in stream_rows else {}),
                }
            )
    finally:
        batched.kill()
        unbatched.kill()
        if echo is not None:
            echo.kill()
            echo.wait(10)
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
        "batched c=32 / bare gRPC echo c=32 (the RPC floor)": r["batched c=32"][0]
        / r["bare gRPC echo c=32"][0],
        "bare gRPC echo c=32 / offline ceiling": r["bare gRPC echo c=32"][0] / ceiling,
    }
    echo_stream = r["bare gRPC echo stream c=32"]
    targets = [
        target("noop stream c=32 / echo stream c=32 (throughput)",
               r["noop stream c=32"][0] / echo_stream[0], 0.8),
        target("noop stream c=32 / echo stream c=32 (daemon CPU per request)",
               r["noop stream c=32"][2] / echo_stream[2], 1.5, at_most=True),
        target("unary noop c=1 / unary echo c=1 (daemon CPU per request)",
               r["noop c=1"][2] / r["bare gRPC echo c=1"][2], 2.0, at_most=True),
        target(f"{model} stream c=32 / min(offline ceiling, echo stream)",
               r["batched stream c=32"][0] / min(ceiling, echo_stream[0]), 0.8),
    ]  # fmt: skip
    return {
        "model": model,
        "device": device,
        "pinned": client_cores is not None,
        "daemon_cores": prefix[-1] if prefix else "any",
        "intra_op_threads": ceiling_threads,
        "rows": rows,
        "checks": checks,
        "targets": targets,
    }


def median_run(
    runs: list[tuple[float, list[float], float]],
) -> tuple[float, list[float], float]:
    """The run of median throughput."""
    return sorted(runs, key=lambda r: r[0])[len(runs) // 2]


def target(name: str, measured: float, limit: float, at_most: bool = False) -> dict[str, object]:
    met = measured <= limit if at_most else measured >= limit
    return {"name": name, "measured": round(measured, 3), "target": limit, "met": met}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--small", action="store_true", help="CI size: a few hundred requests")
    p.add_argument("--no-pin", action="store_true", help="let client and daemons share cores")
    p.add_argument("--repeats", type=int, default=3, help="runs per row (median kept)")
    p.add_argument("--model", choices=("demo", "large", "gpu", "gpu-sim"), default="demo")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda:N (daemons and ceiling)")
    p.add_argument(
        "--gpu-depth", type=int, default=demo_model.GPU_DEPTH, help="demo-gpu's layer repeats"
    )
    p.add_argument("--requests", type=int, default=0, help="timed requests per row (0: by model)")
    p.add_argument(
        "--sim-fixed-ms",
        type=float,
        default=GPU_SIM["ms_per_batch"],
        help="gpu-sim's cost per batch (ms)",
    )
    p.add_argument(
        "--json",
        nargs="?",
        const="-",
        help="print the targets as JSON last; with FILE, also write every row there",
    )
    args = p.parse_args()
    GPU_SIM["ms_per_batch"] = args.sim_fixed_ms
    repeats = 1 if args.small else args.repeats
    out = asyncio.run(
        run(
            args.small,
            not args.no_pin,
            repeats,
            args.model,
            args.device,
            args.gpu_depth,
            args.requests,
        )
    )
    with human(args.json):
        print(
            f"model {out['model']} on {out['device']}, "
            f"pinned {out['pinned']} (daemon cores {out['daemon_cores']}), intra-op threads "
            f"{out['intra_op_threads']}, median of {repeats}"
        )
        print(
            f"{'row':38} {'req/s':>9} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'cpu us':>8} "
            f"{'rows/batch':>10}"
        )
        nan = float("nan")
        for row in out["rows"]:  # type: ignore[attr-defined]
            print(
                f"{row['row']:38} {row['rps']:9.0f} {row.get('p50_ms', nan):8.2f} "
                f"{row.get('p95_ms', nan):8.2f} {row.get('p99_ms', nan):8.2f} "
                f"{row.get('daemon_cpu_us', nan):8.0f} {row.get('rows_per_batch', nan):10.2f}"
            )
        print()
        for name, value in out["checks"].items():  # type: ignore[attr-defined]
            print(f"{name:52} {value:8.2f}")
        print()
        for t in out["targets"]:  # type: ignore[attr-defined]
            limit = f"{'<=' if 'CPU' in t['name'] else '>='} {t['target']}"
            verdict = "met" if t["met"] else "NOT met"
            print(f"{t['name']:64} {t['measured']:6.2f}x  {limit:8} {verdict}")
    if args.json:
        if args.json != "-":
            Path(args.json).write_text(json.dumps(out, indent=2))
        # On stdout, alone (``-``): the whole run with its targets; after the tables (FILE):
        # the targets line.
        print(json.dumps(out if args.json == "-" else {"targets": out["targets"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
