"""Swarm pull: four pullers of one upload-capped publisher, against one puller alone.

``python -m bench.models_swarm [--mib 256] [--cap-mb 50] [--pullers 4] [--rounds 2]``

Real daemons on loopback: n1 publishes (``replicas: 1``, so nobody copies it unasked) with its
upload capped at ``--cap-mb`` MB/s (``models.upload_rate_bytes_per_s``, n1 only). Per round:

* **single**: n2 pulls a fresh model alone; time T1, bytes n1 sent U1;
* **swarm**: another fresh model, pulled by n2..n(1+P) at once (``PullModel`` from P client
  threads); time T until the last one answers, bytes n1 sent U.

Bytes n1 uploaded are counted where they land: each puller logs, per holder, every byte of
chunk data that arrived (``bytes_from`` in its "pulled" log line: accepted chunks, endgame
duplicates and corrupt ones alike). Chunks n1 sent into a stream the puller had already
cancelled are not counted (at most a few in flight per stream).
Targets: T <= 1.5 x T1 and U <= 1.5 x the model size (4 pullers served directly would be 4x).
"""

from __future__ import annotations

import argparse
import ast
import re
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench._targets import at_most, report
from bench.models_transfer import _all_alive, make_model, upload
from p2pagent._proto import agent_pb2
from p2pagent.testing.cluster import Cluster

SETTLE_S = 120.0


def pull_line(c: Cluster, node: str, name: str) -> str:
    """The summary ``node`` logged when its pull of ``name`` finished."""
    marker = f"models: pulled {name} ("
    for line in reversed(c.nodes[node].log_path.read_text(errors="replace").splitlines()):
        if marker in line:
            return line.split(marker, 1)[1]
    raise RuntimeError(f"{node} logged no finished pull of {name}")


def bytes_from(c: Cluster, node: str, name: str, holder: str) -> int:
    """Chunk bytes ``node``'s pull of ``name`` received from ``holder`` (from its log)."""
    line = pull_line(c, node, name)
    found = re.search(r"bytes_from=(\{.*?\})", line)
    if found is None:
        raise RuntimeError(f"{node}'s pull line has no bytes_from: {line}")
    return int(ast.literal_eval(found.group(1)).get(holder, 0))


def publish(c: Cluster, tmp: Path, name: str, mib: int, seed: int, pullers: list[str]) -> int:
    model = tmp / f"{name}.safetensors"
    make_model(model, mib, seed)
    try:
        header_chunk = 1 << 20
        v = (
            c.agent("n1", "publisher")
            .PublishModel(upload(model, name, header_chunk), timeout=900)
            .version
        )
    finally:
        model.unlink()
    for node in pullers:
        c.wait_for(
            lambda node=node: (
                c.agent(node)
                .ListModels(agent_pb2.ListModelsRequest(name=name), timeout=10)
                .versions
            ),
            SETTLE_S,
            f"registry on {node}",
        )
    return int(v.size)


def pull_all(c: Cluster, name: str, nodes: list[str]) -> tuple[float, int]:
    """Seconds until every node's PullModel answered, and bytes they got from n1."""

    def pull(node: str) -> None:
        got = c.agent(node).PullModel(agent_pb2.PullModelRequest(name=name), timeout=900).version
        assert node in got.holders, (node, got.holders)

    start = time.perf_counter()
    with ThreadPoolExecutor(len(nodes)) as pool:
        list(pool.map(pull, nodes))
    seconds = time.perf_counter() - start
    return seconds, sum(bytes_from(c, node, name, "n1") for node in nodes)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--mib", type=int, default=256, help="model size, MiB")
    p.add_argument("--cap-mb", type=float, default=50.0, help="publisher upload cap, MB/s")
    p.add_argument("--pullers", type=int, default=4)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--json", action="store_true", help="print the targets as JSON")
    p.add_argument("--verbose", action="store_true", help="print each puller's pull summary")
    args = p.parse_args(argv)

    # With --json, stdout carries one JSON document; progress and tables go to stderr.
    info = sys.stderr if args.json else sys.stdout
    size = 1 + args.pullers
    names = [f"n{i}" for i in range(1, size + 1)]
    swarm_nodes = names[1:]
    single_t: list[float] = []
    single_u: list[float] = []
    swarm_t: list[float] = []
    swarm_u: list[float] = []
    with (
        tempfile.TemporaryDirectory(prefix="bench-swarm-") as tmp_s,
        Cluster(Path(tmp_s), size, use_netns=False) as c,
    ):
        tmp = Path(tmp_s)
        cap = str(int(args.cap_mb * 1e6))
        c.nodes["n1"].env["P2PAGENT_MODELS__UPLOAD_RATE_BYTES_PER_S"] = cap
        c.start()
        c.wait_for(lambda: _all_alive(c, names), SETTLE_S, "all alive")
        for r in range(args.rounds):
            one = publish(c, tmp, f"single{r}", args.mib, 100 + r, ["n2"])
            t1, u1 = pull_all(c, f"single{r}", ["n2"])
            many = publish(c, tmp, f"swarm{r}", args.mib, 200 + r, swarm_nodes)
            t, u = pull_all(c, f"swarm{r}", swarm_nodes)
            single_t.append(t1)
            single_u.append(u1 / one)
            swarm_t.append(t)
            swarm_u.append(u / many)
            if args.verbose:
                for node in swarm_nodes:
                    print(f"  {node}: {pull_line(c, node, f'swarm{r}')}", file=info)
            print(f"round {r}: single {t1:.2f}s (n1 sent {u1 / one:.2f}x), "
                  f"{args.pullers} pullers {t:.2f}s ({t / t1:.2f}x, n1 sent {u / many:.2f}x)",
                  flush=True, file=info)  # fmt: skip
    med = statistics.median
    ratio_t = med(b / a for a, b in zip(single_t, swarm_t, strict=True))
    ratio_u = med(swarm_u)
    print(file=info)
    print(f"model {args.mib} MiB in 1 MiB chunks, publisher capped at {args.cap_mb:.0f} MB/s, "
          f"{args.pullers} pullers, {args.rounds} rounds (medians)", file=info)  # fmt: skip
    print("| row | seconds | publisher sent (x model size) |", file=info)
    print("|---|---:|---:|", file=info)
    print(f"| 1 puller | {med(single_t):.2f} | {med(single_u):.2f} |", file=info)
    print(f"| {args.pullers} pullers at once | {med(swarm_t):.2f} | {ratio_u:.2f} |", file=info)
    print(file=info)
    report(
        [
            at_most(f"all {args.pullers} pullers done vs one puller's time (x)", ratio_t, 1.5),
            at_most("publisher uploads (x the model size)", ratio_u, 1.5),
        ],
        args.json,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
