"""The completion bodies built from the engine's events, whole and streamed: what each
chunk carries, the error event of a stream that must end (the model raised, the caller's
identity was revoked), and that the sequence and the stream's registration are closed."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from p2pagent import errors
from p2pagent.inference.generation.engine import Event, FinishEvent, TokenEvent
from p2pagent.inference.generation.scheduler import FinishReason
from p2pagent.openai.app import streamed, whole
from p2pagent.openai.responses import DONE, Completion


class FakeEvents:
    """An engine's event stream that remembers whether it was closed."""

    def __init__(self, events: list[Event]) -> None:
        self.events = events
        self.closed = False

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._gen()

    async def _gen(self) -> AsyncIterator[Event]:
        for e in self.events:
            yield e

    async def aclose(self) -> None:
        self.closed = True


EVENTS: list[Event] = [
    TokenEvent(0, 5, "he"),
    TokenEvent(0, 6, ""),  # part of a character: no text yet
    FinishEvent(0, FinishReason.LENGTH, 3, 3, text="llo"),
]


def _decode(chunks: list[bytes]) -> list[Any]:
    assert chunks[-1] == DONE
    return [json.loads(c[len(b"data: ") :]) for c in chunks[:-1]]


async def _collect(it: AsyncIterator[bytes]) -> list[bytes]:
    return [c async for c in it]


async def test_a_streamed_chat_with_usage() -> None:
    events = FakeEvents(EVENTS)
    closed: list[bool] = []
    chunks = _decode(
        await _collect(
            streamed(
                Completion("m", True, 1), events, True, lambda: None, lambda: closed.append(True)
            )
        )
    )
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert deltas == [{"role": "assistant", "content": ""}, {"content": "he"}, {"content": "llo"}]
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]] == [
        None, None, "length"
    ]  # fmt: skip
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 3
    assert events.closed and closed == [True]


async def test_token_ids_ride_with_their_chunk() -> None:
    text = Completion("m", False, 1, with_ids=True)
    chunks = _decode(await _collect(streamed(text, FakeEvents(EVENTS), False, lambda: None,
                                             lambda: None)))  # fmt: skip
    assert [c["choices"][0]["token_ids"] for c in chunks] == [[], [5], [6], []]
    assert "".join(c["choices"][0]["text"] for c in chunks) == "hello"
    assert all("usage" not in c for c in chunks)


async def test_a_stream_that_must_end_sends_an_error_event() -> None:
    ended: list[errors.P2PAgentError | None] = [None]

    async def revoke_after_first() -> list[bytes]:
        out = []
        it = streamed(Completion("m", True, 1), events, False, lambda: ended[0], lambda: None)
        async for chunk in it:
            out.append(chunk)
            ended[0] = errors.PermissionDenied("spiffe://t/client/c has been revoked: gone")
        return out

    events = FakeEvents(EVENTS)
    chunks = _decode(await revoke_after_first())
    assert chunks[-1]["error"]["type"] == "permission_error"
    assert "revoked" in chunks[-1]["error"]["message"]
    assert events.closed


async def test_a_model_that_raised_fails_its_stream_with_the_message() -> None:
    failed = [FinishEvent(0, FinishReason.ERROR, 3, 0, error="boom")]
    chunks = _decode(
        await _collect(
            streamed(
                Completion("m", True, 1), FakeEvents(failed), False, lambda: None, lambda: None
            )
        )
    )
    assert chunks[-1]["error"]["code"] == "internal" and "boom" in chunks[-1]["error"]["message"]


async def test_whole_completion_and_its_failure() -> None:
    events = FakeEvents(EVENTS)
    response = await whole(Completion("m", False, 1, with_ids=True), events)
    body = json.loads(bytes(response.body))
    assert body["choices"][0]["text"] == "hello" and body["choices"][0]["token_ids"] == [5, 6]
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}
    assert events.closed
    failing = FakeEvents([FinishEvent(0, FinishReason.ERROR, 3, 0, error="boom")])
    try:
        await whole(Completion("m", True, 1), failing)
    except errors.Internal as e:
        assert "boom" in str(e)
    else:
        raise AssertionError("a model that raised must fail the completion")
    assert failing.closed


class RaisingEvents(FakeEvents):
    """Two tokens, then ``error`` raised (a relaying peer died, or a bug of ours)."""

    def __init__(self, error: Exception) -> None:
        super().__init__(EVENTS[:2])
        self.error = error

    async def _gen(self) -> AsyncIterator[Event]:
        for e in self.events:
            yield e
        raise self.error


async def test_an_error_mid_stream_is_an_error_event_then_done(
    caplog: pytest.LogCaptureFixture,
) -> None:
    died = RaisingEvents(errors.Unavailable("node n2, which was running this generation, failed"))
    with caplog.at_level(logging.ERROR):
        chunks = _decode(await _collect(streamed(
            Completion("m", False, 1), died, False, lambda: None, lambda: None)))  # fmt: skip
        assert chunks[-1]["error"]["type"] == "overloaded_error"
        assert "node n2" in chunks[-1]["error"]["message"] and died.closed
        assert not caplog.records  # the node's own error, not a bug: nothing to log
        bug = RaisingEvents(RuntimeError("a bug of ours"))
        chunks = _decode(await _collect(streamed(
            Completion("m", False, 1), bug, False, lambda: None, lambda: None)))  # fmt: skip
    assert chunks[-1]["error"]["code"] == "internal" and "a bug" not in str(chunks[-1])
    assert [r.exc_info[1] for r in caplog.records if r.exc_info] == [bug.error]  # logged once
    assert bug.closed
