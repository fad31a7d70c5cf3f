"""A cluster of real ``p2pagentd`` processes for tests, benchmarks and chaos runs.

Each node runs in its own network namespace when this machine allows it (root and
``ip netns``), otherwise on its own 127.0.0.x loopback address. The harness can SIGKILL,
SIGSTOP/SIGCONT and restart a node with its data directory, partition two groups, and add
latency, jitter and loss (namespaces only). Leaving the ``with`` block tears everything down,
even when the body raised.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import TypeVar

import grpc

from p2pagent._proto import agent_pb2, agent_pb2_grpc
from p2pagent.identity import certs
from p2pagent.identity import material as tls
from p2pagent.identity.spiffe import Role
from p2pagent.testing import netns
from p2pagent.testing.daemon import Daemon, free_port
from p2pagent.transport.channels import channel_options

T = TypeVar("T")


class Cluster:
    def __init__(
        self,
        root: Path,
        size: int,
        *,
        cluster: str = "test",
        use_netns: bool | None = None,
        args: list[str] | None = None,
        env: dict[str, str] | None = None,
        port: int = 7400,
    ) -> None:
        self.root = root
        self.certs = root / "certs"
        self.size = size
        self.cluster = cluster
        self.args = list(args or [])
        self.env = dict(env or {})
        self.use_netns = netns.available() if use_netns is None else use_netns
        self.network: netns.Network | None = None
        self.nodes: dict[str, Daemon] = {}
        self._port = port
        self._channels: dict[str, grpc.Channel] = {}

    # ---- setup -------------------------------------------------------------------------------

    def __enter__(self) -> Cluster:
        try:
            self._make_certs()
            if self.use_netns:
                self.network = netns.Network(tag=f"{os.getpid() % 10000}").__enter__()
            names = [f"n{i}" for i in range(1, self.size + 1)]
            for i, name in enumerate(names):
                self.nodes[name] = self._daemon(name, i)
            seed = [self.nodes[names[0]].address]
            for name in names[1:]:
                self.nodes[name].seeds = seed
        except BaseException:
            self.teardown()
            raise
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.teardown()

    def _make_certs(self) -> None:
        if not (self.certs / "ca.crt").exists():
            certs.init_ca(self.certs, self.cluster)
        for i in range(1, self.size + 1):
            if not (self.certs / f"n{i}.crt").exists():
                certs.issue(self.certs, f"n{i}", Role.NODE)
        for role in (Role.CLIENT, Role.PUBLISHER, Role.ADMIN):
            if not (self.certs / f"{role.value}.crt").exists():
                certs.issue(self.certs, role.value, role)

    def _daemon(self, name: str, index: int) -> Daemon:
        data = self.root / name
        if self.network is not None:
            host = self.network.add_host(name)
            return Daemon(name, self.certs, data, host=host.address, port=self._port,
                          args=list(self.args), env=dict(self.env),
                          prefix=host.prefix())  # fmt: skip
        address = f"127.0.0.{index + 2}"
        return Daemon(name, self.certs, data, host=address, port=free_port(address),
                      args=list(self.args), env=dict(self.env))  # fmt: skip

    def start(self, names: list[str] | None = None, wait: bool = True) -> None:
        for name in names or list(self.nodes):
            self.nodes[name].start(wait=False)
        if wait:
            for name in names or list(self.nodes):
                self.nodes[name].wait_ready()

    # ---- faults ------------------------------------------------------------------------------

    def kill(self, name: str) -> None:
        self.nodes[name].kill()

    def pause(self, name: str) -> None:
        self.nodes[name].pause()

    def resume(self, name: str) -> None:
        self.nodes[name].resume()

    def restart(self, name: str) -> None:
        self.nodes[name].restart()

    def partition(self, left: list[str], right: list[str]) -> None:
        if self.network is None:
            raise RuntimeError("partitions need network namespaces (root and ip netns)")
        self.network.partition(left, right)

    def heal(self) -> None:
        if self.network is not None:
            self.network.heal()

    def loss(self, name: str, loss: float) -> None:
        """Random loss of ``loss`` (0..1) of ``name``'s packets; 0 clears it. Uses netem where
        the kernel has it, else packet filters."""
        if self.network is None:
            raise RuntimeError("loss needs network namespaces (root and ip netns)")
        if netns.netem_available():
            if loss:
                self.network.netem(name, loss=loss)
            else:
                self.network.clear_netem(name)
        elif loss:
            self.network.drop(name, loss)
        else:
            self.network.clear_drop(name)

    def netem(self, name: str, delay_ms: float = 0, jitter_ms: float = 0, loss: float = 0) -> None:
        if self.network is None:
            raise RuntimeError("netem needs network namespaces (root and ip netns)")
        self.network.netem(name, delay_ms, jitter_ms, loss)

    def shape(self, name: str, mbit: float) -> None:
        """Caps ``name``'s link at ``mbit`` Mbit/s each way (``tc tbf``; works without netem)."""
        if self.network is None:
            raise RuntimeError("shaping needs network namespaces (root and ip netns)")
        self.network.shape(name, mbit)

    # ---- teardown ----------------------------------------------------------------------------

    # ---- queries (blocking; for tests and benches) --------------------------------------------

    def agent(self, name: str, identity: str = "client") -> agent_pb2_grpc.AgentServiceStub:
        """A blocking ``Agent`` stub to ``name``, presenting the certificate ``identity``
        (``client``, ``publisher`` or ``admin``, one per role, or a node's name)."""
        ch = self._channels.get(f"{name}/{identity}")
        if ch is None:
            m = tls.load(tls.TLSPaths.in_dir(self.certs, identity))
            creds = grpc.ssl_channel_credentials(m.ca_pem, m.key_pem, m.cert_pem)
            ch = grpc.secure_channel(
                self.nodes[name].address, creds, options=channel_options(m.cluster, 64 << 20)
            )
            self._channels[f"{name}/{identity}"] = ch
        return agent_pb2_grpc.AgentServiceStub(ch)

    def members(self, name: str, timeout: float = 2.0) -> dict[str, tuple[str, int]]:
        """``name``'s view: member -> (state, incarnation); empty if it does not answer."""
        try:
            resp = self.agent(name).Members(agent_pb2.MembersRequest(), timeout=timeout)
        except grpc.RpcError:
            return {}
        return {m.name: (m.state, m.incarnation) for m in resp.members}

    def wait_for(
        self, check: Callable[[], T], timeout: float, what: str, interval: float = 0.2
    ) -> T:
        """Polls ``check`` until it returns something truthy; raises with ``what`` on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"not within {timeout}s: {what}")
            time.sleep(interval)

    def all_see(self, observers: list[str], subject: str, state: str) -> bool:
        """Whether every observer lists ``subject`` in ``state``."""
        return all(self.members(o).get(subject, ("", 0))[0] == state for o in observers)

    # ---- teardown ----------------------------------------------------------------------------

    def teardown(self) -> None:
        for ch in self._channels.values():
            ch.close()
        self._channels.clear()
        for d in self.nodes.values():
            d.kill()
        if self.network is not None:
            self.network.teardown()
            self.network = None

    @property
    def addresses(self) -> dict[str, str]:
        return {n: d.address for n, d in self.nodes.items()}
