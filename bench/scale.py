"""What an idle mesh costs each node as it grows (issue "Flat idle cost").

    python -m bench.scale [--sizes 8,32,64] [--idle 120] [--sim-sizes 16,64,256,1000] [--json]

For each size N, N state-only daemons (no model served) start at once on this machine's
loopback addresses, join through one seed and idle. Reported per node:

* join: seconds from the last daemon answering its health check until every member lists
  every other alive (target at N = 64: <= 5 s); with it ``join_storm``, read from the
  daemons' logs from the first start to the end of the settle time: suspicions logged, members
  suspected, false deaths, how long an observer held a suspicion (p50 / p90 / max) and when
  the last one began after the last daemon answered (``bench/_suspicion_log.py``);
* idle CPU: % of one core over the idle window, from /proc/<pid>/stat of each daemon's
  process group (its journal writer included); target <= 0.6 % at N = 64, and N = 64 no more
  than 1.2x N = 8;
* bytes sent per second: iptables counters (as root) on every daemon port, both directions,
  over the idle window, divided by N (every packet has one daemon's listen port at one end).
  The idle window starts once the mesh has stopped opening connections (no new TCP
  connection to any daemon port for ``CONNECTED_QUIET_S``, waiting at most one probe round,
  N probe intervals, after the settle time): each member opens one mutual-TLS connection
  per peer the first time it sends to it (about 7 KB on the wire with TCP, TLS and HTTP/2
  set-up), and at N = 64 its probe round-robin reaches its last peers a minute or more
  after the join. A window right after a 30 s settle counted those one-off handshakes as
  idle cost: 1,505-1,563 bytes per node per s at N = 64 against 1,154 after the wait
  (N = 8: 1,016 either way; issue 28, RESULTS). New connections left in the window are
  reported (``new_connections_per_node_per_s``), as is the wait (``connect_wait_s``;
  ``--no-connected-wait`` starts the window right after the settle time, as before).
  Without iptables (no wait, no count), bytes written by the processes (``wchar`` of
  /proc/<pid>/io: sockets and files, an upper bound), and the table says so; target <= 1,500
  at N = 64 and <= 1.2x N = 8;
* RSS: MB per node (process group) at the end of the idle window; N = 64 <= 1.15x N = 8;
* false suspicions: members that went ``suspect`` or ``dead`` in any daemon's log during the
  idle window (target 0);
* SIGKILL detection: seconds from killing one daemon until every other has logged it dead
  (read from the daemons' log timestamps, so that polling 63 daemons one after another on a
  busy machine does not add its own seconds; the polled time is reported beside it), against
  memberlist's model time at that N (first probe + failed probe + the suspicion timeout with
  its expected confirmations: ``2 * probe_interval + suspicion_mult * log10(N) *
  probe_interval``); target <= 1.5x. Also reported: when the first member logged it suspect
  (the model allows two probe intervals for that; a mesh whose Lifeguard awareness is up
  probes more slowly and takes longer).

Then the same membership cores in the deterministic simulator (``p2pagent.sim.membership``),
idle, for N up to 1,000: messages and bytes per node per second through the shipped cores and
codec (target: flat within 1.3x from N = 16 up); and a simulated mass join (every member
started within 3 s, each knowing only the seed, 5 % loss): seconds from the last start until
every member sees every other alive (target: 5 s, as for real daemons), and push-pulls per
member.

Every daemon is killed when the run ends, on failure and on Ctrl-C or SIGTERM too; the
iptables chain is removed the same way. Ratios are within one run: on a shared machine read
the ratios, and rerun the absolute numbers on a quiet one.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bench import _suspicion_log
from bench._proc import cpu_seconds
from p2pagent.membership.config import MembershipConfig
from p2pagent.membership.timing import push_pull_interval, suspicion_min
from p2pagent.sim.membership import MembershipScenario, simulate, simulate_mass_join
from p2pagent.testing.cluster import Cluster

POLL_S = 0.5
#: The mesh counts as connected (the idle window may start) after this long without a new
#: TCP connection to any daemon (see the module doc, "bytes sent per second").
CONNECTED_QUIET_S = 10.0
JOIN_LIMIT_S = 300.0
#: The join target (issue 28); a slower join records who lacked whom at this point.
JOIN_TARGET_S = 5.0
DETECT_LIMIT_S = 120.0
#: A member's state change as each daemon logs it (membership/driver.py).
SUSPECT_LINE = re.compile(r"member (\S+) is (suspect|dead) \(")
#: The same line with the text log format's time stamp (p2pagent/logs.py).
STAMPED_LINE = re.compile(
    r"^(\d\d):(\d\d):(\d\d)\.(\d\d\d) .*member (\S+) is (suspect|dead) \(", re.M
)


# ---- per-process numbers ----------------------------------------------------------------


def group_pids(pgid: int) -> list[int]:
    """Processes of one process group (a daemon and anything it spawned)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            out.append(int(entry.name))
    return out


def group_cpu(pgid: int) -> float:
    total = 0.0
    for pid in group_pids(pgid):
        try:
            total += cpu_seconds(pid)
        except OSError:
            pass
    return total


def group_rss_mb(pgid: int) -> float:
    total = 0
    for pid in group_pids(pgid):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def group_wchar(pgid: int) -> int:
    total = 0
    for pid in group_pids(pgid):
        try:
            for line in Path(f"/proc/{pid}/io").read_text().splitlines():
                if line.startswith("wchar:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


# ---- bytes on the wire ----------------------------------------------------------------------


class PortCounters:
    """iptables byte counters for traffic to and from a set of TCP ports, in a chain of our
    own (``P2PSCALE<pid>``) jumped to from OUTPUT; ``close`` removes both."""

    def __init__(self, ports: list[int]) -> None:
        self.chain = f"P2PSCALE{os.getpid()}"
        self._ipt("-N", self.chain)
        try:
            for port in ports:
                # No target: counts connection openings (SYN) to the port and falls through.
                self._ipt("-A", self.chain, "-p", "tcp", "--dport", str(port), "--syn")
                self._ipt("-A", self.chain, "-p", "tcp", "--sport", str(port), "-j", "RETURN")
                self._ipt("-A", self.chain, "-p", "tcp", "--dport", str(port), "-j", "RETURN")
            self._ipt("-I", "OUTPUT", "-j", self.chain)
        except BaseException:
            self.close()
            raise

    @staticmethod
    def available() -> bool:
        if os.geteuid() != 0 or shutil.which("iptables") is None:
            return False
        return subprocess.run(["iptables", "-L", "OUTPUT", "-n"], capture_output=True,
                              check=False).returncode == 0  # fmt: skip

    def _ipt(self, *args: str) -> str:
        out = subprocess.run(["iptables", "-w", *args], capture_output=True, text=True,
                             check=True)  # fmt: skip
        return out.stdout

    def new_connections(self) -> int:
        """TCP connections opened to a daemon port so far (SYN packets counted)."""
        listing = self._ipt("-L", self.chain, "-v", "-x", "-n")
        return sum(int(line.split()[0]) for line in listing.splitlines()[2:]
                   if "flags:" in line)  # fmt: skip

    def wait_connected(self, limit_s: float) -> float:
        """Waits until no new connection was opened for ``CONNECTED_QUIET_S`` (at most
        ``limit_s``); returns the seconds waited."""
        t0 = last_change = time.monotonic()
        seen = self.new_connections()
        while time.monotonic() - last_change < CONNECTED_QUIET_S:
            if time.monotonic() - t0 >= limit_s:
                break
            time.sleep(1.0)
            now_seen = self.new_connections()
            if now_seen != seen:
                seen, last_change = now_seen, time.monotonic()
        return time.monotonic() - t0

    def total_bytes(self) -> int:
        listing = self._ipt("-L", self.chain, "-v", "-x", "-n")
        total = 0
        for line in listing.splitlines()[2:]:
            fields = line.split()
            if len(fields) > 2 and fields[2] == "RETURN":
                total += int(fields[1])
        return total

    def close(self) -> None:
        for args in (("-D", "OUTPUT", "-j", self.chain), ("-F", self.chain), ("-X", self.chain)):
            subprocess.run(["iptables", "-w", *args], capture_output=True, check=False)


# ---- one mesh of real daemons ---------------------------------------------------------------


@dataclass
class ClusterRow:
    nodes: int
    join_s: float | None
    idle_s: float
    cpu_pct: float
    bytes_per_s: float
    bytes_source: str
    rss_mb: float
    false_suspicions: int
    #: Until every other member answered ``dead`` to the harness's polling.
    detection_s: float | None
    #: Until the last other member logged it dead (the target's measure).
    detection_logged_s: float | None
    #: Until the first member logged it suspect.
    first_suspect_s: float | None
    model_detection_s: float
    #: When the join missed its target: each observer that did not list everyone alive at
    #: that moment -> {member: its state there, or "absent"} (what to read the logs for).
    join_stragglers: dict[str, dict[str, str]] | None = None
    #: Seconds waited after the settle time for the mesh to stop opening connections.
    connect_wait_s: float | None = None
    #: TCP connections opened to daemon ports during the idle window, per node per second.
    new_connections_per_node_per_s: float | None = None
    #: Suspicions from the first start to the end of the settle time (the join's storm).
    join_storm: _suspicion_log.SuspicionStorm | None = None


def model_detection_s(n: int, cfg: MembershipConfig) -> float:
    """memberlist's time to declare a killed member dead at ``n`` (see the module doc)."""
    return 2 * cfg.probe_interval + suspicion_min(cfg.suspicion_mult, n, cfg.probe_interval)


def _states(c: Cluster, observer: str) -> dict[str, str]:
    return {name: state for name, (state, _) in c.members(observer, timeout=5.0).items()}


def _all_alive(c: Cluster, names: list[str]) -> bool:
    for o in names:
        view = _states(c, o)
        if any(view.get(n) != "alive" for n in names):
            return False
    return True


def _stragglers(c: Cluster, names: list[str]) -> dict[str, dict[str, str]]:
    """Every observer's members that are not alive in its view (a full sweep, for the record)."""
    out: dict[str, dict[str, str]] = {}
    for o in names:
        view = _states(c, o)
        bad = {n: view.get(n, "absent") for n in names if view.get(n) != "alive"}
        if bad:
            out[o] = bad
    return out


def _suspicions(c: Cluster, offsets: dict[str, int]) -> int:
    count = 0
    for name, d in c.nodes.items():
        try:
            with d.log_path.open("rb") as f:
                f.seek(offsets.get(name, 0))
                text = f.read().decode(errors="replace")
        except OSError:
            continue
        count += sum(1 for _ in SUSPECT_LINE.finditer(text))
    return count


def _stamp(hms: tuple[str, ...], near: float) -> float:
    """A log line's ``HH:MM:SS.mmm`` (local time) as a Unix time, on the day of ``near``."""
    h, m, s, ms = (int(x) for x in hms)
    day = datetime.datetime.fromtimestamp(near)
    t = day.replace(hour=h, minute=m, second=s, microsecond=ms * 1000).timestamp()
    if t < near - 43_200:  # the line is from just after midnight
        t += 86_400
    return t


def _logged(c: Cluster, offsets: dict[str, int], victim: str, killed_at: float
            ) -> tuple[float | None, float | None]:  # fmt: skip
    """(seconds until the first member logged ``victim`` suspect, until the last logged it
    dead; None if one never did), reading each log from its offset at the kill."""
    suspect: list[float] = []
    dead: dict[str, float] = {}
    for name, d in c.nodes.items():
        if name == victim:
            continue
        with d.log_path.open("rb") as f:
            f.seek(offsets.get(name, 0))
            text = f.read().decode(errors="replace")
        for m in STAMPED_LINE.finditer(text):
            if m.group(5) != victim:
                continue
            t = _stamp(m.groups()[:4], killed_at) - killed_at
            if m.group(6) == "suspect":
                suspect.append(t)
            else:
                dead.setdefault(name, t)
    everyone = len(dead) == len(c.nodes) - 1
    return (round(min(suspect), 2) if suspect else None,
            round(max(dead.values()), 2) if everyone else None)  # fmt: skip


def _log_sizes(c: Cluster) -> dict[str, int]:
    return {n: d.log_path.stat().st_size if d.log_path.exists() else 0 for n, d in c.nodes.items()}


def run_cluster(n: int, idle_s: float, settle_s: float, root: Path, port_bytes: bool,
                connected_wait: bool = True) -> ClusterRow:  # fmt: skip
    cfg = MembershipConfig()
    with Cluster(root / f"n{n}", n, use_netns=False) as c:
        names = list(c.nodes)
        started_at = time.time()
        c.start(wait=False)
        for name in names:
            c.nodes[name].wait_ready(timeout=JOIN_LIMIT_S)
        ready = time.monotonic()
        ready_at = time.time()
        join_s: float | None = None
        stragglers: dict[str, dict[str, str]] | None = None
        while time.monotonic() - ready < JOIN_LIMIT_S:
            if _all_alive(c, names):
                join_s = time.monotonic() - ready
                break
            if stragglers is None and time.monotonic() - ready > JOIN_TARGET_S:
                stragglers = _stragglers(c, names)
            time.sleep(POLL_S)
        counters = PortCounters([c.nodes[name].port for name in names]) if port_bytes else None
        connect_wait: float | None = None
        new_conns = 0
        try:
            time.sleep(settle_s)
            logs = [d.log_path for d in c.nodes.values()]
            storm = _suspicion_log.read(logs, started_at, time.time(), ready_at)
            pgids = {name: c.nodes[name].proc.pid for name in names}  # type: ignore[union-attr]
            if counters is not None and connected_wait:
                connect_wait = counters.wait_connected(n * cfg.probe_interval)
            offsets = _log_sizes(c)
            cpu0 = {name: group_cpu(p) for name, p in pgids.items()}
            wchar0 = sum(group_wchar(p) for p in pgids.values())
            bytes0 = counters.total_bytes() if counters else 0
            conns0 = counters.new_connections() if counters else 0
            t0 = time.monotonic()
            time.sleep(idle_s)
            span = time.monotonic() - t0
            cpu = sum(group_cpu(p) - cpu0[name] for name, p in pgids.items())
            sent = (counters.total_bytes() - bytes0) if counters else (
                sum(group_wchar(p) for p in pgids.values()) - wchar0
            )  # fmt: skip
            new_conns = (counters.new_connections() - conns0) if counters else 0
        finally:
            if counters is not None:
                counters.close()
        rss = sum(group_rss_mb(p) for p in pgids.values()) / n
        suspicions = _suspicions(c, offsets)
        victim = names[len(names) // 2]
        others = [x for x in names if x != victim]
        at_kill = _log_sizes(c)
        c.kill(victim)
        killed = time.monotonic()
        killed_at = time.time()
        detection: float | None = None
        try:
            c.wait_for(lambda: c.all_see(others, victim, "dead"), DETECT_LIMIT_S, "dead",
                       interval=POLL_S)  # fmt: skip
            detection = time.monotonic() - killed
        except TimeoutError:
            pass
        first_suspect, logged = _logged(c, at_kill, victim, killed_at)
    return ClusterRow(
        nodes=n,
        join_s=None if join_s is None else round(join_s, 2),
        idle_s=round(span, 1),
        cpu_pct=round(100 * cpu / span / n, 3),
        bytes_per_s=round(sent / span / n, 1),
        bytes_source="iptables" if port_bytes else "wchar (no iptables: upper bound)",
        rss_mb=round(rss, 1),
        false_suspicions=suspicions,
        detection_s=None if detection is None else round(detection, 2),
        detection_logged_s=logged,
        first_suspect_s=first_suspect,
        model_detection_s=round(model_detection_s(n, cfg), 2),
        join_stragglers=stragglers,
        join_storm=storm,
        connect_wait_s=None if connect_wait is None else round(connect_wait, 1),
        new_connections_per_node_per_s=(
            round(new_conns / span / n, 4) if counters is not None else None
        ),
    )


# ---- the simulator --------------------------------------------------------------------------


@dataclass
class SimRow:
    nodes: int
    seconds: float
    messages_per_node_per_s: float
    bytes_per_node_per_s: float
    false_positives: int


def run_sim(n: int, duration: float) -> SimRow:
    """Idle: no join, no crash within ``duration`` (virtual seconds)."""
    r = simulate(MembershipScenario(nodes=n, duration=duration, join_at=duration + 1,
                                    crash_at=duration + 1, seed=1))  # fmt: skip
    return SimRow(n, duration, r.messages_per_node_per_s, r.bytes_per_node_per_s,
                  r.false_positives)  # fmt: skip


@dataclass
class JoinSimRow:
    nodes: int
    seconds_to_full: float | None
    push_pulls_per_node: float
    false_positives: int


def run_join_sim(n: int) -> JoinSimRow:
    r = simulate_mass_join(MembershipScenario(nodes=n, loss=0.05, seed=1), 3.0, 120.0)
    return JoinSimRow(n, r.seconds_to_full, r.push_pulls_per_node, r.false_positives)


def sim_duration(n: int, minimum: float) -> float:
    """Two push-pull intervals at ``n`` (the interval grows with N; the first round of each
    member falls in the first one and a half), so that every size is measured alike."""
    return max(minimum, 2 * push_pull_interval(MembershipConfig().push_pull_interval, n))


# ---- targets --------------------------------------------------------------------------------


def targets(
    rows: list[ClusterRow], sims: list[SimRow], joins: list[JoinSimRow]
) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []

    def add(name: str, measured: float | None, target: float) -> None:
        met = measured is not None and measured <= target
        out.append({"name": name, "measured": measured, "target": target, "met": met})

    if rows:
        small, big = rows[0], rows[-1]
        n = big.nodes
        add(f"join at N={n}: all alive after the last answered (s)", big.join_s, JOIN_TARGET_S)
        add(f"false suspicions during {big.idle_s:.0f} s idle at N={n}", big.false_suspicions, 0)
        add(f"idle CPU per node at N={n} (% of a core)", big.cpu_pct, 0.6)
        add(f"bytes sent per node per s at N={n} ({big.bytes_source})", big.bytes_per_s, 1500)
        detected = big.detection_logged_s or big.detection_s
        ratio = None if detected is None else round(detected / big.model_detection_s, 2)
        add(f"SIGKILL detection at N={n} / memberlist model time", ratio, 1.5)
        if big is not small:
            m = small.nodes
            add(f"idle CPU N={n} / N={m}", _ratio(big.cpu_pct, small.cpu_pct), 1.2)
            add(f"bytes per s N={n} / N={m}", _ratio(big.bytes_per_s, small.bytes_per_s), 1.2)
            add(f"RSS N={n} / N={m}", _ratio(big.rss_mb, small.rss_mb), 1.15)
    for j in joins:
        add(f"simulated mass join at N={j.nodes}: all see all after the last start (s)",
            j.seconds_to_full, 5.0)  # fmt: skip
    flat = [s for s in sims if s.nodes >= 16]
    if len(flat) >= 2:
        lo, hi = flat[0], flat[-1]
        for what in ("messages_per_node_per_s", "bytes_per_node_per_s"):
            values = [getattr(s, what) for s in flat]
            add(f"simulator {what} max/min, N={lo.nodes}..{hi.nodes}",
                _ratio(max(values), min(values)), 1.3)  # fmt: skip
    return out


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 2) if b > 0 else None


# ---- main -----------------------------------------------------------------------------------


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", default="8,32,64", help="mesh sizes of real daemons, comma-separated")
    p.add_argument("--idle", type=float, default=120.0, help="idle window, seconds")
    p.add_argument("--settle", type=float, default=30.0, help="seconds after the join, first")
    p.add_argument("--sim-sizes", default="16,64,256,1000", help="simulated sizes ('' for none)")
    p.add_argument("--sim-min-s", type=float, default=30.0, help="shortest simulated run, s")
    p.add_argument("--join-sim-sizes", default="64,256", help="simulated mass joins ('' for none)")
    p.add_argument("--no-iptables", action="store_true", help="count bytes with wchar instead")
    p.add_argument("--no-connected-wait", action="store_true",
                   help="start the idle window right after --settle, before the mesh stopped "
                   "opening connections")  # fmt: skip
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    sizes = [int(x) for x in args.sizes.split(",") if x]
    sim_sizes = [int(x) for x in args.sim_sizes.split(",") if x]
    join_sizes = [int(x) for x in args.join_sim_sizes.split(",") if x]
    port_bytes = not args.no_iptables and PortCounters.available()
    rows: list[ClusterRow] = []
    with tempfile.TemporaryDirectory(prefix="p2pscale-") as tmp:
        for n in sizes:
            rows.append(run_cluster(n, args.idle, args.settle, Path(tmp), port_bytes,
                                    not args.no_connected_wait))  # fmt: skip
            # Progress (stderr with --json, whose stdout is one document).
            print(json.dumps(asdict(rows[-1])), flush=True, file=sys.stderr if args.json else None)
    sims = [run_sim(n, sim_duration(n, args.sim_min_s)) for n in sim_sizes]
    joins = [run_join_sim(n) for n in join_sizes]
    result = targets(rows, sims, joins)
    if args.json:
        doc = {"cluster": [asdict(r) for r in rows], "sim": [asdict(s) for s in sims],
               "join_sim": [asdict(j) for j in joins], "targets": result}  # fmt: skip
        print(json.dumps(doc, indent=2))
        return
    print("\n| N | join s | idle CPU % | bytes/s | RSS MB | false susp. | detect s: logged / "
          "polled (model) | first suspect s | new conns/node/s (wait s) |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r.nodes} | {r.join_s} | {r.cpu_pct} | {r.bytes_per_s:.0f} | {r.rss_mb} | "
              f"{r.false_suspicions} | {r.detection_logged_s} / {r.detection_s} "
              f"({r.model_detection_s}) | {r.first_suspect_s} | "
              f"{r.new_connections_per_node_per_s} ({r.connect_wait_s}) |")  # fmt: skip
    if rows:
        print(f"\nbytes counted by: {rows[0].bytes_source}")
    print("\n| simulated N | virtual s | messages/node/s | bytes/node/s | false deaths |")
    print("|---:|---:|---:|---:|---:|")
    for s in sims:
        print(f"| {s.nodes} | {s.seconds:.0f} | {s.messages_per_node_per_s} | "
              f"{s.bytes_per_node_per_s} | {s.false_positives} |")  # fmt: skip
    print("\n| simulated mass join, N | all see all after the last start, s | push-pulls per "
          "member | false deaths |\n|---:|---:|---:|---:|")  # fmt: skip
    for j in joins:
        print(f"| {j.nodes} | {j.seconds_to_full} | {j.push_pulls_per_node} | "
              f"{j.false_positives} |")  # fmt: skip
    print("\n| target | measured | target | met |\n|---|---:|---:|---|")
    for t in result:
        print(f"| {t['name']} | {t['measured']} | {t['target']} | {'yes' if t['met'] else 'no'} |")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted: every daemon was stopped")
