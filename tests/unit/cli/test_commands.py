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


#: Commands whose output is for a program other than a person or a JSON reader.
NO_JSON = {("completion",)}


@pytest.mark.parametrize("command", _leaves(parser()), ids=" ".join)
def test_every_command_has_json_output(command: tuple[str, ...]) -> None:
    if command in NO_JSON:
        pytest.skip("prints a shell script")
    assert "--json" in _options(command)


def test_usage_error_is_one_line_with_status_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["members", "--no-such-flag"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("p2pagentctl: error: unrecognized arguments: --no-such-flag")


def _parser_of(path: tuple[str, ...]) -> argparse.ArgumentParser:
    p = parser()
    for name in path:
        sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
        p = sub.choices[name]
    return p


@pytest.mark.parametrize("command", _leaves(parser()), ids=" ".join)
def test_numbers_are_parsed_with_their_range(command: tuple[str, ...]) -> None:
    # A bare int or float takes NaN, infinities and values the wire's fixed-size integer
    # fields refuse later with "Value out of range": args.int_in and args.seconds do not.
    bare = [a.dest for a in _parser_of(command)._actions if a.type in (int, float)]
    assert not bare, f"{' '.join(command)}: give {bare} a ranged type from p2pagent.cli.args"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["tasks", "ls", "--limit", "-5"], "argument --limit: -5 is out of range: use 1..10000"),
        (["tasks", "ls", "--timeout", "nan"], "argument --timeout: nan seconds: use a finite"),
        (["tasks", "wait", "x", "--timeout", "0"], "argument --timeout: 0 seconds"),
        (
            ["tasks", "submit", "--model", "m", "--input", "x", "--priority", str(2**31)],
            "argument --priority: 2147483648 is out of range",
        ),
        (["tasks", "submit", "--model", "m", "--input", "x", "--count", "0"], "--count: 0 is out"),
        (["tasks", "submit", "--model", "m", "--input", "x", "--deadline", "inf"], "--deadline"),
        (["state", "incr", "k", str(2**63)], "argument delta: 9223372036854775808 is out of range"),
        (["state", "watch", "--count", "x"], "argument --count: 'x' is not an integer"),
        (
            ["certs", "issue", "--dir", "d", "--name", "n", "--role", "node", "--days", "0"],
            "--days",
        ),
    ],
)
def test_out_of_range_numbers_are_usage_errors(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
