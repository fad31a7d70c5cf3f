"""Every p2pagentctl command offers --json, and usage errors are one line."""

from __future__ import annotations

import argparse

import pytest

from p2pagent.cli.ctl import main, parser


def _leaves(p: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return [path]
    out: list[tuple[str, ...]] = []
    for name, child in subs[0].choices.items():
        out += _leaves(child, (*path, name))
    return out


def _options(path: tuple[str, ...]) -> set[str]:
    p = parser()
    for name in path:
        sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
        p = sub.choices[name]
    return {o for a in p._actions for o in a.option_strings}


def test_the_command_tree_is_what_the_readme_documents() -> None:
    commands = {" ".join(c) for c in _leaves(parser())}
    assert {"status", "members", "top", "infer", "state put", "models push", "tasks submit"} <= (
        commands
    )


@pytest.mark.parametrize("command", _leaves(parser()), ids=" ".join)
def test_every_command_has_json_output(command: tuple[str, ...]) -> None:
    assert "--json" in _options(command)


def test_usage_error_is_one_line_with_status_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["members", "--no-such-flag"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("p2pagentctl: error: unrecognized arguments: --no-such-flag")
