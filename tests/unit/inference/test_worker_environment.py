"""The model worker imports the same p2pagent as the daemon that starts it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import p2pagent
from p2pagent.inference.isolation import worker_environment


def test_the_daemons_own_package_comes_first_on_the_workers_import_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ours = str(Path(p2pagent.__file__).resolve().parent.parent)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(["/elsewhere", ours]))
    monkeypatch.setenv("P2PAGENT_SECRET_THING", "x")
    env = worker_environment(tmp_path)
    assert env["PYTHONPATH"].split(os.pathsep) == [ours, "/elsewhere"]
    assert env["HOME"] == env["TMPDIR"] == str(tmp_path)
    assert "P2PAGENT_SECRET_THING" not in env


def test_without_a_pythonpath_the_worker_still_gets_the_daemons_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PYTHONPATH", raising=False)
    env = worker_environment(tmp_path)
    assert env["PYTHONPATH"] == str(Path(p2pagent.__file__).resolve().parent.parent)
