"""p2pagentctl's conventions: a target without a port dials 7400, the certificate variables a
node's own environment sets are read, completion scripts for bash, zsh and fish complete
commands and flags, booleans read as words, and the health check exits 0 or 1 only."""

from __future__ import annotations

import argparse
import shutil
import subprocess
from pathlib import Path

import pytest

from p2pagent.cli import client, health
from p2pagent.cli.completion_cmd import command_tree, script
from p2pagent.cli.ctl import main, parser
from p2pagent.cli.output import key_values
from p2pagent.identity import certs
from p2pagent.identity.spiffe import Role


@pytest.mark.parametrize(
    ("given", "dialled"),
    [
        ("127.0.0.1", "127.0.0.1:7400"),
        ("node-1.mesh", "node-1.mesh:7400"),
        ("node-1.mesh:7401", "node-1.mesh:7401"),
        ("[::1]", "[::1]:7400"),
        ("[::1]:7401", "[::1]:7401"),
        ("::1", "[::1]:7400"),
    ],
)
def test_a_target_without_a_port_dials_7400(given: str, dialled: str) -> None:
    assert client.with_port(given) == dialled


def test_several_targets_each_get_the_default_port() -> None:
    args = argparse.Namespace(target="a, b:7401 ,")
    assert client.targets_of(args) == ["a:7400", "b:7401"]


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    certs.init_ca(tmp_path, "test")
    certs.issue(tmp_path, "n1", Role.NODE, ["127.0.0.1"])
    return tmp_path


def test_the_node_certificate_variables_are_read(
    pki: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("P2PAGENT_CERTS", "P2PAGENT_TARGET"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("P2PAGENT_CA", str(pki / "ca.crt"))
    monkeypatch.setenv("P2PAGENT_CERT", str(pki / "n1.crt"))
    monkeypatch.setenv("P2PAGENT_KEY", str(pki / "n1.key"))
    args = parser().parse_args(["status"])  # the defaults are read when the parser is made
    assert client.material_of(args).identity.name == "n1"


def test_without_any_certificates_the_error_names_flags_and_variables(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for var in ("P2PAGENT_CERTS", "P2PAGENT_CA", "P2PAGENT_CERT", "P2PAGENT_KEY"):
        monkeypatch.delenv(var, raising=False)
    assert main(["status"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--certs" in err and "P2PAGENT_CA" in err


def test_booleans_read_as_words() -> None:
    shown = key_values({"found": True, "deleted": False}).split()
    assert shown == ["found", "yes", "deleted", "no"]


def _tree() -> dict[str, list[str]]:
    return command_tree(parser())


def test_the_completion_tree_holds_every_command_and_its_flags() -> None:
    tree = _tree()
    assert {"status", "state", "models", "completion"} <= set(tree["p2pagentctl"])
    assert {"get", "put", "watch"} <= set(tree["p2pagentctl state"])
    assert "--target" in tree["p2pagentctl state get"]
    assert {"bash", "zsh", "fish"} <= set(tree["p2pagentctl completion"])


def test_bash_completes_commands_subcommands_and_flags() -> None:
    bash = shutil.which("bash")
    assert bash is not None
    text = script("bash", _tree())

    def complete(*words: str) -> set[str]:
        line = " ".join(f"'{w}'" for w in ("p2pagentctl", *words))
        program = (
            f"{text}\nCOMP_WORDS=({line}); COMP_CWORD={len(words)}; _p2pagentctl; "
            'printf "%s\\n" "${COMPREPLY[@]}"'
        )
        out = subprocess.run([bash, "-c", program], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        return set(out.stdout.split())

    assert complete("sta") == {"state", "status"}
    assert complete("state", "g") == {"get"}
    # Flags between words are skipped on the way down.
    assert complete("--target", "state", "get", "--t") == {"--target", "--timeout"}
    assert complete("completion", "") >= {"bash", "zsh", "fish"}


def test_zsh_completes_subcommands() -> None:
    zsh = shutil.which("zsh")
    if zsh is None:
        pytest.skip("zsh is not installed")
    text = script("zsh", _tree())
    # compadd and compdef exist only inside the completion system: stand-ins print the words.
    program = (
        'compdef() { :; }; compadd() { shift; print -l -- "$@"; }\n'
        f"{text}\nwords=(p2pagentctl state g); CURRENT=3; _p2pagentctl"
    )
    out = subprocess.run([zsh, "-f", "-c", program], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert {"get", "put", "watch"} <= set(out.stdout.split())


def test_fish_completes_subcommands() -> None:
    fish = shutil.which("fish")
    if fish is None:
        pytest.skip("fish is not installed")
    text = script("fish", _tree())
    program = f"{text}\ncomplete -C 'p2pagentctl state '"
    out = subprocess.run(
        [fish, "--no-config", "-c", program], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    assert {"get", "put", "watch"} <= {line.split("\t")[0] for line in out.stdout.splitlines()}


def test_completion_prints_the_script(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["completion", "bash"]) == 0
    assert "complete -o default -F _p2pagentctl p2pagentctl" in capsys.readouterr().out


def test_health_check_exits_1_not_2_on_bad_configuration(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert health.main(["--name", "n1", "--certs", str(tmp_path / "none")]) == 1
    assert capsys.readouterr().err.startswith("unhealthy: ")
    with pytest.raises(SystemExit) as e:
        health.main(["--no-such-flag"])
    assert e.value.code == 1
