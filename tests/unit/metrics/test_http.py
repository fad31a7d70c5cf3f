"""The metrics endpoint: /metrics only (404 elsewhere), rendered on the node's loop, and a
503 rather than a hang when that loop does not answer."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, Gauge

from p2pagent.metrics import http
from p2pagent.metrics.http import MetricsServer


def _get(server: MetricsServer, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@pytest.fixture
def registry() -> CollectorRegistry:
    reg = CollectorRegistry()
    Gauge("p2pagent_example", "An example", registry=reg).set(3)
    return reg


@pytest.fixture
def stuck_loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()  # never run: stands for a loop blocked in a long step
    yield loop
    loop.close()


def test_only_the_metrics_path_answers(registry: CollectorRegistry) -> None:
    server = MetricsServer(registry)
    server.start("127.0.0.1", 0)
    try:
        status, body = _get(server, "/metrics")
        assert status == 200 and "p2pagent_example 3.0" in body
        assert _get(server, "/metrics?name[]=x")[0] == 200
        for path in ("/", "/metrics/", "/healthz"):
            assert _get(server, path)[0] == 404, path
    finally:
        server.stop()


def test_a_loop_that_does_not_answer_gets_a_503(
    registry: CollectorRegistry,
    stuck_loop: asyncio.AbstractEventLoop,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(http, "RENDER_TIMEOUT_S", 0.2)
    server = MetricsServer(registry, stuck_loop)
    server.start("127.0.0.1", 0)
    try:
        status, body = _get(server, "/metrics")
        assert status == 503 and "event loop" in body
    finally:
        server.stop()


async def test_rendering_runs_on_the_loop(registry: CollectorRegistry) -> None:
    seen: list[asyncio.AbstractEventLoop] = []
    loop = asyncio.get_running_loop()

    class Probe:
        def collect(self) -> list[object]:
            seen.append(asyncio.get_running_loop())
            return []

        def describe(self) -> list[object]:
            return []

    registry.register(Probe())  # type: ignore[arg-type]
    server = MetricsServer(registry, loop)
    server.start("127.0.0.1", 0)
    try:
        status, _body = await asyncio.to_thread(_get, server, "/metrics")
        assert status == 200 and seen == [loop]
    finally:
        await asyncio.to_thread(server.stop)
