"""Task overhead through a real daemon: Submit + Wait of a no-op model, against Infer of the
same model in the same run.

    python -m bench.tasks_daemon [--tasks 300] [--concurrency 32] [--json]
                                 [--against TREE | --breakdown]

Rows: sequential Submit+Wait latency (p50/p95; target p50 <= 2 ms), the same task on one
stream (``SubmitAndWait``, one round trip less; alternated with the pairs), sequential Infer
latency (the baseline: no journal, no queue), and tasks per second with ``--concurrency``
clients, through grpc.aio (pairs, then one-stream tasks); then the sequential p50s again
through grpc's blocking client, which adds less of its own per call (server streams read on
the calling thread).
``--against TREE`` compares two builds under the same load: it also starts a daemon from
another source tree (a ``git worktree`` of the commit before a change) and alternates
sequential pairs, then SubmitAndWait calls, between the two (through the blocking client;
then SubmitAndWait and Infer through grpc.aio), printing each one's quartiles.
On this shared machine, runs minutes apart differ by more than most changes do; pairs
alternated call by call do not.
``--breakdown`` prints instead the p50 and the daemon's CPU per call of a pair, a
SubmitAndWait, an Infer, a Submit alone and a Wait on a finished task: where a pair's time
goes.
Submit is journaled with fsync before it answers, and so is the result before it is shown
(writes arriving together share one fsync): the disk's fsync latency, sampled between the
sequential calls (one probe after each pair), is the floor under the sequential p50.

Also measured in the same run: a bare grpc.aio unary echo (``bench._grpc_echo``, the RPC
floor) and its ``SubmitAndWait`` (one message on a server stream, alternated with the unary
call; grpc.aio's client spends more on a server stream than on a unary call), and tasks per
second with ``--concurrency`` of them in flight on one ``SubmitStream``. The issue 26
target: SubmitAndWait p50 <= the unary echo's p50 + the fsync p50 + 0.5 ms; ``--json``
prints it as ``{"targets": [{"name", "measured", "target", "met"}]}`` (the same bound over
the echo's SubmitAndWait is printed beside it, not as a target).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import grpc.experimental

from bench._proc import NO_RATE_LIMIT, cpu_seconds
from bench._targets import add_json_flag, at_most, emit, human, print_table
from p2pagent._proto import agent_pb2, agent_pb2_grpc
from p2pagent.identity import certs
from p2pagent.identity.spiffe import Role
from p2pagent.inference import demo_model, tensors
from p2pagent.testing.daemon import Daemon
from p2pagent.transport.channels import channel_options


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * (len(xs) - 1)))]


def _client_credentials(certs_dir: Path) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        (certs_dir / "ca.crt").read_bytes(),
        (certs_dir / "client.key").read_bytes(),
        (certs_dir / "client.crt").read_bytes(),
    )


def _blocking_options() -> list[tuple[str, object]]:
    """The blocking client's channel options: server streams (``Wait``) read on the calling
    thread rather than handed over from grpc's own (0.3 ms less client CPU a pair here)."""
    return [
        *channel_options("bench", 16 << 20),
        (grpc.experimental.ChannelOptions.SingleThreadedUnaryStream, 1),
    ]


def _check(e: agent_pb2.TaskEvent) -> None:
    if e.kind == agent_pb2.TaskEvent.KIND_FAILED:
        raise RuntimeError(e.error_message)


def known_settings(tree: Path, env: dict[str, str]) -> dict[str, str]:
    """The settings of ``env`` that the daemon of another source tree knows (an older one
    refuses a setting it lacks, and has the limit off then anyway)."""
    known = (tree / "p2pagent" / "tasks" / "config.py").read_text()
    return {k: v for k, v in env.items() if "__" not in k or k.split("__")[1].lower() in known}


def _blocking_pair(stub: agent_pb2_grpc.AgentServiceStub, submit: agent_pb2.SubmitRequest) -> None:
    """One Submit, then Wait until the result, through the blocking client."""
    task_id = stub.Submit(submit, timeout=30).task_id
    for answer in stub.Wait(agent_pb2.WaitRequest(task_id=task_id), timeout=30):
        _check(answer.event)


def _blocking_stream(
    stub: agent_pb2_grpc.AgentServiceStub, submit: agent_pb2.SubmitAndWaitRequest
) -> None:
    """One SubmitAndWait until the result, through the blocking client."""
    for answer in stub.SubmitAndWait(submit, timeout=30):
        _check(answer.event)


async def _run(
    d: Daemon, certs_dir: Path, n: int, concurrency: int, fsync: FsyncProbe
) -> dict[str, float]:
    creds = _client_credentials(certs_dir)
    x = tensors.to_proto("input", demo_model.sample_input(1))
    async with grpc.aio.secure_channel(
        d.address, creds, options=channel_options("bench", 16 << 20)
    ) as ch:
        stub = agent_pb2_grpc.AgentServiceStub(ch)
        submit = agent_pb2.SubmitRequest(model="noop", inputs=[x])
        stream = agent_pb2.SubmitAndWaitRequest(model="noop", inputs=[x])
        infer = agent_pb2.InferRequest(model="noop", inputs=[x])

        async def task() -> float:
            t0 = time.perf_counter()
            tid = (await stub.Submit(submit, timeout=30)).task_id
            async for answer in stub.Wait(agent_pb2.WaitRequest(task_id=tid), timeout=30):
                _check(answer.event)
            return time.perf_counter() - t0

        async def one_stream() -> float:
            t0 = time.perf_counter()
            async for answer in stub.SubmitAndWait(stream, timeout=30):
                _check(answer.event)
            return time.perf_counter() - t0

        async def inference() -> float:
            t0 = time.perf_counter()
            await stub.Infer(infer, timeout=30)
            return time.perf_counter() - t0

        for _ in range(20):  # warm up channels, the engine and the journal
            await task()
            await one_stream()
            await inference()
        seq_task, seq_stream = [], []
        for _ in range(n):
            seq_task.append(await task())
            seq_stream.append(await one_stream())
            fsync.sample()  # between the calls it bounds: the same minutes on this disk
        seq_infer = [await inference() for _ in range(n)]
        sem = asyncio.Semaphore(concurrency)

        async def throughput(call: Callable[[], Awaitable[float]]) -> float:
            async def bounded() -> float:
                async with sem:
                    return await call()

            t0 = time.perf_counter()
            await asyncio.gather(*(bounded() for _ in range(n)))
            return round(n / (time.perf_counter() - t0), 1)

        pairs_per_s = await throughput(task)
        streams_per_s = await throughput(one_stream)
        multiplexed_per_s = await submit_stream_rate(stub, x, n, concurrency)
    return {
        "submit_wait_p50_ms": round(1000 * statistics.median(seq_task), 3),
        "submit_wait_p95_ms": round(1000 * _pct(seq_task, 0.95), 3),
        "submit_and_wait_p50_ms": round(1000 * statistics.median(seq_stream), 3),
        "submit_and_wait_p95_ms": round(1000 * _pct(seq_stream, 0.95), 3),
        "infer_p50_ms": round(1000 * statistics.median(seq_infer), 3),
        "overhead_over_infer_p50_ms": round(
            1000 * (statistics.median(seq_task) - statistics.median(seq_infer)), 3
        ),
        # What a SubmitAndWait adds to an Infer of the same model: its journal commit (the
        # fsync row below is that floor) and the server stream's second message.
        "submit_and_wait_over_infer_p50_ms": round(
            1000 * (statistics.median(seq_stream) - statistics.median(seq_infer)), 3
        ),
        f"tasks_per_s_at_concurrency_{concurrency}": pairs_per_s,
        f"one_stream_tasks_per_s_at_concurrency_{concurrency}": streams_per_s,
        f"submit_stream_tasks_per_s_at_{concurrency}_in_flight": multiplexed_per_s,
    }


async def submit_stream_rate(
    stub: agent_pb2_grpc.AgentServiceStub, x: object, n: int, in_flight: int
) -> float:
    """Tasks per second, ``n`` of them on one SubmitStream with ``in_flight`` unfinished."""
    call = stub.SubmitStream()
    request = agent_pb2.SubmitStreamRequest(model="noop", inputs=[x])
    slots = asyncio.Semaphore(in_flight)

    async def write() -> None:
        for i in range(1, n + 1):
            await slots.acquire()
            request.request_id = i  # serialized inside write, before the next id is set
            await call.write(request)
        await call.done_writing()

    async def read() -> None:
        done = 0
        while done < n:
            answer = await call.read()
            if answer.error_code:
                raise RuntimeError(f"{answer.error_code}: {answer.error_message}")
            if answer.event.kind in (
                agent_pb2.TaskEvent.KIND_DONE,
                agent_pb2.TaskEvent.KIND_FAILED,
            ):
                _check(answer.event)
                done += 1
                slots.release()

    t0 = time.perf_counter()
    await asyncio.gather(write(), read())
    return round(n / (time.perf_counter() - t0), 1)


async def echo_p50_ms(certs_dir: Path, n: int) -> tuple[float, float]:
    """Sequential p50 of the bare grpc.aio echo server (the RPC floor): a unary Infer, and a
    SubmitAndWait (one message on a server stream, which costs grpc.aio's client more)."""
    from bench.inference_grpc import start_echo
    from p2pagent.testing.daemon import free_port

    address = f"127.0.0.1:{free_port()}"
    echo = start_echo([], certs_dir, address)
    x = tensors.to_proto("input", demo_model.sample_input(1))
    request = agent_pb2.InferRequest(model="noop", inputs=[x])
    stream = agent_pb2.SubmitAndWaitRequest(model="noop", inputs=[x])
    try:
        async with grpc.aio.secure_channel(
            address, _client_credentials(certs_dir), options=channel_options("bench", 16 << 20)
        ) as ch:
            stub = agent_pb2_grpc.AgentServiceStub(ch)

            async def one_stream() -> None:
                async for answer in stub.SubmitAndWait(stream, timeout=30):
                    _check(answer.event)

            for _ in range(20):
                await stub.Infer(request, timeout=30)
                await one_stream()
            unary, streamed = [], []
            for _ in range(n):  # alternated: the same minutes for both
                t0 = time.perf_counter()
                await stub.Infer(request, timeout=30)
                t1 = time.perf_counter()
                await one_stream()
                unary.append(t1 - t0)
                streamed.append(time.perf_counter() - t1)
    finally:
        echo.kill()
        echo.wait(10)
    return round(1000 * statistics.median(unary), 3), round(1000 * statistics.median(streamed), 3)


def sync_client_p50_ms(d: Daemon, certs_dir: Path, n: int) -> dict[str, float]:
    """Sequential Submit + Wait and Infer p50 through grpc's blocking client, which adds
    less of its own than grpc.aio to each call (a server stream most: ~0.6 ms here)."""
    creds = _client_credentials(certs_dir)
    x = tensors.to_proto("input", demo_model.sample_input(1))
    with grpc.secure_channel(d.address, creds, options=_blocking_options()) as ch:
        stub = agent_pb2_grpc.AgentServiceStub(ch)
        submit = agent_pb2.SubmitRequest(model="noop", inputs=[x])
        stream = agent_pb2.SubmitAndWaitRequest(model="noop", inputs=[x])
        infer = agent_pb2.InferRequest(model="noop", inputs=[x])
        pairs, streams, infers = [], [], []
        for i in range(n + 20):  # the first 20 warm up
            t0 = time.perf_counter()
            _blocking_pair(stub, submit)
            t1 = time.perf_counter()
            _blocking_stream(stub, stream)
            t2 = time.perf_counter()
            stub.Infer(infer, timeout=30)
            t3 = time.perf_counter()
            if i >= 20:
                pairs.append(t1 - t0)
                streams.append(t2 - t1)
                infers.append(t3 - t2)
    return {
        "sync_client_submit_wait_p50_ms": round(1000 * statistics.median(pairs), 3),
        "sync_client_submit_and_wait_p50_ms": round(1000 * statistics.median(streams), 3),
        "sync_client_infer_p50_ms": round(1000 * statistics.median(infers), 3),
    }


def interleaved_pairs_ms(daemons: dict[str, Daemon], certs_dir: Path, n: int) -> None:
    """Sequential Submit + Wait pairs, then SubmitAndWait calls, through the blocking client,
    alternating between the daemons call by call; prints each one's p25 / p50 / p75."""
    creds = _client_credentials(certs_dir)
    x = tensors.to_proto("input", demo_model.sample_input(1))
    submit = agent_pb2.SubmitRequest(model="noop", inputs=[x])
    one_call = agent_pb2.SubmitAndWaitRequest(model="noop", inputs=[x])
    channels = {
        k: grpc.secure_channel(d.address, creds, options=_blocking_options())
        for k, d in daemons.items()
    }
    kinds: dict[str, Callable[[agent_pb2_grpc.AgentServiceStub], None]] = {
        "Submit+Wait": lambda stub: _blocking_pair(stub, submit),
        "SubmitAndWait": lambda stub: _blocking_stream(stub, one_call),
    }
    try:
        stubs = {k: agent_pb2_grpc.AgentServiceStub(ch) for k, ch in channels.items()}
        for kind, call in kinds.items():
            samples: dict[str, list[float]] = {k: [] for k in daemons}
            for i in range(n + 20):  # the first 20 warm up
                for k, stub in stubs.items():
                    t0 = time.perf_counter()
                    call(stub)
                    if i >= 20:
                        samples[k].append(time.perf_counter() - t0)
            _print_quartiles(kind, samples)
    finally:
        for ch in channels.values():
            ch.close()


def _print_quartiles(kind: str, samples: dict[str, list[float]]) -> None:
    """Each tree's p25 / p50 / p75 of ``kind``'s interleaved calls (seconds -> ms)."""
    for k, xs in samples.items():
        q1, q2, q3 = (1000 * q for q in statistics.quantiles(xs, n=4))
        print(f"interleaved {kind}, {k}: p25 {q1:.3f} ms, p50 {q2:.3f} ms, p75 {q3:.3f} ms")


async def interleaved_aio_ms(daemons: dict[str, Daemon], certs_dir: Path, n: int) -> None:
    """SubmitAndWait calls, then Infer calls, through grpc.aio (the client of the issue's
    target), alternating between the daemons call by call; prints each one's p25 / p50 /
    p75."""
    creds = _client_credentials(certs_dir)
    x = tensors.to_proto("input", demo_model.sample_input(1))
    one_call = agent_pb2.SubmitAndWaitRequest(model="noop", inputs=[x])
    infer = agent_pb2.InferRequest(model="noop", inputs=[x])
    channels = {
        k: grpc.aio.secure_channel(d.address, creds, options=channel_options("bench", 16 << 20))
        for k, d in daemons.items()
    }

    async def submit_and_wait(stub: agent_pb2_grpc.AgentServiceStub) -> None:
        async for answer in stub.SubmitAndWait(one_call, timeout=30):
            _check(answer.event)

    async def inference(stub: agent_pb2_grpc.AgentServiceStub) -> None:
        await stub.Infer(infer, timeout=30)

    kinds = {"SubmitAndWait (aio)": submit_and_wait, "Infer (aio)": inference}
    try:
        stubs = {k: agent_pb2_grpc.AgentServiceStub(ch) for k, ch in channels.items()}
        for kind, call in kinds.items():
            samples: dict[str, list[float]] = {k: [] for k in daemons}
            for i in range(n + 20):  # the first 20 warm up
                for k, stub in stubs.items():
                    t0 = time.perf_counter()
                    await call(stub)
                    if i >= 20:
                        samples[k].append(time.perf_counter() - t0)
            _print_quartiles(kind, samples)
    finally:
        for ch in channels.values():
            await ch.close()


def breakdown(d: Daemon, certs_dir: Path, n: int) -> None:
    """Where a pair's time goes: p50 and the daemon's CPU per call (all its threads, less its
    idle rate) of a Submit+Wait pair, an Infer, a Submit alone (its task still runs and is
    journaled twice) and a Wait on a task already done, through the blocking client."""
    assert d.proc is not None
    pid = d.proc.pid
    creds = _client_credentials(certs_dir)
    x = tensors.to_proto("input", demo_model.sample_input(1))
    submit = agent_pb2.SubmitRequest(model="noop", inputs=[x])
    stream = agent_pb2.SubmitAndWaitRequest(model="noop", inputs=[x])
    infer = agent_pb2.InferRequest(model="noop", inputs=[x])
    with grpc.secure_channel(d.address, creds, options=_blocking_options()) as ch:
        stub = agent_pb2_grpc.AgentServiceStub(ch)
        for _ in range(20):
            _blocking_pair(stub, submit)
        done = stub.Submit(submit, timeout=30).task_id
        _blocking_pair(stub, submit)

        def wait_done() -> None:
            for _ in stub.Wait(agent_pb2.WaitRequest(task_id=done), timeout=30):
                pass

        rows: list[tuple[str, Callable[[], object]]] = [
            ("Submit+Wait", lambda: _blocking_pair(stub, submit)),
            ("SubmitAndWait", lambda: _blocking_stream(stub, stream)),
            ("Infer", lambda: stub.Infer(infer, timeout=30)),
            ("Submit alone", lambda: stub.Submit(submit, timeout=30)),
            ("Wait, task done", wait_done),
        ]
        time.sleep(1.0)  # the Submits' tasks finish
        before = cpu_seconds(pid)
        time.sleep(2.0)
        idle = (cpu_seconds(pid) - before) / 2.0
        print("| call | p50 ms | daemon CPU ms a call |")
        print("|---|---:|---:|")
        for name, call in rows:
            cpu = cpu_seconds(pid)
            start = time.perf_counter()
            samples = []
            for _ in range(n):
                t0 = time.perf_counter()
                call()
                samples.append(time.perf_counter() - t0)
            time.sleep(0.2)  # the last Submit's task finishes inside the window
            used = cpu_seconds(pid) - cpu - idle * (time.perf_counter() - start)
            print(f"| {name} | {1000 * statistics.median(samples):.3f} | {1000 * used / n:.3f} |")


class FsyncProbe:
    """The disk's fsync latency, the floor under a journaled Submit (and result): one sample
    per :meth:`sample`, so that they can be taken between the calls they bound (on a shared
    disk fsync varies by 30x within minutes)."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "fsync.probe"
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
        self.samples: list[float] = []

    def sample(self) -> None:
        os.write(self.fd, b"x" * 128)
        t0 = time.perf_counter()
        os.fsync(self.fd)
        self.samples.append(time.perf_counter() - t0)

    def p50_ms(self) -> float:
        return round(1000 * statistics.median(self.samples), 3)

    def close(self) -> None:
        os.close(self.fd)
        self.path.unlink()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tasks", type=int, default=300)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument(
        "--against",
        type=Path,
        metavar="TREE",
        help="also run a daemon from this source tree and alternate pairs with it",
    )
    p.add_argument(
        "--breakdown",
        action="store_true",
        help="p50 and daemon CPU per call of a pair, a SubmitAndWait, an Infer, a Submit alone, a "
        "Wait alone",
    )
    add_json_flag(p)
    args = p.parse_args()
    if args.against is not None and not (args.against / "p2pagent" / "__init__.py").is_file():
        p.error(f"--against {args.against}: not a p2pagent source tree (no p2pagent/__init__.py)")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        certs.init_ca(root / "certs", "bench")
        certs.issue(root / "certs", "b1", Role.NODE)
        certs.issue(root / "certs", "client", Role.CLIENT)
        files = demo_model.write_all(root / "models")
        noop = files.get("noop_torchscript", root / "models" / "noop.torchscript.pt")
        d = Daemon(
            "b1", root / "certs", root / "b1", args=["--serve", f"noop={noop}"], env=NO_RATE_LIMIT
        ).start()
        try:
            if args.against is not None:
                # `python -m` imports from the working directory first: run it in the tree.
                other = Daemon(
                    "b1", root / "certs", root / "other", args=["--serve", f"noop={noop}"],
                    prefix=["env", "-C", str(args.against.resolve())],
                    # Its own tree's code: the daemon runs with python -P, which imports from
                    # PYTHONPATH (this tree's, when set), not from its working directory.
                    env={
                        **known_settings(args.against, NO_RATE_LIMIT),
                        "PYTHONPATH": str(args.against.resolve()),
                    },
                )  # fmt: skip
                try:
                    other.start()
                    both = {"this tree": d, str(args.against): other}
                    interleaved_pairs_ms(both, root / "certs", args.tasks)
                    asyncio.run(interleaved_aio_ms(both, root / "certs", args.tasks))
                finally:
                    other.kill()
                return
            if args.breakdown:
                breakdown(d, root / "certs", args.tasks)
                return
            with human(args.json):
                probe = FsyncProbe(root)
                try:
                    row = asyncio.run(_run(d, root / "certs", args.tasks, args.concurrency, probe))
                finally:
                    probe.close()
                row.update(sync_client_p50_ms(d, root / "certs", args.tasks))
                row["fsync_p50_ms"] = probe.p50_ms()
                unary, streamed = asyncio.run(echo_p50_ms(root / "certs", args.tasks))
                row["bare_echo_p50_ms"], row["bare_stream_echo_p50_ms"] = unary, streamed
                print(row)
                bound = row["bare_echo_p50_ms"] + row["fsync_p50_ms"] + 0.5
                targets = [
                    at_most(
                        "SubmitAndWait p50 (ms) <= bare echo p50 + fsync p50 + 0.5 ms",
                        row["submit_and_wait_p50_ms"],
                        round(bound, 3),
                    )
                ]
                # Beside it, not the issue's target: the same bound over the bare echo's
                # SubmitAndWait (a one-message server stream), the RPC shape it really has.
                print(
                    f"SubmitAndWait p50 {row['submit_and_wait_p50_ms']} ms against the bare "
                    f"echo's SubmitAndWait {streamed} + fsync {row['fsync_p50_ms']} + 0.5 = "
                    f"{streamed + row['fsync_p50_ms'] + 0.5:.3f} ms"
                )
                print_table(targets)
            emit(args.json, targets, **row)
        finally:
            d.kill()


if __name__ == "__main__":
    main()
