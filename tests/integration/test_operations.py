"""What an operator relies on, against a real p2pagentd: systemd readiness (sd_notify),
certificate rotation by SIGHUP and by rewriting the files, the health check tool, and log
lines that all carry the node name, in text and in JSON."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import pytest
from cryptography import x509

from p2pagent.cli import cert_reload
from p2pagent.cli.cert_reload import CertificateReloader
from p2pagent.errors import ConfigError
from p2pagent.identity import certs
from p2pagent.identity import material as tls
from p2pagent.identity.certs import node_dns_name
from p2pagent.identity.spiffe import Role
from p2pagent.testing.daemon import Daemon
from p2pagent.transport.channels import ChannelPool

CLUSTER = "test"


@pytest.fixture
def own_certs(certs_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the test CA and certificates, safe to rotate in place."""
    d = tmp_path / "certs"
    shutil.copytree(certs_dir, d)
    return d


def served_serial(address: str, certs_dir: Path) -> int:
    """The serial number of the certificate the node presents in a fresh TLS handshake."""
    host, port = address.rsplit(":", 1)
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(certs_dir / "ca.crt"))
    ctx.load_cert_chain(certs_dir / "client.crt", certs_dir / "client.key")
    ctx.set_alpn_protocols(["h2"])
    with (
        socket.create_connection((host, int(port)), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname=node_dns_name(CLUSTER)) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def wait_for(predicate: object, what: str, limit_s: float = 30.0) -> None:
    """Polls ``predicate`` (bounded); fails naming ``what`` when it never holds."""
    assert callable(predicate)
    deadline = time.monotonic() + limit_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {limit_s}s")
        time.sleep(0.1)


def test_notifies_systemd_ready_then_stopping(
    certs_dir: Path, tmp_path: Path, daemons: list[Daemon]
) -> None:
    # AF_UNIX paths are limited to 108 bytes: pytest's tmp_path can be longer.
    sock_dir = Path(tempfile.mkdtemp(prefix="p2p-notify-"))
    path = sock_dir / "notify"
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(str(path))
            sock.settimeout(30)
            d = Daemon("n6", certs_dir, tmp_path / "n6", env={"NOTIFY_SOCKET": str(path)})
            daemons.append(d)
            d.start()  # returns once health says SERVING
            assert sock.recv(4096) == b"READY=1"
            d.signal(signal.SIGTERM)
            assert sock.recv(4096) == b"STOPPING=1"
            assert d.proc is not None and d.proc.wait(30) == 0
    finally:
        shutil.rmtree(sock_dir, ignore_errors=True)


def test_without_notify_socket_nothing_is_sent_and_it_serves(
    certs_dir: Path, tmp_path: Path, daemons: list[Daemon]
) -> None:
    d = Daemon("n6", certs_dir, tmp_path / "n6", env={"NOTIFY_SOCKET": ""})
    daemons.append(d)
    d.start()
    assert "cannot notify systemd" not in d.log_tail()


def test_sighup_rotates_the_served_certificate(
    own_certs: Path, tmp_path: Path, daemons: list[Daemon]
) -> None:
    d = Daemon("n7", own_certs, tmp_path / "n7", args=["--log-level", "info"])
    d.env["P2PAGENT_CERT_CHECK_INTERVAL"] = "0"  # only the signal may reload here
    daemons.append(d)
    d.start()
    before = served_serial(d.address, own_certs)
    fresh = certs.issue(own_certs, "n7", Role.NODE, ["127.0.0.1"], force=True)
    new_serial = x509.load_pem_x509_certificate(fresh.cert.read_bytes()).serial_number
    assert before != new_serial
    assert served_serial(d.address, own_certs) == before  # no reload without the signal
    d.signal(signal.SIGHUP)
    wait_for(lambda: served_serial(d.address, own_certs) == new_serial, "SIGHUP reload")
    assert "certificates reloaded" in d.log_tail()


def test_sighup_with_broken_files_keeps_serving_the_old_certificate(
    own_certs: Path, tmp_path: Path, daemons: list[Daemon]
) -> None:
    d = Daemon("n7", own_certs, tmp_path / "n7")
    d.env["P2PAGENT_CERT_CHECK_INTERVAL"] = "0"
    daemons.append(d)
    d.start()
    before = served_serial(d.address, own_certs)
    (own_certs / "n7.key").write_text("not a key\n")
    d.signal(signal.SIGHUP)
    wait_for(lambda: "certificate reload failed" in d.log_tail(), "the refusal log line")
    assert d.running
    assert served_serial(d.address, own_certs) == before


def test_rewritten_certificate_files_are_picked_up_without_a_signal(
    own_certs: Path, tmp_path: Path, daemons: list[Daemon]
) -> None:
    d = Daemon("n8", own_certs, tmp_path / "n8")
    d.env["P2PAGENT_CERT_CHECK_INTERVAL"] = "0.2"
    daemons.append(d)
    d.start()
    before = served_serial(d.address, own_certs)
    fresh = certs.issue(own_certs, "n8", Role.NODE, ["127.0.0.1"], force=True)
    new_serial = x509.load_pem_x509_certificate(fresh.cert.read_bytes()).serial_number
    assert new_serial != before
    wait_for(lambda: served_serial(d.address, own_certs) == new_serial, "file-change reload")
    assert "certificate files changed on disk" in d.log_tail()


def _health(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "p2pagent.cli.health", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_health_tool_checks_the_local_node_from_its_own_settings(
    certs_dir: Path, tmp_path: Path, daemons: list[Daemon]
) -> None:
    # As in the container: settings in P2PAGENT_* variables, listening on a wildcard, the
    # advertised name not resolvable from here. The tool dials loopback.
    d = Daemon("n6", certs_dir, tmp_path / "n6", host="127.0.0.1")
    daemons.append(d)
    d.start()
    env = {
        "PATH": "/usr/bin:/bin",
        "P2PAGENT_NAME": "n6",
        "P2PAGENT_CERTS": str(certs_dir),
        "P2PAGENT_LISTEN": f"0.0.0.0:{d.port}",
        "P2PAGENT_ADVERTISE": f"n6.invalid:{d.port}",
    }
    ok = _health(env=env)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == "SERVING"
    assert _health("--live", env=env).returncode == 0
    d.stop()
    assert _health("--live", env=env).returncode == 1
    down = _health(env=env)
    assert down.returncode == 1
    # One line: gRPC's own "connect failed" log lines stay off the probe's output.
    assert down.stderr.startswith("unhealthy: UNAVAILABLE") and down.stderr.count("\n") == 1
    # A configuration error is unhealthy too: Docker reserves exit status 2.
    bad = _health(env={**env, "P2PAGENT_NAME": "nobody"})
    assert bad.returncode == 1 and "nobody.crt does not exist" in bad.stderr


def _log_lines(d: Daemon) -> list[str]:
    return [ln for ln in d.log_path.read_text().splitlines() if ln.strip()]


def test_text_log_lines_all_carry_the_node_name(
    certs_dir: Path, tmp_path: Path, daemons: list[Daemon]
) -> None:
    d = Daemon("n5", certs_dir, tmp_path / "n5")
    daemons.append(d)
    d.start()
    assert d.stop() == 0
    lines = _log_lines(d)
    assert any("serving on" in ln for ln in lines)
    assert [ln for ln in lines if " [n5] " not in ln] == []


def test_json_log_lines_are_one_object_each_with_the_node_name(
    certs_dir: Path, tmp_path: Path, daemons: list[Daemon]
) -> None:
    d = Daemon("n5", certs_dir, tmp_path / "n5", args=["--log-format", "json"])
    daemons.append(d)
    d.start()
    assert d.stop() == 0
    docs = [json.loads(ln) for ln in _log_lines(d)]  # fails on any line that is not JSON
    assert any("serving on" in doc["msg"] for doc in docs)
    for doc in docs:
        assert doc["node"] == "n5"
        assert {"ts", "level", "logger", "msg"} <= set(doc)


_LIBRARY_NOISE = """
import logging, os, threading, warnings
from p2pagent.logs import setup
setup("lib-node", "info", FORMAT, native=True)
logging.getLogger("grpc._cython.cygrpc").warning("a library line")
# What gRPC's C core writes to fd 2 itself, bypassing Python; the second is rate-limited.
for _ in range(2):
    os.write(2, b"E1130 19:13:31.648367   29409 ssl_transport_security.cc:3238] native line\\n")
os.write(2, b"I1130 19:13:31.650445   29409 ssl_transport_security.cc:2563] debug only\\n")
warnings.warn("a deprecation someone forgot", UserWarning)
t = threading.Thread(target=lambda: 1 / 0, name="worker")
t.start(); t.join()
raise RuntimeError("nobody caught this")
"""


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_library_lines_warnings_and_uncaught_errors_carry_the_node_name(fmt: str) -> None:
    r = subprocess.run(
        [sys.executable, "-c", _LIBRARY_NOISE.replace("FORMAT", repr(fmt))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    if fmt == "json":
        docs = [json.loads(ln) for ln in lines]
        assert {d["node"] for d in docs} == {"lib-node"}
        text = "\n".join(d["msg"] + d.get("exc", "") for d in docs)
        assert len(docs) == 5
        native = [d for d in docs if d["logger"] == "native"]
        assert [d["level"] for d in native] == ["error"]
    else:
        assert [ln for ln in lines if "[lib-node]" not in ln] == []
        text = r.stderr
    for needle in ("a library line", "a deprecation", "ZeroDivisionError", "nobody caught"):
        assert needle in text
    assert text.count("ssl_transport_security.cc:3238: native line") == 1
    assert "debug only" not in text


def test_json_daemon_turns_grpc_core_lines_into_json(
    certs_dir: Path, tmp_path: Path, daemons: list[Daemon]
) -> None:
    d = Daemon("n5", certs_dir, tmp_path / "n5", args=["--log-format", "json"])
    daemons.append(d)
    d.start()
    # A stranger without a client certificate, asking for a server name nobody has: gRPC's
    # C core reports the failed handshake on fd 2 by itself.
    host, port = d.address.rsplit(":", 1)
    ctx = ssl.create_default_context(cafile=str(certs_dir / "ca.crt"))
    ctx.check_hostname = False
    ctx.set_alpn_protocols(["h2"])
    try:
        with (
            socket.create_connection((host, int(port)), timeout=10) as raw,
            ctx.wrap_socket(raw, server_hostname="stranger.example") as tls_sock,
        ):
            tls_sock.recv(1)
    except OSError:
        pass  # refused, as it should be; what matters is how the daemon logged it
    assert d.stop() == 0
    docs = [json.loads(ln) for ln in _log_lines(d)]  # fails on any line that is not JSON
    assert {doc["node"] for doc in docs} == {"n5"}
    assert any(doc["logger"] == "native" for doc in docs)


class _FakeNode:
    """Just what CertificateReloader uses of a Node: its channel pool and the reload call."""

    def __init__(self, pool: ChannelPool, refuse: bool = False) -> None:
        self.channels = pool
        self.refuse = refuse
        self.reloads = 0

    def reload_certificates(self) -> None:
        if self.refuse:
            raise ConfigError("private key n1.key does not belong to certificate n1.crt")
        self.reloads += 1


async def test_reload_redials_peers_and_closes_the_old_channels(
    certs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cert_reload, "RETIRE_GRACE_S", 0.0)
    material = tls.load(tls.TLSPaths.in_dir(certs_dir, "n1"))
    pool = ChannelPool(lambda: material)
    node = _FakeNode(pool)
    reloader = CertificateReloader(node)  # type: ignore[arg-type]
    old = pool.get("127.0.0.1:9")
    try:
        assert reloader.reload()
        assert node.reloads == 1
        fresh = pool.get("127.0.0.1:9")
        assert fresh is not old  # the next call dials with the reloaded certificate
        for _ in range(100):  # bounded: the close runs as a task on this loop
            if old.get_state() is grpc.ChannelConnectivity.SHUTDOWN:
                break
            await asyncio.sleep(0.01)
        assert old.get_state() is grpc.ChannelConnectivity.SHUTDOWN
        assert fresh.get_state() is not grpc.ChannelConnectivity.SHUTDOWN
    finally:
        await reloader.close()
        await pool.close()


async def test_refused_reload_keeps_the_channels(certs_dir: Path) -> None:
    material = tls.load(tls.TLSPaths.in_dir(certs_dir, "n1"))
    pool = ChannelPool(lambda: material)
    reloader = CertificateReloader(_FakeNode(pool, refuse=True))  # type: ignore[arg-type]
    ch = pool.get("127.0.0.1:9")
    try:
        assert not reloader.reload()
        assert pool.get("127.0.0.1:9") is ch
    finally:
        await reloader.close()
        await pool.close()


def test_unknown_daemon_flag_is_one_line() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "p2pagent.cli.daemon", "--no-such-flag"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1
    assert r.stderr.startswith("p2pagentd: error: unrecognized arguments: --no-such-flag")
