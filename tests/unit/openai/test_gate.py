"""The door's own layer (openai/gate.py): a request over openai.max_connections gets 503 in
OpenAI's error shape (uvicorn's own refusal is plain text), and a bug is answered with
OpenAI's 500 and logged once, with nothing raised on to the server (which would log it
again)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

import httpx2
import pytest
from fastapi import FastAPI
from fastapi.responses import StreamingResponse

from p2pagent.openai.gate import SERVER_LOAD, DoorGate, over_limit


@dataclass
class Load:
    connections: set[Any] = field(default_factory=set)
    tasks: set[Any] = field(default_factory=set)


async def _ok(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def _call(app: Any, load: Load | None) -> list[dict[str, Any]]:
    scope = {"type": "http", "method": "GET", "path": "/v1/models", "headers": [],
             "state": {} if load is None else {SERVER_LOAD: load}}  # fmt: skip
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


def test_the_limit_counts_connections_and_requests_this_one_included() -> None:
    assert not over_limit(Load({1, 2}, {1}), 2)
    assert over_limit(Load({1, 2, 3}, {1}), 2)
    assert over_limit(Load({1}, {1, 2, 3}), 2)


async def test_a_request_over_the_limit_gets_openais_503() -> None:
    gate = DoorGate(_ok, limit=2)
    assert (await _call(gate, Load({1, 2}, {1})))[0]["status"] == 200
    start, body = await _call(gate, Load({1, 2, 3}, {1}))
    headers = dict(start["headers"])
    assert start["status"] == 503
    assert headers[b"retry-after"] == b"1" and headers[b"connection"] == b"close"
    assert headers[b"content-type"] == b"application/json"
    error = json.loads(body["body"])["error"]
    assert error["type"] == "overloaded_error" and error["code"] == "unavailable"
    assert "openai.max_connections" in error["message"]
    assert (await _call(gate, None))[0]["status"] == 200  # no load known: not limited


def _buggy_app() -> FastAPI:
    app = FastAPI()
    app.add_middleware(DoorGate, limit=8)

    @app.get("/bug")
    async def bug() -> None:
        raise RuntimeError("a bug of ours")

    @app.get("/stream-bug")
    async def stream_bug() -> StreamingResponse:
        async def body() -> Any:
            yield b"data: 1\n\n"
            raise RuntimeError("a bug mid-body")

        return StreamingResponse(body(), media_type="text/event-stream")

    return app


async def test_a_bug_is_openais_500_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    transport = httpx2.ASGITransport(app=_buggy_app())  # raises what the app lets escape
    async with httpx2.AsyncClient(transport=transport, base_url="http://door") as http:
        with caplog.at_level(logging.ERROR):
            r = await http.get("/bug")
            cut = await http.get("/stream-bug")
    assert r.status_code == 500
    error = r.json()["error"]
    assert error["type"] == "api_error" and "node's log" in error["message"]
    assert "a bug of ours" not in r.text  # the caller learns nothing of the internals
    assert cut.status_code == 200 and cut.text == "data: 1\n\n"  # ended, not hung
    tracebacks = [rec for rec in caplog.records if rec.exc_info]
    assert [str(rec.exc_info[1]) for rec in tracebacks if rec.exc_info] == [
        "a bug of ours",
        "a bug mid-body",
    ]


def test_the_door_app_answers_bugs_through_the_gate_only() -> None:
    from types import SimpleNamespace

    from p2pagent.config import Config
    from p2pagent.openai.app import build_app

    app = build_app(SimpleNamespace(config=Config()))  # type: ignore[arg-type]
    assert [m.cls for m in app.user_middleware] == [DoorGate]
    # A handler for Exception would answer, then raise the bug on (a second traceback).
    assert Exception not in app.exception_handlers and 500 not in app.exception_handlers
