"""The federated digits run: every training node's loop in a thread of this process, each with
its own shard (non-IID: two or three classes), talking only to its own daemon, plus the
baselines it is judged against (one model trained on the union; each node alone).

Used by ``bench/training.py``, the cluster tests and ``python -m p2pagent.training.demo``.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import grpc
import numpy as np
import numpy.typing as npt

from p2pagent._proto import agent_pb2_grpc
from p2pagent.training import digits
from p2pagent.training.api import AverageResult, MeshAverager
from p2pagent.training.publish import PublishPlan

#: Status codes that mean "the daemon is not there now".
OUTAGE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
OUTAGE_PAUSE_S = 0.5
#: Local steps a loop may take per round of the run before it gives up (outages included).
MAX_LOOPS_PER_ROUND = 3


@dataclass(frozen=True)
class DigitsPlan:
    rounds: int = 200
    #: Epochs of local training (over the node's own shard) between two averaging rounds.
    local_epochs: float = 0.2
    batch: int = 8
    lr: float = 0.1
    seed: int = 1
    #: Publish the averaged model every this many rounds (0: never).
    publish_every: int = 0
    model: str = "digits"
    #: The averaging run's name. Its rounds are numbered from 0 and a loop ends after the
    #: run's round ``rounds - 1``, so each experiment on one mesh needs a run of its own.
    run: str = "digits"
    #: Extra seconds one node (``slow_node``) sleeps per local period: a straggler.
    slow_s: float = 0.0
    slow_node: str = ""

    @property
    def epochs(self) -> float:
        return self.rounds * self.local_epochs


@dataclass
class NodeRun:
    name: str
    classes: list[int]
    samples: int
    results: list[AverageResult] = field(default_factory=list)
    published: list[str] = field(default_factory=list)
    params: dict[str, npt.NDArray[np.float32]] = field(default_factory=dict)
    error: str = ""
    publish_error: str = ""
    #: Rounds this node's daemon could not be reached in (it trained on alone).
    outage_rounds: list[int] = field(default_factory=list)


def metadata() -> dict[str, object]:
    from p2pagent.inference import architectures

    return architectures.get("mlp").spec(digits.arch_config()).to_dict()


def federated(
    stubs: Mapping[str, agent_pb2_grpc.AgentServiceStub],
    plan: DigitsPlan,
    timeout: float = 300.0,
    on_round: Callable[[str, int], None] | None = None,
) -> dict[str, NodeRun]:
    """Runs every node's loop; returns what each ended with. ``on_round(node, round)`` is
    called after each of a loop's rounds (the fault benchmark kills a daemon from it). A loop
    whose daemon is unreachable keeps training locally and averages again once it is back."""
    import torch

    torch.set_num_threads(1)
    train, _ = digits.load(plan.seed)
    names = sorted(stubs)
    shards = dict(zip(names, digits.split_non_iid(train, len(names)), strict=True))
    runs = {n: NodeRun(n, shards[n].classes, len(shards[n].y)) for n in names}
    publish = (
        PublishPlan(plan.model, plan.publish_every, metadata()) if plan.publish_every else None
    )

    def loop(name: str) -> None:
        run = runs[name]
        mesh: MeshAverager | None = None
        try:
            model = digits.make_model(plan.seed)
            mesh = MeshAverager(
                stubs[name], plan.run, every=1, min_members=len(names), timeout=timeout,
                publish=publish,
            )  # fmt: skip
            # The run's round numbers, not this loop's count, say when the run is over: a
            # loop that lost rounds to an outage must not stop early while the others still
            # average (its classes would fade from their model).
            last_round, r = -1, 0
            while last_round + 1 < plan.rounds:
                if r >= MAX_LOOPS_PER_ROUND * plan.rounds:
                    raise RuntimeError(
                        f"{plan.rounds} rounds not reached after {r} local steps "
                        f"(the run's last round here: {last_round})"
                    )
                digits.train_epochs(
                    model, shards[name], plan.local_epochs, plan.seed * 1000 + r,
                    lr=plan.lr, batch=plan.batch,
                )  # fmt: skip
                r += 1
                if plan.slow_s and name == plan.slow_node:
                    time.sleep(plan.slow_s)
                try:
                    result = mesh.step(digits.params_of(model), len(shards[name].y))
                except grpc.RpcError as e:
                    if e.code() not in OUTAGE:
                        raise
                    # The daemon died (or restarts): this process and its data are fine;
                    # train on, and average again once the daemon answers.
                    run.outage_rounds.append(last_round + 1)
                    time.sleep(OUTAGE_PAUSE_S)
                    continue
                assert result is not None
                digits.load_params(model, result.params)
                last_round = max(last_round, result.round_no)
                if on_round is not None:
                    on_round(name, result.round_no)
            run.results = mesh.rounds
            run.params = digits.params_of(model)
        except Exception as e:  # reported in the result
            run.error = f"{type(e).__name__}: {e}"
        try:
            run.published = [v.manifest_id for v in mesh.close()] if mesh is not None else []
        except Exception as e:  # the training itself went on; reported beside it
            run.publish_error = f"{type(e).__name__}: {e}"

    threads = [threading.Thread(target=loop, args=(n,), name=f"train-{n}") for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return runs


def centralized(plan: DigitsPlan, nodes: int) -> float:
    """Test accuracy of the same model, optimizer and epochs on the union of the shards."""
    train, test = digits.load(plan.seed)
    model = digits.make_model(plan.seed)
    union = digits.union(digits.split_non_iid(train, nodes))
    digits.train_epochs(model, union, plan.epochs, plan.seed, lr=plan.lr, batch=plan.batch * nodes)
    return digits.accuracy(model, test)


def alone(plan: DigitsPlan, nodes: int) -> list[float]:
    """Test accuracy of each node's shard trained alone for as many epochs."""
    train, test = digits.load(plan.seed)
    out = []
    for i, shard in enumerate(digits.split_non_iid(train, nodes)):
        model = digits.make_model(plan.seed)
        digits.train_epochs(model, shard, plan.epochs, plan.seed + i, lr=plan.lr, batch=plan.batch)
        out.append(digits.accuracy(model, test))
    return out


def accuracy_of(params: Mapping[str, npt.NDArray[np.generic]], seed: int) -> float:
    _, test = digits.load(seed)
    model = digits.make_model(seed)
    digits.load_params(model, dict(params))
    return digits.accuracy(model, test)


def held_out_inputs(seed: int, rows: int) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    _, test = digits.load(seed)
    return test.x[:rows], test.y[:rows]


def report(
    stubs: Mapping[str, agent_pb2_grpc.AgentServiceStub], plan: DigitsPlan
) -> dict[str, object]:
    runs = federated(stubs, plan)
    return {
        "rounds": plan.rounds,
        "classes": {n: r.classes for n, r in runs.items()},
        "federated_accuracy": {
            n: accuracy_of(r.params, plan.seed) if r.params else r.error for n, r in runs.items()
        },
        "centralized_accuracy": centralized(plan, len(stubs)),
        "alone_accuracy": alone(plan, len(stubs)),
        "published": {n: r.published for n, r in runs.items() if r.published},
        "publish_errors": {n: r.publish_error for n, r in runs.items() if r.publish_error},
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m p2pagent.training.demo --local 4``: starts four daemons on loopback (real
    processes, certificates made in a temporary folder), trains the digits MLP over them and
    prints the averaged model's accuracy beside the baselines. ``--certs DIR --nodes
    n1=HOST:PORT,...`` runs the same loops against daemons already running (each loop uses
    that node's certificate)."""
    from p2pagent.identity import material as tls
    from p2pagent.transport.channels import channel_options

    p = argparse.ArgumentParser(prog="python -m p2pagent.training.demo", description=main.__doc__)
    p.add_argument("--local", type=int, default=0, help="start this many daemons here (2-10)")
    p.add_argument("--certs", help="folder with ca.crt and each NODE.crt/.key")
    p.add_argument("--nodes", help="NAME=HOST:PORT,... of the training nodes")
    p.add_argument("--rounds", type=int, default=200)
    p.add_argument("--publish-every", type=int, default=50)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    plan = DigitsPlan(
        rounds=args.rounds, local_epochs=40 / max(args.rounds, 1), publish_every=args.publish_every
    )
    if args.local:
        if not 2 <= args.local <= digits.CLASSES:
            p.error("--local takes 2 to 10 daemons")
        import tempfile
        from pathlib import Path

        from p2pagent.testing.cluster import Cluster

        with (
            tempfile.TemporaryDirectory(prefix="p2pagent-train-demo-") as tmp,
            Cluster(Path(tmp), args.local, use_netns=False) as c,
        ):
            c.start()
            names = sorted(c.nodes)
            c.wait_for(
                lambda: all(
                    {n for n, (s, _) in c.members(o).items() if s == "alive"} >= set(names)
                    for o in names
                ),
                120,
                "every daemon sees the others",
            )
            doc = report({n: c.agent(n, n) for n in names}, plan)
    else:
        if not args.certs or not args.nodes:
            p.error("give --local N, or --certs DIR and --nodes n1=HOST:PORT,...")
        from pathlib import Path

        stubs = {}
        for entry in args.nodes.split(","):
            name, _, address = entry.partition("=")
            m = tls.load(tls.TLSPaths.in_dir(Path(args.certs), name))
            creds = grpc.ssl_channel_credentials(m.ca_pem, m.key_pem, m.cert_pem)
            options = channel_options(m.cluster, 64 << 20)
            stubs[name] = agent_pb2_grpc.AgentServiceStub(
                grpc.secure_channel(address, creds, options)
            )
        doc = report(stubs, plan)
    print(json.dumps(doc, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
