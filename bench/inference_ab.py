"""Alternated A/B of the request path: daemon CPU per request of each source tree, same run.

    python -m bench.inference_ab TREE[,TREE...] [--rounds 4] [--stream 2000] [--unary 500]
                                 [--json [FILE]]

One daemon per tree (each started with ``PYTHONPATH=TREE``; ``Daemon`` runs ``python -P``,
so the tree and not the current directory is imported) and the bare grpc.aio echo,
placed as ``bench.inference_grpc`` places them (client on the first core, daemons on the
others). Each round measures, for each, ``--stream`` no-op requests on one InferStream
with 32 in flight and ``--unary`` unary no-op calls at concurrency 1; rounds alternate the
trees' order. Prints per round, then the medians: daemon CPU us per request (from /proc;
steadier than latency on a shared machine), stream requests/s and rows per batch. Compare the
trees with each other and with the echo of the same run only. Targets, per tree (issue 26,
as ``bench.inference_grpc`` judges them): streamed no-op CPU per request <= 1.5x the echo
stream's, unary no-op CPU <= 2.0x the unary echo's. With two trees or more it also prints
each later tree against the first as the median of the rounds' own ratios (``paired``):
steadier than the ratio of the medians while other work loads the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import grpc

from bench._proc import NO_RATE_LIMIT
from bench._targets import Target, add_json_flag, at_most, emit, human, print_table
from bench.inference_grpc import batch_counts, load, placement, start_echo, stream_load
from p2pagent._proto import agent_pb2_grpc
from p2pagent.identity import certs
from p2pagent.identity.spiffe import Role
from p2pagent.inference import demo_model
from p2pagent.testing.daemon import Daemon, free_port
from p2pagent.transport.channels import channel_options


async def run(
    trees: list[str], rounds: int, n_stream: int, n_unary: int
) -> tuple[dict[str, dict[str, float | None]], dict[str, dict[str, float | None]]]:
    root = Path(tempfile.mkdtemp(prefix="p2p-ab-"))
    certs.init_ca(root / "certs", "bench")
    names = [f"b{i + 1}" for i in range(len(trees))]
    for name in names:
        certs.issue(root / "certs", name, Role.NODE)
    certs.issue(root / "certs", "client", Role.CLIENT)
    files = demo_model.write_all(root / "model")
    client, prefix, threads = placement(True, False, False)
    if client is not None:
        os.sched_setaffinity(0, client)
    env = {"P2PAGENT_INFERENCE__INTRA_OP_THREADS": str(max(1, threads)), **NO_RATE_LIMIT}
    serve = ["--device", "cpu", "--serve", f"noop={files['noop_torchscript']}"]
    daemons = [
        Daemon(n, root / "certs", root / n, args=serve, env={**env, "PYTHONPATH": t}, prefix=prefix)
        for n, t in zip(names, trees)
    ]
    for d in daemons:
        d.start()
    echo_address = f"127.0.0.1:{free_port()}"
    echo = start_echo(prefix, root / "certs", echo_address)
    creds = grpc.ssl_channel_credentials(
        (root / "certs/ca.crt").read_bytes(),
        (root / "certs/client.key").read_bytes(),
        (root / "certs/client.crt").read_bytes(),
    )
    x = demo_model.sample_input(1).numpy()
    labels = ["echo", *trees]
    seen: dict[str, dict[str, list[float]]] = {
        k: {"stream_cpu_us": [], "stream_rps": [], "unary_cpu_us": [], "rows_per_batch": []}
        for k in labels
    }
    pids = [echo.pid, *(d.proc.pid for d in daemons if d.proc is not None)]
    addresses = [echo_address, *(d.address for d in daemons)]
    targets = list(zip(labels, addresses, pids))
    try:
        for r in range(rounds):
            order = targets if r % 2 == 0 else [targets[0], *targets[:0:-1]]
            for label, address, pid in order:
                async with grpc.aio.secure_channel(
                    address, creds, options=channel_options("bench", 64 << 20)
                ) as ch:
                    stub = agent_pb2_grpc.AgentServiceStub(ch)
                    model = "demo" if label == "echo" else "noop"  # the echo ignores the name
                    before = await batch_counts(stub, model) if label != "echo" else (0, 0)
                    rps, _, cpu = await stream_load(stub, model, x, 32, n_stream, pid)
                    if label != "echo":
                        after = await batch_counts(stub, model)
                        rows = (after[1] - before[1]) / max(1, after[0] - before[0])
                        seen[label]["rows_per_batch"].append(rows)
                    seen[label]["stream_cpu_us"].append(cpu * 1e6)
                    seen[label]["stream_rps"].append(rps)
                    if n_unary:
                        _, _, unary_cpu = await load(stub, model, x, 1, n_unary, pid)
                        seen[label]["unary_cpu_us"].append(unary_cpu * 1e6)
            line = "  ".join(
                f"{k}: stream {v['stream_cpu_us'][-1]:.0f} us {v['stream_rps'][-1]:.0f}/s"
                + (f" unary {v['unary_cpu_us'][-1]:.0f} us" if v["unary_cpu_us"] else "")
                for k, v in seen.items()
            )
            print(f"round {r}: {line}", file=sys.stderr, flush=True)
    finally:
        for d in daemons:
            d.kill()
        echo.kill()
        echo.wait(10)
    medians = {
        k: {name: statistics.median(v) if v else None for name, v in rows.items()}
        for k, rows in seen.items()
    }
    return medians, paired_ratios(seen, trees)


#: What ``paired_ratios`` compares between trees.
PAIRED = ("stream_cpu_us", "stream_rps", "unary_cpu_us")


def paired_ratios(
    seen: dict[str, dict[str, list[float]]], trees: list[str]
) -> dict[str, dict[str, float | None]]:
    """Each later tree against the first, round by round: the median over rounds of (its
    value / the first tree's in the same round). On a shared machine the load moves each
    round's numbers together; the ratio of the same round's pair moves less than the ratio
    of the medians."""
    base = seen[trees[0]]
    out: dict[str, dict[str, float | None]] = {}
    for tree in trees[1:]:
        row: dict[str, float | None] = {}
        for key in PAIRED:
            pairs = [m / b for m, b in zip(seen[tree][key], base[key]) if b]
            row[key] = round(statistics.median(pairs), 3) if pairs else None
        out[tree] = row
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("trees", help="comma-separated source trees (each a PYTHONPATH)")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--stream", type=int, default=2000, help="streamed requests per row")
    p.add_argument("--unary", type=int, default=500, help="unary requests per row (0: none)")
    add_json_flag(p)
    a = p.parse_args()
    if min(a.rounds, a.stream) <= 0 or a.unary < 0:
        p.error("--rounds and --stream must be positive, --unary at least 0")
    trees = [str(Path(t).resolve()) for t in a.trees.split(",")]
    with human(a.json):
        medians, paired = asyncio.run(run(trees, a.rounds, a.stream, a.unary))
        targets = ratio_targets(medians, trees)
        print(json.dumps(medians, indent=1))
        if paired:
            print(f"against {trees[0]}, median of each round's ratio:")
            print(json.dumps(paired, indent=1))
        print_table(targets)
    emit(a.json, targets, medians=medians, paired=paired)
    return 0


def ratio_targets(medians: dict[str, dict[str, float | None]], trees: list[str]) -> list[Target]:
    """Each tree's CPU per request against the echo's of the same run."""
    echo = medians["echo"]
    out: list[Target] = []
    for tree in trees:
        row = medians[tree]
        for key, bound, what in (
            ("stream_cpu_us", 1.5, "streamed no-op CPU / echo stream's"),
            ("unary_cpu_us", 2.0, "unary no-op CPU / unary echo's"),
        ):
            mine, floor = row[key], echo[key]
            ratio = mine / floor if mine is not None and floor else None
            out.append(at_most(f"{tree}: {what}", ratio, bound))
    return out


if __name__ == "__main__":
    sys.exit(main())
