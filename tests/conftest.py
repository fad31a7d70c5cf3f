"""Shared fixtures: a certificate directory for a test cluster, and real daemons that are
always torn down, even when a test fails."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from p2pagent.identity import certs
from p2pagent.identity.spiffe import Role
from p2pagent.testing.daemon import Daemon

# Property tests share this 2-core machine with daemons and other suites: an example that is
# slow to generate or run says something about the machine's load, not about the property.
# Tests still choose their own example counts; these two settings are the defaults for all.
settings.register_profile("p2pagent", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("p2pagent")

CLUSTER = "test"
NODE_NAMES = [f"n{i}" for i in range(1, 9)]


@pytest.fixture(scope="session")
def certs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ca.crt for cluster 'test', node certificates n1..n8, and one certificate per user role
    named after it: 'client', 'publisher' and 'admin'."""
    d = tmp_path_factory.mktemp("certs")
    certs.init_ca(d, CLUSTER)
    for n in NODE_NAMES:
        certs.issue(d, n, Role.NODE, ["127.0.0.1", "localhost"])
    for role in (Role.CLIENT, Role.PUBLISHER, Role.ADMIN):
        certs.issue(d, role.value, role)
    return d


@pytest.fixture(scope="session")
def foreign_certs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another CA (same cluster name!) with a client and a node certificate."""
    d = tmp_path_factory.mktemp("foreign")
    certs.init_ca(d, CLUSTER)
    certs.issue(d, "client", Role.CLIENT)
    certs.issue(d, "n1", Role.NODE, ["127.0.0.1"])
    return d


@pytest.fixture(scope="session")
def expired_certs_dir(certs_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the test CA with a client certificate that expired yesterday."""
    d = tmp_path_factory.mktemp("expired")
    for f in ("ca.crt", "ca.key"):
        (d / f).write_bytes((certs_dir / f).read_bytes())
    os.chmod(d / "ca.key", 0o600)
    start = dt.datetime.now(dt.UTC) - dt.timedelta(days=3)
    certs.issue(d, "client", Role.CLIENT, days=2, not_before=start)
    return d


@pytest.fixture
def daemons(tmp_path: Path, certs_dir: Path) -> Iterator[list[Daemon]]:
    """A list to append started daemons to; every one is stopped at teardown."""
    started: list[Daemon] = []
    try:
        yield started
    finally:
        for d in started:
            d.kill()


def make_daemon(tmp: Path, certs_dir: Path, name: str, **kw: object) -> Daemon:
    return Daemon(name=name, certs=certs_dir, data=tmp / name, **kw)  # type: ignore[arg-type]
