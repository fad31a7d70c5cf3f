"""Simulated hosts on one machine: a network namespace per node, joined by veth pairs to a
bridge, with partitions (blackhole routes), `tc netem` latency, jitter and loss, and links
shaped to a fixed rate (`tc tbf`, which works on kernels without netem).

Needs root and ``ip netns`` (iproute2). `available()` says whether this machine can; callers
fall back to 127.0.0.x loopback addresses otherwise. Addresses come from a private /24 that
exists only inside the namespaces this module creates and the bridge it owns; `teardown`
removes every namespace, link and bridge it made, and runs at exit as well.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
from dataclasses import dataclass, field

SUBNET = "10.213.{net}."


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


class NetemUnavailable(RuntimeError):
    """The kernel has no netem qdisc (some sandboxes); latency and loss cannot be injected."""


def netem_available() -> bool:
    """Whether ``tc qdisc ... netem`` works here (tried on a scratch namespace's loopback)."""
    if not available():
        return False
    probe = f"p2pnetem{os.getpid()}"
    _ip("netns", "add", probe, check=False)
    try:
        _ip("netns", "exec", probe, "ip", "link", "set", "lo", "up", check=False)
        r = _ip("netns", "exec", probe, "tc", "qdisc", "add", "dev", "lo", "root", "netem",
                "delay", "1ms", check=False)  # fmt: skip
        return r.returncode == 0
    finally:
        _ip("netns", "del", probe, check=False)


def loss_available() -> bool:
    """Whether packet loss can be injected: netem, or else iptables' statistic match."""
    return available() and (shutil.which("iptables") is not None or netem_available())


def available() -> bool:
    if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("tc") is None:
        return False
    probe = f"p2pprobe{os.getpid()}"
    if _ip("netns", "add", probe, check=False).returncode != 0:
        return False
    _ip("netns", "del", probe, check=False)
    return True


@dataclass
class Host:
    name: str
    netns: str
    veth_host: str  # end in the root namespace, attached to the bridge
    veth_ns: str  # end inside the namespace
    address: str

    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.netns]


@dataclass(eq=False)
class Network:
    """A bridge and one namespace per host. Use as a context manager."""

    tag: str
    net: int = 213
    hosts: dict[str, Host] = field(default_factory=dict)
    bridge: str = ""
    _blocked: set[tuple[str, str]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.bridge = f"p2pbr{self.tag}"[:15]

    def __enter__(self) -> Network:
        _OPEN.add(self)  # registered first, so a failure half-way is still cleaned up
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{SUBNET.format(net=self.net)}254/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        return self

    def __exit__(self, *exc: object) -> None:
        self.teardown()

    def add_host(self, name: str) -> Host:
        index = len(self.hosts) + 1
        ns = f"p2p{self.tag}{name}"[:15]
        vh, vn = f"vh{self.tag}{index}"[:15], f"vn{self.tag}{index}"[:15]
        address = f"{SUBNET.format(net=self.net)}{index}"
        _ip("netns", "add", ns)
        _ip("link", "add", vh, "type", "veth", "peer", "name", vn)
        _ip("link", "set", vn, "netns", ns)
        _ip("link", "set", vh, "master", self.bridge)
        _ip("link", "set", vh, "up")
        _ip("netns", "exec", ns, "ip", "link", "set", "lo", "up")
        _ip("netns", "exec", ns, "ip", "addr", "add", f"{address}/24", "dev", vn)
        _ip("netns", "exec", ns, "ip", "link", "set", vn, "up")
        host = Host(name, ns, vh, vn, address)
        self.hosts[name] = host
        return host

    # ---- faults ------------------------------------------------------------------------------

    def partition(self, left: list[str], right: list[str]) -> None:
        """No packet crosses between the two groups, in either direction."""
        for a in left:
            for b in right:
                self._block(a, b)
                self._block(b, a)

    def heal(self) -> None:
        for a, b in list(self._blocked):
            h = self.hosts[a]
            _ip("netns", "exec", h.netns, "ip", "route", "del", "blackhole",
                f"{self.hosts[b].address}/32", check=False)  # fmt: skip
        self._blocked.clear()

    def _block(self, a: str, b: str) -> None:
        if (a, b) in self._blocked:
            return
        h = self.hosts[a]
        _ip("netns", "exec", h.netns, "ip", "route", "add", "blackhole",
            f"{self.hosts[b].address}/32")  # fmt: skip
        self._blocked.add((a, b))

    def netem(self, name: str, delay_ms: float = 0, jitter_ms: float = 0, loss: float = 0) -> None:
        """Latency, jitter and loss on everything ``name`` sends."""
        h = self.hosts[name]
        args = ["netns", "exec", h.netns, "tc", "qdisc", "replace", "dev", h.veth_ns, "root",
                "netem"]  # fmt: skip
        if delay_ms:
            args += ["delay", f"{delay_ms}ms"] + ([f"{jitter_ms}ms"] if jitter_ms else [])
        if loss:
            args += ["loss", f"{loss * 100:.2f}%"]
        result = _ip(*args, check=False)
        if result.returncode != 0:
            raise NetemUnavailable(
                f"tc netem failed on {name} ({result.stderr.strip()}): this kernel may lack "
                "the sch_netem module"
            )

    def shape(self, name: str, mbit: float) -> None:
        """Caps ``name``'s link at ``mbit`` Mbit/s in each direction (a token bucket on both ends
        of its veth pair: what it sends, and what the bridge sends to it), like a NIC of that
        speed. Traffic between two shaped hosts crosses two buckets of the same rate."""
        h = self.hosts[name]
        # Burst: a few milliseconds at the rate (tbf needs at least one full-size segment; the
        # veth hands it GSO segments of up to 64 KiB). Queue: 20 ms at the rate, like a NIC.
        burst = max(int(mbit * 1e6 / 8 * 0.004), 256 * 1024)
        limit = max(int(mbit * 1e6 / 8 * 0.02), 2 * burst)
        spec = ["root", "tbf", "rate", f"{mbit}mbit", "burst", str(burst), "limit", str(limit)]
        for prefix, dev in ((h.prefix(), h.veth_ns), ([], h.veth_host)):
            r = subprocess.run([*prefix, "tc", "qdisc", "replace", "dev", dev, *spec],
                               capture_output=True, text=True, check=False)  # fmt: skip
            if r.returncode != 0:
                raise NetemUnavailable(f"tc tbf failed on {name} ({dev}): {r.stderr.strip()}")

    def clear_shape(self, name: str) -> None:
        h = self.hosts[name]
        for prefix, dev in ((h.prefix(), h.veth_ns), ([], h.veth_host)):
            subprocess.run([*prefix, "tc", "qdisc", "del", "dev", dev, "root"],
                           capture_output=True, check=False)  # fmt: skip

    def drop(self, name: str, loss: float) -> None:
        """Random packet loss on everything ``name`` sends and receives, with packet filters
        (``iptables -m statistic``) in its namespace: for kernels without netem."""
        h = self.hosts[name]
        self.clear_drop(name)
        for chain in ("INPUT", "OUTPUT"):
            r = subprocess.run(
                [*h.prefix(), "iptables", "-A", chain, "-m", "statistic", "--mode", "random",
                 "--probability", f"{loss:.4f}", "-j", "DROP"],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            if r.returncode != 0:
                raise NetemUnavailable(f"iptables failed on {name}: {r.stderr.strip()}")

    def clear_drop(self, name: str) -> None:
        h = self.hosts[name]
        for chain in ("INPUT", "OUTPUT"):
            subprocess.run([*h.prefix(), "iptables", "-F", chain], capture_output=True, check=False)

    def clear_netem(self, name: str) -> None:
        h = self.hosts[name]
        _ip("netns", "exec", h.netns, "tc", "qdisc", "del", "dev", h.veth_ns, "root", check=False)

    def teardown(self) -> None:
        for h in self.hosts.values():
            _ip("netns", "del", h.netns, check=False)
            _ip("link", "del", h.veth_host, check=False)
        self.hosts.clear()
        _ip("link", "del", self.bridge, check=False)
        _OPEN.discard(self)


_OPEN: set[Network] = set()


def _sweep() -> None:
    for n in list(_OPEN):
        n.teardown()


atexit.register(_sweep)
