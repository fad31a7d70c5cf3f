"""The key-isolated model worker against the daemon's own engine, in the same run.

    python -m bench.inference_isolation [--rounds R] [--noop-requests N] [--requests M]
                                        [--model demo|large] [--small] [--no-pin]
                                        [--json [FILE]]

Three daemons serve the same TorchScript files: one with ``inference.isolate_code_models`` on
(the default: the models run in the confined worker process, tensors through shared memory;
two batches in the worker at a time, ``inference.worker_pipeline_depth`` auto), one the same
with ``worker_pipeline_depth`` 1 (one batch at a time: what the second slot does here, in the
same run; it was the CPU's default until session 18), and one with isolation off (the
models run in the daemon's engine, as before issue 21). Each round measures, on each, a no-op
model's Infer latency at concurrency 1 and the demo model's batched throughput at
concurrency 32; the daemons take turns going first from round to round, so load from
elsewhere on a shared machine falls on all alike. Reported: the median over rounds of each
variant, and the median of the per-round ratios (the targets: isolated against in-process).
The c=32 row also gives the rows per batch the daemon formed (Status, around the timed
requests): where the worker's cost is per batch, fewer rows per batch pay it more often.

Placement as in bench/inference_grpc.py: the client is pinned to the first core and both
daemons to the others (the worker inherits its daemon's cores); each row also gives the
CPU time per request of the daemon and its worker together.

``--model large`` measures the c=32 row on ``demo-large`` (bench/inference_grpc.py), whose
forward pass dominates a request, so batches form and the worker's cost per batch is shared
by their rows; with ``demo`` the RPC around a request dominates: the in-process engine forms
about 1.2 rows per batch there, and the isolated one lets a batch for its idle worker settle
while requests overlap (batching rule 3), 2-3 rows per batch (1.0 before it did).

Targets (issue 21): isolated no-op p50 at most +10%; batched c=32 throughput at most -5%.
``--json`` prints one object on stdout, ``{"targets": [...], "samples": ..., ...}`` (the
tables go to stderr); ``--json FILE`` writes it to FILE and prints the tables as before.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
from pathlib import Path

import grpc

from bench._proc import cpu_seconds
from bench._targets import Target, add_json_flag, at_least, at_most, emit, human, print_table
from bench.inference_grpc import batch_counts, load, pct, placement
from p2pagent._proto import agent_pb2_grpc
from p2pagent.identity import certs
from p2pagent.identity.spiffe import Role
from p2pagent.inference import demo_model
from p2pagent.testing.daemon import Daemon
from p2pagent.transport.channels import channel_options

VARIANTS = ("in-process", "isolated", "isolated-depth1")
COLUMNS = (
    "noop_p50_ms", "noop_cpu_us", "c32_rps", "c32_p50_ms", "c32_cpu_us", "c32_rows_per_batch",
)  # fmt: skip


def worker_pids(daemon_pid: int) -> list[int]:
    """The daemon's model worker processes (children running worker_main)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == daemon_pid and b"worker_main" in cmdline:
            out.append(int(entry))
    return out


async def run(
    rounds: int, noop_requests: int, requests: int, pin: bool, kind: str
) -> tuple[dict[str, object], list[Target]]:
    """The run's numbers and its targets."""
    root = Path(tempfile.mkdtemp(prefix="p2p-bench-iso-"))
    certs.init_ca(root / "certs", "bench")
    for name in ("i1", "i2", "i3"):
        certs.issue(root / "certs", name, Role.NODE)
    certs.issue(root / "certs", "client", Role.CLIENT)
    files = demo_model.write_all(root / "model")
    large = kind == "large"
    served = demo_model.write_large(root / "model") if large else files["torchscript"]
    serve = [
        "--device", "cpu",
        "--serve", f"demo={served}",
        "--serve", f"noop={files['noop_torchscript']}",
    ]  # fmt: skip
    client_cores, prefix, threads = placement(pin, large, False)
    if client_cores is not None:
        os.sched_setaffinity(0, client_cores)
    env = {"P2PAGENT_INFERENCE__INTRA_OP_THREADS": str(threads)} if threads else {}
    daemons = {
        "in-process": Daemon(
            "i1",
            root / "certs",
            root / "i1",
            args=serve,
            env={**env, "P2PAGENT_INFERENCE__ISOLATE_CODE_MODELS": "false"},
            prefix=prefix,
        ),
        "isolated": Daemon("i2", root / "certs", root / "i2", args=serve, env=env, prefix=prefix),
        "isolated-depth1": Daemon(
            "i3",
            root / "certs",
            root / "i3",
            args=serve,
            env={**env, "P2PAGENT_INFERENCE__WORKER_PIPELINE_DEPTH": "1"},
            prefix=prefix,
        ),
    }
    creds = grpc.ssl_channel_credentials(
        (root / "certs/ca.crt").read_bytes(),
        (root / "certs/client.key").read_bytes(),
        (root / "certs/client.crt").read_bytes(),
    )
    x = demo_model.sample_input(1).numpy()
    x_batched = (demo_model.large_input(1) if large else demo_model.sample_input(1)).numpy()
    samples: dict[str, dict[str, list[float]]] = {v: {k: [] for k in COLUMNS} for v in VARIANTS}
    try:
        for d in daemons.values():
            d.start()
        channels = {
            v: grpc.aio.secure_channel(d.address, creds, options=channel_options("bench", 64 << 20))
            for v, d in daemons.items()
        }
        stubs = {v: agent_pb2_grpc.AgentServiceStub(ch) for v, ch in channels.items()}
        for v in VARIANTS:  # models loaded, the worker started: none of that is timed
            for model, data in (("noop", x), ("demo", x_batched)):
                await load(stubs[v], model, data, 4, 40, daemons[v].proc.pid)  # type: ignore[union-attr]
        for r in range(rounds):
            order = VARIANTS[r % 3 :] + VARIANTS[: r % 3]
            for v in order:
                pid = daemons[v].proc.pid  # type: ignore[union-attr]
                workers = worker_pids(pid) if v != "in-process" else []

                def cpu(pid: int = pid, workers: list[int] = workers) -> float:
                    return cpu_seconds(pid) + sum(cpu_seconds(w) for w in workers)

                c0 = cpu()
                _, lat, _ = await load(stubs[v], "noop", x, 1, noop_requests, pid)
                samples[v]["noop_cpu_us"].append((cpu() - c0) / (noop_requests + 20) * 1e6)
                samples[v]["noop_p50_ms"].append(pct(lat, 0.5) * 1e3)
                workers = worker_pids(pid) if v != "in-process" else []
                b0 = await batch_counts(stubs[v], "demo")
                c0 = cpu(pid, workers)
                rps, lat, _ = await load(stubs[v], "demo", x_batched, 32, requests, pid)
                samples[v]["c32_cpu_us"].append((cpu(pid, workers) - c0) / (requests + 20) * 1e6)
                b1 = await batch_counts(stubs[v], "demo")
                samples[v]["c32_rows_per_batch"].append((b1[1] - b0[1]) / max(1, b1[0] - b0[0]))
                samples[v]["c32_rps"].append(rps)
                samples[v]["c32_p50_ms"].append(pct(lat, 0.5) * 1e3)
        for ch in channels.values():
            await ch.close()
        iso_log = daemons["isolated"].log_path.read_text()
    finally:
        for d in daemons.values():
            d.kill()
    noop_ratios = [
        i / p
        for i, p in zip(samples["isolated"]["noop_p50_ms"], samples["in-process"]["noop_p50_ms"])
    ]
    rps_ratios = [
        i / p for i, p in zip(samples["isolated"]["c32_rps"], samples["in-process"]["c32_rps"])
    ]
    depth1 = samples["isolated-depth1"]
    depth1_ratios = {
        key: [d / i for d, i in zip(depth1[key], samples["isolated"][key])]
        for key in ("noop_p50_ms", "c32_rps")
    }
    noop_ratio, rps_ratio = statistics.median(noop_ratios), statistics.median(rps_ratios)
    started = [line for line in iso_log.splitlines() if "model worker started" in line]
    details: dict[str, object] = {
        "model": "demo-large" if large else "demo",
        "rounds": rounds,
        "noop_requests": noop_requests,
        "requests": requests,
        "pinned": client_cores is not None,
        "daemon_cores": prefix[-1] if prefix else "any",
        "worker": started[-1].split("model worker started: ", 1)[-1] if started else "not started",
        "samples": samples,
        "medians": {v: {k: statistics.median(s) for k, s in m.items()} for v, m in samples.items()},
        "ratios": {
            "noop_p50": noop_ratios,
            "c32_rps": rps_ratios,
            "noop_p50_depth1_vs_default": depth1_ratios["noop_p50_ms"],
            "c32_rps_depth1_vs_default": depth1_ratios["c32_rps"],
        },
    }
    return details, [
        at_most("isolated / in-process no-op Infer p50 (median of rounds)", noop_ratio, 1.10),
        at_least(
            "isolated / in-process batched c=32 throughput (median of rounds)", rps_ratio, 0.95
        ),
    ]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rounds", type=int, default=10, help="alternating rounds (median kept)")
    p.add_argument("--noop-requests", type=int, default=1000, help="no-op requests per round")
    p.add_argument("--requests", type=int, default=3000, help="c=32 requests per round")
    p.add_argument("--model", choices=("demo", "large"), default="demo", help="c=32 model")
    p.add_argument("--small", action="store_true", help="CI size: two short rounds")
    p.add_argument("--no-pin", action="store_true", help="let client and daemons share cores")
    add_json_flag(p)
    args = p.parse_args()
    if min(args.rounds, args.noop_requests, args.requests) <= 0:
        p.error("--rounds, --noop-requests and --requests must be positive")
    if args.small:
        args.rounds, args.noop_requests, args.requests = 2, 100, 320
    if args.model == "large" and not args.small:
        args.requests = min(args.requests, 600)
    with human(args.json):
        out, targets = asyncio.run(
            run(args.rounds, args.noop_requests, args.requests, not args.no_pin, args.model)
        )
        print_tables(out, targets)
    emit(args.json, targets, **out)
    return 0


def print_tables(out: dict[str, object], targets: list[Target]) -> None:
    print(
        f"c=32 model {out['model']}, {out['rounds']} rounds, pinned {out['pinned']} "
        f"(daemon cores {out['daemon_cores']}); "
        f"worker: {out['worker']}"
    )
    print(f"{'variant':16} {'noop p50 ms':>12} {'noop cpu us':>12} {'c32 req/s':>10} "
          f"{'c32 p50 ms':>11} {'c32 cpu us':>11} {'c32 rows/batch':>15}")  # fmt: skip
    for v, m in out["medians"].items():  # type: ignore[attr-defined]
        print(
            f"{v:16} {m['noop_p50_ms']:12.3f} {m['noop_cpu_us']:12.0f} {m['c32_rps']:10.0f} "
            f"{m['c32_p50_ms']:11.2f} {m['c32_cpu_us']:11.0f} {m['c32_rows_per_batch']:15.2f}"
        )
    print("per-round ratios:", json.dumps(out["ratios"]))
    print_table(targets)


if __name__ == "__main__":
    raise SystemExit(main())
