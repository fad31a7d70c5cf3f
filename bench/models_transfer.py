"""Model pull between two daemons against a plain gRPC stream of the same bytes.

``python -m bench.models_transfer [--mib 512] [--rounds 2] [--chunk-kib 1024]
[--link-mbit 1000] [--json]``

Two real daemons on loopback (n1 publishes, n2 pulls). Per round, in alternating order:

* **baseline**: a plain ``grpc.aio`` server (its own process) streams the model file in
  messages of the chunk size, as the pull's are (``--message-kib`` to choose), over the same
  mutual TLS (n1's node certificate, the daemon's server credentials and channel options)
  to a client (its own process, in n2's network namespace with ``--link-mbit``) that presents
  n2's certificate and discards the bytes;
* **pull**: ``PullModel`` on n2, which fetches every chunk from n1 over ``Peer.FetchChunks``,
  verifies each against its SHA-256 and writes it at its offset in the version's one file
  (fsynced in batches, each batch then named in the file's chunk index; renamed to its
  complete name once all are in), then registers n2 as a holder. Timed from the client, so
  it includes the whole RPC.

The baseline server and client get the daemons' allocator settings (``models.alloc``), so
the comparison is of the data path, not of malloc.

Prints MB/s of both, their ratio (target >= 0.8), the publish rate, and n2's peak RSS growth
during the pull (target for a 2 GiB model: < 256 MB). Each round publishes a fresh random file.

Wall-clock rates swing with whatever else the machine runs, so it also prints the CPU seconds
each side spends per GiB (user + system, from /proc and getrusage): the baseline's server
process plus its client, against n1 plus n2 during the pull (less their idle rate, measured
for a few seconds just before), in total and by side (sender, receiver). Where the transfer
is CPU-bound, the ratio of those costs bounds the ratio of the rates. ``--disk`` adds the
rate of writing the same bytes to a file with one fsync at the end, in the same directory,
buffered and with O_DIRECT (as the daemon writes pulled chunks), as a bound: a pull that
makes every chunk durable cannot beat the disk.

Floors measured in the same run, on the same bytes: the CPU seconds per GiB of SHA-256 (what
a verified pull must add to the plain stream's receiver) and of reading the file (what a
holder must add to the plain stream's sender). Targets (issue 26): receiver <= 1.25x (plain
receiver + SHA-256), sender <= 1.25x (plain sender + read).

``--link-mbit N`` runs the nodes in network namespaces whose veth links are shaped to N
Mbit/s each way (``tc tbf``; ``testing.netns.Network.shape``), the baseline's server in n1's
namespace and its client in n2's, so both cross the same shaped links. Targets there: pull
>= 0.9x the plain stream, publish (client in the root namespace -> n1, over n1's shaped link)
>= 0.8x the pull. ``--json`` prints one object, ``{"targets": [{"name", "measured", "target",
"met"}], ...the medians}``, as the only output on stdout (the tables go to stderr);
``--json FILE`` writes it to FILE instead.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import mmap
import os
import resource
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc

from bench._proc import cpu_seconds
from bench._targets import Target, add_json_flag, at_least, at_most, emit, human
from p2pagent._proto import agent_pb2
from p2pagent.identity import material as tls
from p2pagent.models.alloc import keep_chunk_buffers_on_heap
from p2pagent.models.upload import file_sha256
from p2pagent.testing import netns
from p2pagent.testing.cluster import Cluster
from p2pagent.testing.daemon import free_port
from p2pagent.testing.uploads import noop_metadata
from p2pagent.transport.channels import DEFAULT_MAX_MESSAGE_BYTES, secure_channel
from p2pagent.transport.credentials import server_credentials
from p2pagent.transport.server import KEEPALIVE_SERVER_OPTIONS

PIECE = 1 << 20
METHOD = "/bench.Raw/Stream"
SETTLE_S = 120.0
#: The baseline server's port inside n1's namespace (the daemon has 7400 there).
RAW_PORT_NETNS = 7500


def _identity(b: bytes) -> bytes:
    return b


# ---- the baseline server (runs in its own process) -------------------------------------------


async def serve_raw(path: Path, certs: Path, address: str, message: int) -> None:
    keep_chunk_buffers_on_heap(message)  # the daemons' allocator settings, for a fair baseline
    material = tls.load(tls.TLSPaths.in_dir(certs, "n1"))

    async def stream(_request: bytes, _context: object) -> AsyncIterator[bytes]:
        with path.open("rb") as f:
            while piece := f.read(message):
                yield piece

    server = grpc.aio.server(
        options=[
            *KEEPALIVE_SERVER_OPTIONS,
            ("grpc.max_send_message_length", DEFAULT_MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", DEFAULT_MAX_MESSAGE_BYTES),
        ]
    )
    handler = grpc.unary_stream_rpc_method_handler(
        stream, request_deserializer=_identity, response_serializer=_identity
    )
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("bench.Raw", {"Stream": handler})]
    )
    server.add_secure_port(address, server_credentials(lambda: material))
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()


async def fetch_raw(certs: Path, address: str) -> tuple[int, float, float]:
    """Bytes received, seconds, CPU seconds this process spent receiving them."""
    material = tls.load(tls.TLSPaths.in_dir(certs, "n2"))
    async with secure_channel(address, material) as ch:
        call = ch.unary_stream(METHOD, request_serializer=_identity,
                               response_deserializer=_identity)  # fmt: skip
        await ch.channel_ready()
        cpu = _own_cpu_s()
        start = time.perf_counter()
        total = 0
        async for piece in call(b""):
            total += len(piece)
        return total, time.perf_counter() - start, _own_cpu_s() - cpu


def run_fetch_raw(
    certs: Path, address: str, message: int, prefix: list[str]
) -> tuple[int, float, float]:
    """``fetch_raw`` in a process of its own (in n2's namespace when ``prefix`` says so)."""
    out = subprocess.run(
        [*prefix, sys.executable, "-m", "bench.models_transfer", "--fetch-raw", str(certs),
         address, str(message)],
        capture_output=True, text=True, check=True, timeout=900,
    )  # fmt: skip
    got = json.loads(out.stdout.strip().splitlines()[-1])
    return int(got["bytes"]), float(got["seconds"]), float(got["cpu_s"])


# ---- floors ------------------------------------------------------------------------------------


def sha256_cpu_per_gib(path: Path) -> float:
    """CPU s/GiB of SHA-256 over the file's bytes, in pieces of PIECE (reads not counted)."""
    used = 0.0
    with path.open("rb", buffering=0) as f:
        while piece := f.read(PIECE):
            t = time.thread_time()
            hashlib.sha256(piece).digest()
            used += time.thread_time() - t
    return used / (path.stat().st_size / (1 << 30))


def read_cpu_per_gib(path: Path) -> float:
    """CPU s/GiB of reading the file in pieces of PIECE into one buffer (from the page cache
    where it is there, as a holder's chunk files usually are)."""
    buf = bytearray(PIECE)
    t = time.thread_time()
    with path.open("rb", buffering=0) as f:
        while f.readinto(buf):
            pass
    return (time.thread_time() - t) / (path.stat().st_size / (1 << 30))


# ---- helpers -----------------------------------------------------------------------------------


def make_model(path: Path, mib: int, seed: int) -> None:
    """A safetensors-looking file (8-byte length + JSON header) of random bytes."""
    header = b'{"__metadata__":{}}'
    block = os.urandom(PIECE)
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
        left = mib * PIECE - 8 - len(header)
        i = 0
        while left > 0:
            # Distinct chunks (no dedup shortcut): vary each block's first bytes.
            piece = struct.pack("<QQ", seed, i) + block[16:]
            f.write(piece[:left])
            left -= len(piece)
            i += 1


def upload(path: Path, name: str, chunk: int) -> Iterator[agent_pb2.PublishModelRequest]:
    # No tensors: the node's publish check loads it as the noop architecture.
    header = agent_pb2.PublishModelRequest.Header(
        name=name, format="safetensors", size=path.stat().st_size, chunk_size=chunk,
        metadata=noop_metadata(), sha256=file_sha256(path),
    )  # fmt: skip
    yield agent_pb2.PublishModelRequest(header=header)
    with path.open("rb") as f:
        while piece := f.read(PIECE):
            yield agent_pb2.PublishModelRequest(data=piece)


def _own_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def idle_cpu_rate(pids: list[int], seconds: float = 3.0) -> float:
    """CPU seconds per second the processes spend on their own (gossip, timers): subtracted
    from what they use during a pull."""
    before = sum(cpu_seconds(p) for p in pids)
    time.sleep(seconds)
    return (sum(cpu_seconds(p) for p in pids) - before) / seconds


def disk_rate(directory: Path, mib: int, direct: bool = False) -> tuple[float, float]:
    """MB/s of writing ``mib`` MiB to a new file in ``directory`` and fsyncing it once, and
    the CPU seconds per GiB this process spent doing it. ``direct``: past the page cache
    (O_DIRECT from one page-aligned buffer), as the daemon writes pulled chunks."""
    block: bytes | mmap.mmap = os.urandom(PIECE)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    if direct:
        aligned = mmap.mmap(-1, PIECE)
        aligned[:] = block
        block, flags = aligned, flags | os.O_DIRECT
    path = directory / "disk-probe"
    cpu = _own_cpu_s()
    start = time.perf_counter()
    fd = os.open(path, flags, 0o644)
    try:
        for _ in range(mib):
            os.write(fd, block)
        os.fsync(fd)
    finally:
        os.close(fd)
    rate = mib * PIECE / (time.perf_counter() - start) / 1e6
    used = (_own_cpu_s() - cpu) / (mib / 1024)
    path.unlink()
    return rate, used


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds so far of each kind of thread in ``pid``: ``loop`` (the main thread, which
    runs the event loop), ``python`` (the other Python threads: the I/O pool, hashers) and
    gRPC's own threads by name."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            raw = (task / "stat").read_text()
        except OSError:
            continue  # the thread ended meanwhile
        comm = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw.rsplit(")", 1)[1].split()
        kind = "loop" if int(task.name) == pid else comm
        out[kind] = out.get(kind, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def _thread_delta(
    after: dict[str, float], before: dict[str, float], gib: float
) -> dict[str, float]:
    return {k: (v - before.get(k, 0.0)) / gib for k, v in after.items()}


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _all_alive(c: Cluster, names: list[str]) -> bool:
    return all(
        {n for n, (s, _) in c.members(o).items() if s == "alive"} >= set(names) for o in names
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--mib", type=int, default=512, help="model size, MiB")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--chunk-kib", type=int, default=1024)
    p.add_argument("--disk", action="store_true",
                   help="also measure write+fsync of the same bytes on the disk")  # fmt: skip
    p.add_argument("--env", action="append", default=[], metavar="K=V",
                   help="daemon environment, e.g. P2PAGENT_MODELS__FSYNC=false")  # fmt: skip
    p.add_argument("--message-kib", type=int, default=0,
                   help="the baseline's message size (default: the chunk size)")  # fmt: skip
    p.add_argument("--threads", action="store_true",
                   help="print the pull's CPU s/GiB by thread kind")  # fmt: skip
    p.add_argument("--link-mbit", type=float, default=0,
                   help="shape each node's link to N Mbit/s (network namespaces)")  # fmt: skip
    add_json_flag(p)
    p.add_argument("--serve-raw", nargs=4, metavar=("FILE", "CERTS", "ADDRESS", "BYTES"),
                   help=argparse.SUPPRESS)  # fmt: skip
    p.add_argument("--fetch-raw", nargs=3, metavar=("CERTS", "ADDRESS", "BYTES"),
                   help=argparse.SUPPRESS)  # fmt: skip
    args = p.parse_args(argv)
    if args.serve_raw:
        path, certs, address, message = args.serve_raw
        asyncio.run(serve_raw(Path(path), Path(certs), address, int(message)))
        return 0
    if args.fetch_raw:
        keep_chunk_buffers_on_heap(int(args.fetch_raw[2]))  # as the daemons
        size, secs, cpu = asyncio.run(fetch_raw(Path(args.fetch_raw[0]), args.fetch_raw[1]))
        print(json.dumps({"bytes": size, "seconds": secs, "cpu_s": cpu}))
        return 0
    if args.link_mbit and not netns.available():
        print("--link-mbit needs root, ip and tc (network namespaces)", file=sys.stderr)
        return 2
    with human(args.json):
        targets, details = _run(args)
    emit(args.json, targets, **details)
    return 0


def _run(args: argparse.Namespace) -> tuple[list[Target], dict[str, object]]:
    """The rounds and the tables; returns the targets and the medians."""
    base_rates: list[float] = []
    pull_rates: list[float] = []
    ratios: list[float] = []
    publish_rates: list[float] = []
    rss_growth: list[float] = []
    base_cpu: list[float] = []
    pull_cpu: list[float] = []
    #: (sender, receiver) CPU s/GiB: the baseline's server and client; n1 and n2.
    base_sides: list[tuple[float, float]] = []
    pull_sides: list[tuple[float, float]] = []
    disk_rates: list[float] = []
    disk_cpu: list[float] = []
    direct_rates: list[float] = []
    direct_cpu: list[float] = []
    sha_cpu: list[float] = []
    read_cpu: list[float] = []
    #: Per round, n1's and n2's CPU s/GiB during the pull by thread kind (``--threads``).
    pull_threads: list[tuple[dict[str, float], dict[str, float]]] = []
    env = dict(kv.split("=", 1) for kv in args.env)
    message = (args.message_kib or args.chunk_kib) * 1024
    keep_chunk_buffers_on_heap(message)  # the baseline client's, as the daemons'
    with (
        tempfile.TemporaryDirectory(prefix="bench-models-") as tmp,
        Cluster(Path(tmp), 2, use_netns=bool(args.link_mbit), env=env) as c,
    ):
        if args.link_mbit:
            for n in ("n1", "n2"):
                c.shape(n, args.link_mbit)
        prefix = {n: [] if c.network is None else c.network.hosts[n].prefix()
                  for n in ("n1", "n2")}  # fmt: skip
        c.start()
        c.wait_for(lambda: _all_alive(c, ["n1", "n2"]), SETTLE_S, "n1, n2 alive")
        n1_pid = c.nodes["n1"].proc.pid  # type: ignore[union-attr]
        n2_pid = c.nodes["n2"].proc.pid  # type: ignore[union-attr]
        gib = args.mib / 1024
        for r in range(args.rounds):
            model = Path(tmp) / f"model{r}.safetensors"
            make_model(model, args.mib, r)
            sha_cpu.append(sha256_cpu_per_gib(model))
            read_cpu.append(read_cpu_per_gib(model))
            name = f"bench{r}"
            t0 = time.perf_counter()
            v = (
                c.agent("n1", "publisher")
                .PublishModel(upload(model, name, args.chunk_kib * 1024), timeout=900)
                .version
            )
            publish_rates.append(v.size / (time.perf_counter() - t0) / 1e6)
            c.wait_for(
                lambda name=name: (
                    c.agent("n2")
                    .ListModels(agent_pb2.ListModelsRequest(name=name), timeout=10)
                    .versions
                ),
                SETTLE_S,
                "registry on n2",
            )
            host = c.nodes["n1"].host
            port = RAW_PORT_NETNS if c.network is not None else free_port(host)
            raw_address = f"{host}:{port}"
            server = subprocess.Popen(
                [*prefix["n1"], sys.executable, "-m", "bench.models_transfer", "--serve-raw",
                 str(model),
                 str(c.certs), raw_address, str(message)],
                stdout=subprocess.PIPE,
            )  # fmt: skip
            try:
                assert server.stdout is not None
                server.stdout.readline()  # "ready"

                def baseline(
                    model: Path = model, address: str = raw_address, pid: int = server.pid
                ) -> float:
                    server_cpu = cpu_seconds(pid)
                    size, secs, client_cpu = run_fetch_raw(c.certs, address, message, prefix["n2"])
                    assert size == model.stat().st_size, (size, model.stat().st_size)
                    sent = cpu_seconds(pid) - server_cpu
                    base_cpu.append((sent + client_cpu) / gib)
                    base_sides.append((sent / gib, client_cpu / gib))
                    return size / secs / 1e6

                def pull(name: str = name) -> float:
                    idle = [idle_cpu_rate([n1_pid]), idle_cpu_rate([n2_pid])]
                    rss = _status_kib(n2_pid, "VmRSS")
                    threads = [thread_cpu(n1_pid), thread_cpu(n2_pid)]
                    cpu = [cpu_seconds(n1_pid), cpu_seconds(n2_pid)]
                    t = time.perf_counter()
                    got = (
                        c.agent("n2")
                        .PullModel(agent_pb2.PullModelRequest(name=name), timeout=900)
                        .version
                    )
                    secs = time.perf_counter() - t
                    rate = got.size / secs / 1e6
                    sent, received = (
                        (cpu_seconds(p) - before - rate_idle * secs) / gib
                        for p, before, rate_idle in zip((n1_pid, n2_pid), cpu, idle, strict=True)
                    )
                    pull_threads.append(
                        (
                            _thread_delta(thread_cpu(n1_pid), threads[0], gib),
                            _thread_delta(thread_cpu(n2_pid), threads[1], gib),
                        )
                    )
                    pull_cpu.append(sent + received)
                    pull_sides.append((sent, received))
                    rss_growth.append((_status_kib(n2_pid, "VmHWM") - rss) / 1024)
                    assert "n2" in got.holders
                    return rate

                if r % 2 == 0:
                    base, pulled = baseline(), pull()
                else:
                    pulled, base = pull(), baseline()
            finally:
                server.kill()
                server.wait()
            base_rates.append(base)
            pull_rates.append(pulled)
            ratios.append(pulled / base)
            if args.disk:
                # Both probes, in alternating order like the rows above.
                for direct in (False, True) if r % 2 == 0 else (True, False):
                    rate, used = disk_rate(c.nodes["n2"].data, args.mib, direct)
                    (direct_rates if direct else disk_rates).append(rate)
                    (direct_cpu if direct else disk_cpu).append(used)
            print(f"round {r}: baseline {base:.1f} MB/s ({base_cpu[-1]:.2f} CPU s/GiB), "
                  f"pull {pulled:.1f} MB/s ({pull_cpu[-1]:.2f} CPU s/GiB), "
                  f"ratio {pulled / base:.2f}"
                  + (f", disk {disk_rates[-1]:.1f} MB/s, O_DIRECT {direct_rates[-1]:.1f} MB/s"
                     if disk_rates else ""),
                  flush=True)  # fmt: skip
            model.unlink()
    med = statistics.median
    print()
    link = f", links shaped to {args.link_mbit:g} Mbit/s" if args.link_mbit else ", loopback"
    print(f"model {args.mib} MiB, chunks {args.chunk_kib} KiB, baseline messages "
          f"{message // 1024} KiB, {args.rounds} rounds (medians){link}")  # fmt: skip
    print("| row | MB/s | CPU s/GiB (both sides) |")
    print("|---|---:|---:|")
    print(f"| plain gRPC stream, same mTLS (baseline) | {med(base_rates):.1f} "
          f"| {med(base_cpu):.2f} |")  # fmt: skip
    print(f"| PullModel n1 -> n2 (verify + durable writes) | {med(pull_rates):.1f} "
          f"| {med(pull_cpu):.2f} |")  # fmt: skip
    print(f"| PublishModel client -> n1 | {med(publish_rates):.1f} | |")
    if disk_rates:
        print(f"| disk: write + one fsync, same directory | {med(disk_rates):.1f} "
              f"| {med(disk_cpu):.2f} |")  # fmt: skip
        print(f"| disk: O_DIRECT write + one fsync, same directory | {med(direct_rates):.1f} "
              f"| {med(direct_cpu):.2f} |")  # fmt: skip
    print()
    print("| target | measured | met |")
    print("|---|---:|---|")
    ratio = med(ratios)
    print(f"| pull >= 0.8x plain stream | {ratio:.2f}x | {'yes' if ratio >= 0.8 else 'no'} |")
    print(f"| CPU per byte, baseline / pull | {med(base_cpu) / med(pull_cpu):.2f}x | |")
    if disk_rates:
        # The disk bounds the pull by its faster way of writing: the pull may use either.
        bound = min(med(base_rates), max(med(disk_rates), med(direct_rates)))
        print(f"| pull / min(stream, faster disk probe) | {med(pull_rates) / bound:.2f}x | |")
    print(f"| n2 peak RSS growth during the pull | {max(rss_growth):.0f} MB | |")
    print()
    print("| CPU s/GiB by side (medians) | baseline | pull |")
    print("|---|---:|---:|")
    for k, side in enumerate(("sender (raw server / n1)", "receiver (raw client / n2)")):
        print(f"| {side} | {med(b[k] for b in base_sides):.2f} "
              f"| {med(p[k] for p in pull_sides):.2f} |")  # fmt: skip
    print(f"| SHA-256 of the same bytes | {med(sha_cpu):.2f} | |")
    print(f"| reading the same bytes from the file | {med(read_cpu):.2f} | |")
    if args.threads:
        print()
        print("| pull CPU s/GiB by thread kind (medians, idle not subtracted) | n1 | n2 |")
        print("|---|---:|---:|")
        kinds = sorted({k for pair in pull_threads for side in pair for k in side})
        for kind in kinds:
            cells = [med(pair[s].get(kind, 0.0) for pair in pull_threads) for s in (0, 1)]
            if max(cells) >= 0.005:
                print(f"| {kind} | {cells[0]:.2f} | {cells[1]:.2f} |")
    send_floor = med(b[0] for b in base_sides) + med(read_cpu)
    recv_floor = med(b[1] for b in base_sides) + med(sha_cpu)
    sender, receiver = med(p[0] for p in pull_sides), med(p[1] for p in pull_sides)
    targets = [
        at_most("receiver CPU/GiB vs (plain receiver + SHA-256)",
                round(receiver / recv_floor, 3), 1.25),
        at_most("sender CPU/GiB vs (plain sender + read)", round(sender / send_floor, 3), 1.25),
    ]  # fmt: skip
    if args.link_mbit:
        targets += [
            at_least(f"pull / plain stream over {args.link_mbit:g} Mbit/s", round(ratio, 3), 0.9),
            at_least("publish / pull", round(med(publish_rates) / med(pull_rates), 3), 0.8),
        ]
    print()
    print("| target | measured | limit | met |")
    print("|---|---:|---:|---|")
    for t in targets:
        print(f"| {t.name} | {t.measured:.2f}x | {t.target} | {'yes' if t.met else 'no'} |")
    details: dict[str, object] = {
        "mib": args.mib,
        "rounds": args.rounds,
        "link_mbit": args.link_mbit,
        "stream_mb_s": round(med(base_rates), 1),
        "pull_mb_s": round(med(pull_rates), 1),
        "publish_mb_s": round(med(publish_rates), 1),
        "sender_cpu_s_per_gib": {"plain": round(med(b[0] for b in base_sides), 3),
                                 "pull": round(sender, 3), "read": round(med(read_cpu), 3)},
        "receiver_cpu_s_per_gib": {"plain": round(med(b[1] for b in base_sides), 3),
                                   "pull": round(receiver, 3), "sha256": round(med(sha_cpu), 3)},
        "n2_peak_rss_growth_mb": round(max(rss_growth), 1),
    }  # fmt: skip
    return targets, details


if __name__ == "__main__":
    raise SystemExit(main())
