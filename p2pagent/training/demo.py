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
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from p2pagent._proto import agent_pb2_grpc
from p2pagent.training import digits
from p2pagent.training.api import AverageResult, MeshAverager
from p2pagent.training.publish import PublishPlan


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


def metadata() -> dict[str, object]:
    from p2pagent.inference import architectures

    return architectures.get("mlp").spec(digits.arch_config()).to_dict()


def federated(
    stubs: Mapping[str, agent_pb2_grpc.AgentStub], plan: DigitsPlan, timeout: float = 300.0
) -> dict[str, NodeRun]:
    """Runs every node's loop; returns what each ended with."""
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
        try:
            model = digits.make_model(plan.seed)
            mesh = MeshAverager(
                stubs[name], "digits", every=1, min_members=len(names), timeout=timeout,
                publish=publish,
            )  # fmt: skip
            for r in range(plan.rounds):
                digits.train_epochs(
                    model, shards[name], plan.local_epochs, plan.seed * 1000 + r,
                    lr=plan.lr, batch=plan.batch,
                )  # fmt: skip
                if plan.slow_s and name == plan.slow_node:
                    time.sleep(plan.slow_s)
                result = mesh.step(digits.params_of(model), len(shards[name].y))
                assert result is not None
                digits.load_params(model, result.params)
            run.results = mesh.rounds
            run.published = [v.manifest_id for v in mesh.close()]
            run.params = digits.params_of(model)
        except Exception as e:  # reported in the result
            run.error = f"{type(e).__name__}: {e}"

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


def main(argv: list[str] | None = None) -> int:
    """``python -m p2pagent.training.demo --certs DIR --nodes n1=HOST:PORT,...``: runs the
    federated digits loop against running daemons (each loop uses that node's certificate)."""
    import grpc

    from p2pagent.identity import material as tls
    from p2pagent.transport.channels import channel_options

    p = argparse.ArgumentParser(prog="python -m p2pagent.training.demo", description=__doc__)
    p.add_argument("--certs", required=True, help="folder with ca.crt and each NODE.crt/.key")
    p.add_argument("--nodes", required=True, help="NAME=HOST:PORT,... of the training nodes")
    p.add_argument("--rounds", type=int, default=200)
    p.add_argument("--publish-every", type=int, default=50)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    from pathlib import Path

    stubs = {}
    for entry in args.nodes.split(","):
        name, _, address = entry.partition("=")
        m = tls.load(tls.TLSPaths.in_dir(Path(args.certs), name))
        creds = grpc.ssl_channel_credentials(m.ca_pem, m.key_pem, m.cert_pem)
        ch = grpc.secure_channel(address, creds, options=channel_options(m.cluster, 64 << 20))
        stubs[name] = agent_pb2_grpc.AgentStub(ch)
    plan = DigitsPlan(rounds=args.rounds, publish_every=args.publish_every)
    runs = federated(stubs, plan)
    report = {
        "centralized": centralized(plan, len(stubs)),
        "alone": alone(plan, len(stubs)),
        "federated": {
            n: accuracy_of(r.params, plan.seed) if r.params else r.error for n, r in runs.items()
        },
        "published": {n: r.published for n, r in runs.items() if r.published},
    }
    print(json.dumps(report, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
