"""Start, signal, pause and restart real ``p2pagentd`` processes, and always clean them up.

Each daemon runs in its own process group (so a kill reaches anything it spawned) and logs to
a file in its data directory. `Daemon.stop` sends SIGTERM and waits; `kill` sends SIGKILL.
Every started daemon is also registered for an atexit sweep, so a failing test that forgets to
stop one still leaves nothing behind.
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from p2pagent.identity import material as tls
from p2pagent.transport.channels import channel_options

_WORKER_MODULE = b"p2pagent.inference.worker_main"

#: ``p2pagent.cli.grpc_quiet.QUIETED`` (not imported: importing it quiets this process).
QUIETED = "P2PAGENT_GRPC_QUIETED"
_LIVE: set[Daemon] = set()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(eq=False)
class Daemon:
    name: str
    certs: Path
    data: Path
    host: str = "127.0.0.1"
    port: int = 0
    seeds: list[str] = field(default_factory=list)
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    #: Command prefix, e.g. ["ip", "netns", "exec", "ns1"] to run inside a network namespace.
    prefix: list[str] = field(default_factory=list)
    #: The module run with ``python -m``: the daemon itself, or a wrapper around its ``main``
    #: (``p2pagent.testing.startup_modules`` reports the modules it imported).
    module: str = "p2pagent.cli.daemon"
    proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        if not self.port:
            self.port = free_port(self.host)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data / "daemon.log"

    def command(self) -> list[str]:
        cmd = [
            *self.prefix,
            sys.executable,
            # -P: the daemon imports p2pagent from the install or PYTHONPATH, never from the
            # caller's working directory (which `python -m` would put first on sys.path: a
            # benchmark comparing two trees ran the tree it was started from in both).
            "-P",
            "-m",
            self.module,
            "--name",
            self.name,
            "--listen",
            self.address,
            "--certs",
            str(self.certs),
            "--data",
            str(self.data),
        ]
        if self.seeds:
            cmd += ["--seeds", ",".join(self.seeds)]
        return cmd + self.args

    def start(self, wait: bool = True, timeout: float = 30.0) -> Daemon:
        self.data.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.env}
        if env.pop(QUIETED, None) and "GRPC_VERBOSITY" not in self.env:
            env.pop("GRPC_VERBOSITY", None)  # the CLI's quieting, imported in this process
        log = self.log_path.open("ab")
        try:
            self.proc = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        finally:
            log.close()
        _LIVE.add(self)
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Waits until the daemon answers the gRPC health check with SERVING."""
        deadline = time.monotonic() + timeout
        material = tls.load(tls.TLSPaths.in_dir(self.certs, self.name))
        creds = grpc.ssl_channel_credentials(material.ca_pem, material.key_pem, material.cert_pem)
        with grpc.secure_channel(
            self.address, creds, options=channel_options(material.cluster, 4 << 20)
        ) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            while True:
                if self.proc is not None and self.proc.poll() is not None:
                    raise RuntimeError(
                        f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}"
                    )
                try:
                    resp = stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                    if resp.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.name} not ready in {timeout}s:\n{self.log_tail()}")
                time.sleep(0.1)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def worker_pids(self) -> list[int]:
        """Pids of this daemon's model worker processes (its children running worker_main)."""
        if self.proc is None:
            return []
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == self.proc.pid and _WORKER_MODULE in cmdline:
                found.append(int(entry))
        return found

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then wait; SIGKILL if it does not exit in time. Returns the exit status."""
        if self.proc is None:
            return None
        self.signal(signal.SIGCONT)  # a paused daemon cannot handle SIGTERM
        self.signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.proc.wait(5)
        _LIVE.discard(self)
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is None:
            return
        self.signal(signal.SIGKILL)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        _LIVE.discard(self)

    def pause(self) -> None:
        self.signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.signal(signal.SIGCONT)

    def restart(self, wait: bool = True, timeout: float = 30.0) -> Daemon:
        """Starts again with the same name, address and data directory."""
        if self.running:
            self.kill()
        return self.start(wait, timeout)


def _sweep() -> None:
    for d in list(_LIVE):
        d.kill()


atexit.register(_sweep)
