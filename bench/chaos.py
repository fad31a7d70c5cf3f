"""A Jepsen-style chaos run: a workload, a fault schedule, then a checker over the history.

``python -m bench.chaos [--nodes 5] [--duration 60] [--seed 1] [--json [FILE]]``

Workload: one client per node (each fails over to another node when its own does not
answer) doing durable puts of unique keys, durable counter increments, durable set adds, task
submissions of the demo model (``Submit``, or ``SubmitAndWait`` hung up on after its first
event, which carries the id), and every few seconds a publish of a small model under a new
name with ``replicas: 2``.
Every call is recorded as acknowledged, failed (a definite refusal) or unknown (timed out or
cut off: it may or may not have been applied).

Faults, spread over the run: SIGKILL + restart of a random node, a partition of the first two
nodes from the rest (network namespaces, when this machine has them), 10% packet loss on one
node (netem, or iptables where the kernel lacks netem), one node paused with SIGSTOP then
resumed, a SIGKILL of one node's task-journal writer process (the daemon restarts it), and
a second SIGKILL + restart.

Checker, once the faults end and the load stops: every acknowledged put is on every replica
with its value; each replica's counter is the acknowledged total (plus at most the unknown
ones); every acknowledged set element is in the set on every replica; every acknowledged task
is delivered exactly once (``Wait`` at its origin); every acknowledged model is listed by
every node with the checksum it was published with, and held complete by two nodes; all
replicas have the same digest; every node lists every other as alive. It prints the table of
issue "Reliability" and exits non-zero when anything acknowledged was lost.

Targets (issue "Reliability", bench/RESULTS.md "Chaos run"): each check above (lost and
duplicated == 0, counter exact, replicas identical, membership agreed); identical replicas
within two anti-entropy intervals of the last restart; RSS growth of every daemon that was
never restarted <= 20 %. Only the checks decide the exit status. ``--json`` prints one object
on stdout, ``{"targets": [...], ...the report}`` (the report's lines go to stderr); ``--json
FILE`` writes it to FILE.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc

from bench._proc import NO_RATE_LIMIT
from bench._targets import Target, add_json_flag, at_most, emit, exactly, holds, human, print_table
from p2pagent._proto import agent_pb2
from p2pagent.inference import demo_model, tensors
from p2pagent.state.config import StateConfig
from p2pagent.testing import netns, uploads
from p2pagent.testing.cluster import Cluster

CALL_TIMEOUT_S = 5.0
CONVERGE_LIMIT_S = 120.0
#: gRPC codes that mean "refused, not applied".
DEFINITE = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED,
            grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.RESOURCE_EXHAUSTED}  # fmt: skip


@dataclass
class History:
    puts: dict[str, bytes] = field(default_factory=dict)  # acknowledged key -> value
    increments_acked: int = 0
    increments_unknown: int = 0
    elements: set[bytes] = field(default_factory=set)
    tasks: list[str] = field(default_factory=list)  # acknowledged task ids
    models: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (id, sha256)
    ops: int = 0
    failed: int = 0
    unknown: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class Report:
    nodes: int
    duration_s: float
    faults: list[str]
    operations: int
    acknowledged_puts: int
    acknowledged_increments: int
    acknowledged_set_adds: int
    failed: int
    unknown_outcome: int
    lost_puts: int
    lost_set_elements: int
    acknowledged_tasks: int
    lost_tasks: int
    duplicated_task_results: int
    acknowledged_models: int
    lost_models: int
    under_replicated_models: int
    counter_values: list[int]
    counter_exact: bool
    duplicated: int
    replicas_identical: bool
    membership_agreed: bool
    converge_after_last_fault_s: float
    fault_recovery_s: dict[str, float]
    #: RSS growth (%) of each daemon that ran from the first sample to the end unrestarted.
    rss_growth_pct: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return (
            self.lost_puts == 0
            and self.lost_set_elements == 0
            and self.lost_tasks == 0
            and self.duplicated_task_results == 0
            and self.lost_models == 0
            and self.under_replicated_models == 0
            and self.counter_exact
            and self.replicas_identical
            and self.membership_agreed
        )


def _client(c: Cluster, home: str, history: History, stop: threading.Event, seed: int) -> None:
    rng = random.Random(seed)
    names = list(c.nodes)
    durable = agent_pb2.WriteOptions(durable=True)
    i = 0
    target = home
    next_publish = time.monotonic() + PUBLISH_EVERY_S * rng.random()
    while not stop.is_set():
        i += 1
        kind = rng.choice(("put", "incr", "sadd", "task", "task_stream"))
        if time.monotonic() >= next_publish:
            kind, next_publish = "publish", time.monotonic() + PUBLISH_EVERY_S
        stub = c.agent(target)
        try:
            if kind == "put":
                key, value = f"{home}-{i}", b"%d" % i
                stub.Put(agent_pb2.PutRequest(namespace="chaos", key=key, value=value,
                                              options=durable), timeout=CALL_TIMEOUT_S)  # fmt: skip
            elif kind == "incr":
                stub.Increment(agent_pb2.IncrementRequest(namespace="chaos", key="counter",
                                                          delta=1, options=durable),
                               timeout=CALL_TIMEOUT_S)  # fmt: skip
            elif kind == "task":
                task_id = stub.Submit(TASK, timeout=CALL_TIMEOUT_S).task_id
            elif kind == "task_stream":
                events = stub.SubmitAndWait(TASK_STREAM, timeout=CALL_TIMEOUT_S)
                task_id = next(events).event.task_id  # acknowledged: the task is journaled
                events.cancel()  # the task keeps its course without a listener
            elif kind == "publish":
                name = f"chaos-{home}-{i}"
                body = _model_file(rng)
                # Publishing needs the role; the node loads and runs every upload in a child first.
                publisher = c.agent(target, "publisher")
                published = publisher.PublishModel(
                    _upload(name, body), timeout=CALL_TIMEOUT_S * 12
                ).version
                model = (published.manifest_id, hashlib.sha256(body).hexdigest())
            else:
                elem = f"{home}-{i}".encode()
                req = agent_pb2.SetAddRequest(
                    namespace="chaos", key="set", elements=[elem], options=durable
                )
                stub.SetAdd(req, timeout=CALL_TIMEOUT_S)
        except grpc.RpcError as e:
            code = e.code()  # type: ignore[attr-defined]
            with history.lock:
                history.ops += 1
                if code in DEFINITE:
                    history.failed += 1
                else:
                    history.unknown += 1
                    if kind == "incr":
                        history.increments_unknown += 1
            target = rng.choice(names)  # fail over, as a client with several seeds would
            time.sleep(0.05)
            continue
        with history.lock:
            history.ops += 1
            if kind == "put":
                history.puts[key] = value
            elif kind == "incr":
                history.increments_acked += 1
            elif kind in ("task", "task_stream"):
                history.tasks.append(task_id)
            elif kind == "publish":
                history.models[name] = model
            else:
                history.elements.add(elem)
        target = home if rng.random() < 0.5 else target
        time.sleep(0.01)


#: Seconds between one client's model publishes.
PUBLISH_EVERY_S = 4.0
#: Copies of each published model the mesh must keep.
MODEL_REPLICAS = 2


def _model_file(rng: random.Random) -> bytes:
    """A small safetensors file (64 KiB: four 16 KiB chunks) with no tensors and random
    filler: it loads as the ``noop`` architecture (``uploads.noop_metadata``)."""
    head = b'{"__metadata__":{}}'.ljust(120, b" ")
    data = rng.randbytes(64 * 1024 - 128)
    return len(head).to_bytes(8, "little") + head + data


def _upload(name: str, body: bytes) -> Iterator[agent_pb2.PublishModelRequest]:
    header = agent_pb2.PublishModelRequest.Header(
        name=name, format="safetensors", size=len(body), chunk_size=16 * 1024,
        replicas=str(MODEL_REPLICAS), metadata=uploads.noop_metadata(),
    )  # fmt: skip
    return uploads.publish_requests(header, body, len(body))


#: A small inference task: the demo model on 8 rows.
TASK = agent_pb2.SubmitRequest(
    model="demo", inputs=[tensors.to_proto("input", demo_model.sample_input(8))]
)
TASK_STREAM = agent_pb2.SubmitAndWaitRequest(model=TASK.model, inputs=TASK.inputs)


def _serve(tmp: Path) -> list[str]:
    files = demo_model.write_all(tmp / "models")
    return ["--serve", f"demo={files['torchscript']}"]


def _digests(c: Cluster) -> set[str]:
    out = set()
    for n in c.nodes:
        try:
            out.add(c.agent(n).Status(agent_pb2.StatusRequest(), timeout=5).state_digest)
        except grpc.RpcError:
            out.add("?" + n)
    return out


def _agreed(c: Cluster) -> bool:
    names = set(c.nodes)
    return all({n for n, (s, _) in c.members(o).items() if s == "alive"} >= names for o in c.nodes)


def _healthy(c: Cluster) -> bool:
    return _agreed(c) and len(_digests(c)) == 1


def _retain_results(duration: float) -> dict[str, str]:
    """The checker reads every task's result once the run is over: results must outlive the
    run (a daemon forgets delivered ones after ``tasks.done_retention_s``, 600 s by default)."""
    return {"P2PAGENT_TASKS__DONE_RETENTION_S": str(int(2 * duration + 600))}


def run(nodes: int = 5, duration: float = 60.0, seed: int = 1, root: Path | None = None) -> Report:
    rng = random.Random(seed)
    use_netns = netns.available()
    with (
        tempfile.TemporaryDirectory() as tmp,
        Cluster(
            root or Path(tmp),
            nodes,
            use_netns=use_netns,
            args=_serve(Path(tmp)),
            env={**_retain_results(duration), **NO_RATE_LIMIT},
        ) as c,  # fmt: skip
    ):
        names = list(c.nodes)
        c.start()
        c.wait_for(lambda: _agreed(c), CONVERGE_LIMIT_S, "mesh formed")
        history = History()
        stop = threading.Event()
        clients = [
            threading.Thread(
                target=_client, args=(c, n, history, stop, seed * 100 + k), daemon=True
            )
            for k, n in enumerate(names)
        ]
        for t in clients:
            t.start()
        faults: list[str] = []
        recovery: dict[str, float] = {}
        start = time.monotonic()

        def at(fraction: float) -> None:
            delay = start + fraction * duration - time.monotonic()
            if delay > 0:
                time.sleep(delay)

        def recovered(label: str) -> None:
            # Under load replicas never stop changing: recovery here is the mesh being whole
            # again; identical replicas are checked once the load stops.
            t0 = time.monotonic()
            c.wait_for(lambda: _agreed(c), CONVERGE_LIMIT_S, f"recovered from {label}", 0.2)
            recovery[label] = round(time.monotonic() - t0, 2)

        at(0.05)
        rss_start = {n: _rss(c, n) for n in names}
        at(0.1)
        victim = rng.choice(names)
        c.kill(victim)
        faults.append(f"SIGKILL {victim}")
        time.sleep(min(5.0, duration * 0.05))
        c.nodes[victim].restart(timeout=90)  # a loaded 2-core host starts slowly
        recovered(f"SIGKILL+restart {victim}")

        if use_netns:
            at(0.3)
            left, right = names[:2], names[2:]
            c.partition(left, right)
            faults.append(f"partition {'+'.join(left)} | {'+'.join(right)}")
            time.sleep(min(20.0, duration * 0.3))
            c.heal()
            recovered("partition")

        if use_netns and netns.loss_available():
            at(0.55)
            lossy = rng.choice(names)
            c.loss(lossy, 0.10)
            faults.append(f"10% packet loss on {lossy}")
            time.sleep(min(10.0, duration * 0.12))
            c.loss(lossy, 0.0)
            recovered(f"10% loss on {lossy}")

        at(0.62)
        target = rng.choice(names)
        writer = _journal_writer(c, target)
        if writer is not None:
            os.kill(writer, signal.SIGKILL)
            faults.append(f"SIGKILL {target}'s task journal writer")
            t0 = time.monotonic()
            c.wait_for(
                lambda: _journal_writer(c, target) not in (None, writer),
                CONVERGE_LIMIT_S, f"{target}'s journal writer restarted", 0.05,
            )  # fmt: skip
            recovery[f"journal writer SIGKILL on {target}"] = round(time.monotonic() - t0, 2)

        at(0.7)
        paused = rng.choice(names)
        c.pause(paused)
        faults.append(f"SIGSTOP {paused}")
        time.sleep(min(5.0, duration * 0.05))
        c.resume(paused)
        recovered(f"SIGSTOP+SIGCONT {paused}")

        at(0.8)
        victim = rng.choice(names)
        c.kill(victim)
        faults.append(f"SIGKILL {victim}")
        time.sleep(min(3.0, duration * 0.05))
        c.nodes[victim].restart(timeout=90)  # a loaded 2-core host starts slowly
        at(1.0)
        stop.set()
        for t in clients:
            t.join(timeout=CALL_TIMEOUT_S * 3)
        last_fault = time.monotonic()
        c.wait_for(lambda: _healthy(c), CONVERGE_LIMIT_S, "converged after the last fault", 0.2)
        converge = time.monotonic() - last_fault
        recovery[f"SIGKILL+restart {victim} (load stopped)"] = round(converge, 2)
        report = _check(c, history, faults, duration, converge, recovery)
        for n, (pid, before) in rss_start.items():
            pid_now, after = _rss(c, n)
            if pid_now == pid and before > 0:
                report.rss_growth_pct[n] = round(100.0 * (after - before) / before, 1)
        return report


def _rss(c: Cluster, name: str) -> tuple[int, float]:
    """(pid, resident MB) of a daemon; (0, 0) when it is not running."""
    proc = c.nodes[name].proc
    if proc is None or proc.poll() is not None:
        return 0, 0.0
    try:
        for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return proc.pid, int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0, 0.0


def _journal_writer(c: Cluster, name: str) -> int | None:
    """The pid of the node's task-journal writer process (a child of its daemon), if any."""
    proc = c.nodes[name].proc
    if proc is None:
        return None
    try:
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    except OSError:
        return None
    for child in children:
        try:
            if b"journal_writer" in Path(f"/proc/{child}/cmdline").read_bytes():
                return int(child)
        except OSError:
            continue
    return None


def _check(
    c: Cluster,
    h: History,
    faults: list[str],
    duration: float,
    converge: float,
    recovery: dict[str, float],
) -> Report:
    lost_puts = 0
    lost_elements = 0
    counters = []
    for n in c.nodes:
        stub = c.agent(n)
        for key, value in h.puts.items():
            got = stub.Get(agent_pb2.GetRequest(namespace="chaos", key=key), timeout=10)
            if list(got.values) != [value]:
                lost_puts += 1
        s = stub.Get(agent_pb2.GetRequest(namespace="chaos", key="set"), timeout=10)
        lost_elements += len(h.elements - set(s.elements))
        counters.append(
            stub.Get(agent_pb2.GetRequest(namespace="chaos", key="counter"), timeout=10).counter
        )
    lost_tasks = duplicated_tasks = 0
    for task_id in h.tasks:
        origin = task_id.rsplit("-", 1)[0]
        try:
            wait = c.agent(origin).Wait(agent_pb2.WaitRequest(task_id=task_id), timeout=60)
            events = [answer.event for answer in wait]
        except grpc.RpcError:
            lost_tasks += 1
            continue
        done = [e for e in events if e.kind == agent_pb2.TaskEvent.KIND_DONE]
        lost_tasks += not done
        duplicated_tasks += max(0, len(done) - 1)
    lost_models, under_replicated = _check_models(c, h.models)
    lo, hi = h.increments_acked, h.increments_acked + h.increments_unknown
    return Report(
        nodes=len(c.nodes),
        duration_s=duration,
        faults=faults,
        operations=h.ops,
        acknowledged_puts=len(h.puts),
        acknowledged_increments=h.increments_acked,
        acknowledged_set_adds=len(h.elements),
        failed=h.failed,
        unknown_outcome=h.unknown,
        lost_puts=lost_puts,
        lost_set_elements=lost_elements,
        acknowledged_tasks=len(h.tasks),
        lost_tasks=lost_tasks,
        duplicated_task_results=duplicated_tasks,
        acknowledged_models=len(h.models),
        lost_models=lost_models,
        under_replicated_models=under_replicated,
        counter_values=counters,
        counter_exact=len(set(counters)) == 1 and lo <= counters[0] <= hi,
        duplicated=sum(1 for v in counters if v > hi),
        replicas_identical=len(_digests(c)) == 1,
        membership_agreed=_agreed(c),
        converge_after_last_fault_s=round(converge, 2),
        fault_recovery_s=recovery,
    )


def _check_models(c: Cluster, acked: dict[str, tuple[str, str]]) -> tuple[int, int]:
    """(lost, under-replicated) acknowledged models: lost if some node does not list it with
    its id and checksum, under-replicated if fewer than MODEL_REPLICAS nodes hold it complete
    once replication has had CONVERGE_LIMIT_S to catch up."""

    def views() -> list[dict[str, agent_pb2.ModelVersion]]:
        out = []
        for n in c.nodes:
            listed = c.agent(n).ListModels(agent_pb2.ListModelsRequest(), timeout=10).versions
            out.append({v.name: v for v in listed})
        return out

    def shortfall() -> tuple[int, int]:
        lost = under = 0
        for name, (mid, sha) in acked.items():
            seen = [view.get(name) for view in views_now]
            if any(v is None or v.manifest_id != mid or v.sha256 != sha for v in seen):
                lost += 1
            elif min(len(v.holders) for v in seen if v is not None) < MODEL_REPLICAS:
                under += 1
        return lost, under

    deadline = time.monotonic() + CONVERGE_LIMIT_S
    while True:
        views_now = views()
        lost, under = shortfall()
        if (lost, under) == (0, 0) or time.monotonic() > deadline:
            return lost, under
        time.sleep(0.5)


#: RSS growth over the run of a daemon never restarted (bench/RESULTS.md, "Chaos run").
RSS_GROWTH_TARGET_PCT = 20.0


def targets(r: Report) -> list[Target]:
    """The checker's verdicts and the run's two measured bounds, as targets."""
    converge_bound = 2 * StateConfig().anti_entropy_interval
    growth = max(r.rss_growth_pct.values()) if r.rss_growth_pct else None
    return [
        exactly("acknowledged puts lost", r.lost_puts, 0),
        exactly("acknowledged set elements lost", r.lost_set_elements, 0),
        holds("counter on every replica = acknowledged (+ unknown) increments", r.counter_exact),
        exactly("replicas counting more than every increment sent", r.duplicated, 0),
        exactly("acknowledged tasks lost", r.lost_tasks, 0),
        exactly("task results delivered twice", r.duplicated_task_results, 0),
        exactly("acknowledged models lost", r.lost_models, 0),
        exactly("acknowledged models under-replicated", r.under_replicated_models, 0),
        holds("replicas identical at the end", r.replicas_identical),
        holds("every node lists every other alive at the end", r.membership_agreed),
        at_most("identical replicas after the last restart (s)",
                r.converge_after_last_fault_s, converge_bound),
        at_most("RSS growth of daemons never restarted, largest (%)", growth,
                RSS_GROWTH_TARGET_PCT),
    ]  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--nodes", type=int, default=5)
    p.add_argument("--duration", type=float, default=60.0, help="seconds of load and faults")
    p.add_argument("--seed", type=int, default=1)
    add_json_flag(p)
    args = p.parse_args()
    if args.nodes < 3:
        p.error("--nodes must be at least 3 (the partition cuts two nodes from the rest)")
    if args.duration <= 0:
        p.error("--duration must be positive (seconds of load and faults)")
    with human(args.json):
        report = run(args.nodes, args.duration, args.seed)
        for k, v in asdict(report).items():
            print(f"{k:28} {v}")
        result = targets(report)
        print()
        print_table(result)
        print("RESULT", "ok" if report.ok else "FAILED")
    emit(args.json, result, **asdict(report), ok=report.ok)
    sys.exit(0 if report.ok else 1)


if __name__ == "__main__":
    main()
