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
    assert r.stderr.count("\n") == 1 and "no node could be reached" in r.stderr
    assert "cannot connect" in r.stderr and "Traceback" not in r.stderr


def test_several_targets_the_first_that_answers_is_used(node: Daemon, certs_dir: Path) -> None:
    down = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    r = ctl("status", "--target", ",".join([*down, node.address]), "--certs", str(certs_dir),
            "--json")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["name"] == "n5"
    r = ctl("top", "--once", "--target", f"{down[0]},{node.address}", "--certs", str(certs_dir))
    assert r.returncode == 0 and "n5" in r.stdout, r.stderr
    r = ctl("status", "--target", ",".join(down), "--certs", str(certs_dir))
    assert r.returncode == 1 and r.stderr.count("\n") == 1
    # The same failover and message as the Python client's: every node and why it failed.
    assert "no node could be reached" in r.stderr
    assert down[0] in r.stderr and down[1] in r.stderr


def test_refused_certificate_is_one_line(node: Daemon, expired_certs_dir: Path) -> None:
    # The expired certificate is refused before anything is sent: load() checks it locally.
    r = ctl("status", "--target", node.address, "--certs", str(expired_certs_dir))
    assert r.returncode == 2
    assert "expired" in r.stderr and r.stderr.count("\n") == 1


def test_a_certificate_from_another_ca_is_one_line_without_grpc_log_lines(
    node: Daemon, foreign_certs_dir: Path
) -> None:
    r = ctl("status", "--target", node.address, "--certs", str(foreign_certs_dir))
    assert r.returncode == 1
    # gRPC's C core would print "I1207 ... ssl_transport_security.cc:2563] Handshake failed"
    # on the terminal before our line.
    assert r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("p2pagentctl: error: ") and "TLS handshake failed" in r.stderr


def test_the_variables_a_pod_sets_are_enough(node: Daemon, certs_dir: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("P2PAGENT_")}
    env |= {
        "P2PAGENT_CA": str(certs_dir / "ca.crt"),
        "P2PAGENT_CERT": str(certs_dir / "n1.crt"),
        "P2PAGENT_KEY": str(certs_dir / "n1.key"),
        "P2PAGENT_TARGET": node.address,
    }
    r = subprocess.run(
        [sys.executable, "-m", "p2pagent.cli.ctl", "status", "--json"],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["name"] == "n5"


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


def _assert_one_line(r: subprocess.CompletedProcess[str], status: int, *needles: str) -> None:
    assert r.returncode == status, (r.returncode, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("p2pagentctl") and "error:" in lines[0]
    assert "Traceback" not in r.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_unknown_flag_is_one_line_pointing_at_help() -> None:
    r = ctl("status", "--bogus")
    _assert_one_line(r, 2, "unrecognized arguments: --bogus", "--help")


def test_missing_command_and_missing_argument_are_one_line() -> None:
    _assert_one_line(ctl(), 2, "COMMAND")
    _assert_one_line(ctl("infer", "--input", "x.json"), 2, "--model", "p2pagentctl infer --help")


def test_certificate_directory_that_does_not_exist_is_one_line(
    node: Daemon, tmp_path: Path
) -> None:
    r = ctl("status", "--target", node.address, "--certs", str(tmp_path / "nowhere"))
    _assert_one_line(r, 2, "does not exist", "nowhere")


def test_no_certificates_at_all_says_which_flag_to_pass(node: Daemon) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "p2pagent.cli.ctl", "status", "--target", node.address],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "P2PAGENT_CERTS"},
    )
    _assert_one_line(r, 2, "--certs")


def test_unknown_model_is_one_line(node: Daemon, certs_dir: Path, tmp_path: Path) -> None:
    x = tmp_path / "x.json"
    x.write_text("[[1.0, 2.0, 3.0]]")
    r = ctl(
        "infer", "--target", node.address, "--certs", str(certs_dir), "--model", "no-such-model",
        "--input", str(x),
    )  # fmt: skip
    _assert_one_line(r, 1, "no-such-model")


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (None, "does not exist"),
        ("{not json", "cannot read input file"),
        ('"text"', "must be a list or an object"),
    ],
)
def test_bad_input_file_is_one_line(
    node: Daemon, certs_dir: Path, tmp_path: Path, content: str | None, needle: str
) -> None:
    x = tmp_path / "in.json"
    if content is not None:
        x.write_text(content)
    r = ctl(
        "infer", "--target", node.address, "--certs", str(certs_dir), "--model", "m",
        "--input", str(x),
    )  # fmt: skip
    _assert_one_line(r, 2, needle)


def test_top_once_shows_every_member_as_a_table_and_as_json(node: Daemon, certs_dir: Path) -> None:
    common = ["--target", node.address, "--certs", str(certs_dir)]
    r = ctl("top", "--once", *common)
    assert r.returncode == 0, r.stderr
    header, *rows = r.stdout.splitlines()[1:]
    assert header.split()[:3] == ["NAME", "STATE", "ADDRESS"]
    row = next(ln for ln in rows if ln.startswith("n5 "))
    assert row.split()[1] == "alive" and node.address in row
    # Aligned: every column starts at the same offset in the header and the row.
    assert row.index(node.address) == header.index("ADDRESS")
    doc = json.loads(ctl("top", "--once", "--json", *common).stdout)
    me = next(m for m in doc if m["name"] == "n5")
    assert me["state"] == "alive" and me["queue"] == 0
    assert set(me) >= {"device", "running", "backlog_s", "tasks_per_s", "completed", "models"}


def test_top_iterations_print_one_json_line_per_refresh(node: Daemon, certs_dir: Path) -> None:
    r = ctl(
        "top", "--target", node.address, "--certs", str(certs_dir), "--json", "--iterations",
        "2", "--interval", "0.1",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    snaps = [json.loads(ln) for ln in r.stdout.splitlines()]
    assert len(snaps) == 2
    assert all(any(m["name"] == "n5" for m in s["members"]) for s in snaps)
    # The second refresh has a rate (completed tasks per second since the first).
    second = next(m for m in snaps[1]["members"] if m["name"] == "n5")
    assert second["tasks_per_s"] == 0


def test_reader_going_away_ends_quietly(node: Daemon, certs_dir: Path) -> None:
    # `p2pagentctl ... | head -1`: the pipe is closed before the command writes.
    with subprocess.Popen(
        [sys.executable, "-m", "p2pagent.cli.ctl", "top", "--once", "--json", "--target",
         node.address, "--certs", str(certs_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:  # fmt: skip
        try:
            assert proc.stdout is not None and proc.stderr is not None
            proc.stdout.close()
            err = proc.stderr.read()
            assert proc.wait(60) == 1
            assert err == ""
        finally:
            proc.kill()
