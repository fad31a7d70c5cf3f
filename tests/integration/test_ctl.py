"""p2pagentctl against a real daemon: tables, JSON, and one-line failures."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from p2pagent.testing.daemon import Daemon, free_port


def ctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "p2pagent.cli.ctl", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, certs_dir: Path) -> Iterator[Daemon]:
    d = Daemon("n5", certs_dir, tmp_path_factory.mktemp("data") / "n5").start()
    try:
        yield d
    finally:
        d.kill()


def test_status_table_and_json(node: Daemon, certs_dir: Path) -> None:
    common = ["--target", node.address, "--certs", str(certs_dir)]
    table = ctl("status", *common)
    assert table.returncode == 0, table.stderr
    assert "spiffe://test/node/n5" in table.stdout
    doc = json.loads(ctl("status", *common, "--json").stdout)
    assert doc["name"] == "n5"
    assert doc["address"] == node.address


def test_members_json_has_the_documented_fields(node: Daemon, certs_dir: Path) -> None:
    r = ctl("members", "--target", node.address, "--certs", str(certs_dir), "--json")
    assert r.returncode == 0, r.stderr
    members = json.loads(r.stdout)
    me = next(m for m in members if m["name"] == "n5")
    assert set(me) >= {"name", "address", "state", "incarnation", "tags"}
    assert me["state"] == "alive"


def test_unreachable_target_is_one_line(certs_dir: Path) -> None:
    r = ctl("status", "--target", f"127.0.0.1:{free_port()}", "--certs", str(certs_dir))
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "cannot reach" in r.stderr
    assert "Traceback" not in r.stderr


def test_refused_certificate_is_one_line(node: Daemon, expired_certs_dir: Path) -> None:
    # The expired certificate is refused before anything is sent: load() checks it locally.
    r = ctl("status", "--target", node.address, "--certs", str(expired_certs_dir))
    assert r.returncode == 2
    assert "expired" in r.stderr and r.stderr.count("\n") == 1


def test_certs_init_and_issue(tmp_path: Path) -> None:
    d = tmp_path / "pki"
    assert ctl("certs", "init", "--dir", str(d), "--cluster", "prod").returncode == 0
    again = ctl("certs", "init", "--dir", str(d), "--cluster", "prod")
    assert again.returncode == 1 and "--force" in again.stderr
    r = ctl(
        "certs", "issue", "--dir", str(d), "--name", "web", "--role", "node", "--host",
        "10.1.2.3", "--host", "web.local", "--json",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["identity"] == "spiffe://prod/node/web"
    assert stat.S_IMODE(os.stat(d / "web.key").st_mode) == 0o600
    bad = ctl("certs", "issue", "--dir", str(d), "--name", "../x", "--role", "client")
    assert bad.returncode == 2 and "invalid name" in bad.stderr
