"""proto/ passes buf's STANDARD lint rules (proto/buf.yaml).

With ``buf`` on PATH the test runs it; without, it runs the same rules in Python
(``p2pagent._proto.lint``), whose findings on a file that breaks every rule must equal what buf
printed for it (tests/unit/proto_lint_fixture/buf_lint.txt, recorded with buf 1.75.0, and buf
itself where it is installed).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from p2pagent._proto import lint

FIXTURE = Path(__file__).parent / "proto_lint_fixture"
BUF = shutil.which("buf")


def _buf_lint(proto_dir: Path) -> subprocess.CompletedProcess[str]:
    assert BUF is not None
    return subprocess.run(
        [BUF, "lint"], cwd=proto_dir, capture_output=True, text=True, timeout=300, check=False
    )


def test_protos_pass_the_python_rules() -> None:
    found = lint.lint(lint.PROTO_DIR)
    assert not found, "buf lint findings in proto/:\n" + "\n".join(map(str, found))


@pytest.mark.skipif(BUF is None, reason="buf is not installed; the Python rules stand in")
def test_protos_pass_buf_lint() -> None:
    done = _buf_lint(lint.PROTO_DIR)
    assert done.returncode == 0, done.stdout + done.stderr


def test_python_rules_find_what_buf_found() -> None:
    """Every STANDARD rule broken once or more; line, column and message equal to buf's."""
    expected = (FIXTURE / "buf_lint.txt").read_text().splitlines()
    got = [str(f) for f in lint.lint(FIXTURE)]
    assert got == expected
    rules = {f.rule for f in lint.lint(FIXTURE)}
    # Each family of rule the project meets is exercised by the fixture.
    assert {
        "ENUM_VALUE_PREFIX", "ENUM_ZERO_VALUE_SUFFIX", "RPC_REQUEST_RESPONSE_UNIQUE",
        "RPC_REQUEST_STANDARD_NAME", "RPC_RESPONSE_STANDARD_NAME", "SERVICE_SUFFIX",
        "IMPORT_USED", "PACKAGE_DIRECTORY_MATCH", "FILE_LOWER_SNAKE_CASE",
    } <= rules  # fmt: skip


@pytest.mark.skipif(BUF is None, reason="buf is not installed; the recorded output stands in")
def test_python_rules_agree_with_the_installed_buf() -> None:
    done = _buf_lint(FIXTURE)
    assert done.returncode == 100, done.stderr
    assert [str(f) for f in lint.lint(FIXTURE)] == done.stdout.splitlines()


def test_comment_ignores_and_except_are_honoured(tmp_path: Path) -> None:
    """The fixture's `Keep` RPC carries `buf:lint:ignore RPC_REQUEST_STANDARD_NAME`; an
    `except` in buf.yaml drops a rule everywhere."""
    assert not any(
        f.line == 50 and f.rule == "RPC_REQUEST_STANDARD_NAME" for f in lint.lint(FIXTURE)
    )
    shutil.copytree(FIXTURE, tmp_path / "p", ignore=shutil.ignore_patterns("*.txt"))
    (tmp_path / "p" / "buf.yaml").write_text(
        "version: v2\nlint:\n  use: [STANDARD]\n  except: [ENUM_VALUE_PREFIX]\n"
    )
    rules = {f.rule for f in lint.lint(tmp_path / "p")}
    assert "ENUM_VALUE_PREFIX" not in rules and "ENUM_ZERO_VALUE_SUFFIX" in rules


def test_a_buf_yaml_with_rules_the_python_copy_lacks_is_refused(tmp_path: Path) -> None:
    (tmp_path / "buf.yaml").write_text("version: v2\nlint:\n  use: [COMMENTS]\n")
    with pytest.raises(SystemExit, match="COMMENTS"):
        lint.Config.load(tmp_path)


@pytest.mark.parametrize(
    ("name", "snake"),
    [("DType", "D_TYPE"), ("ValueType", "VALUE_TYPE"), ("HTTPStatus", "HTTP_STATUS"),
     ("Kind", "KIND"), ("Dtype", "DTYPE"), ("Float32Kind", "FLOAT32_KIND")],
)  # fmt: skip
def test_enum_prefix_spelling_matches_buf(name: str, snake: str) -> None:
    assert lint.upper_snake(name) == snake


def test_docs_list_each_lint_exception_with_its_reason_once() -> None:
    """docs/API.md's Conventions table comes from the `buf:lint:ignore` comments; the rules and
    the reason stay out of the element's own description."""
    from p2pagent.docgen import api_reference

    text, rules, why = api_reference._lint_parts(
        "Sends a thing.\n buf:lint:ignore RULE_A\n buf:lint:ignore RULE_B\n"
        " Lint exception: it is framing,\n so copies would never differ.\n More about it.\n"
    )
    assert text == ["Sends a thing.", "More about it."]
    assert rules == ["RULE_A", "RULE_B"]
    assert why == ["it is framing,", "so copies would never differ."]
    assert "buf:lint:ignore RPC" not in api_reference.render()
