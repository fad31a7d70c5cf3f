"""OpenAI's response shapes: whole completions, stream chunks, model and embedding lists,
and our errors as OpenAI's error body with the right HTTP status."""

from __future__ import annotations

import base64
import json
import struct

import pytest

from p2pagent import errors
from p2pagent.openai.errors import (
    HTTP_OF_CODE,
    ParamError,
    PayloadTooLarge,
    Unauthenticated,
    http_error,
)
from p2pagent.openai.responses import (
    DONE,
    Completion,
    embedding_list,
    model_list,
    sse,
)


def test_whole_chat_and_text_completions() -> None:
    chat = Completion("m", chat=True, created=5, id="chatcmpl-1")
    body = chat.whole("hello", "stop", [1, 2], prompt_tokens=3, generated=2)
    assert body == {
        "id": "chatcmpl-1", "object": "chat.completion", "created": 5, "model": "m",
        "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                     "message": {"role": "assistant", "content": "hello"}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }  # fmt: skip
    text = Completion("m", chat=False, created=5, with_ids=True)
    assert text.id.startswith("cmpl-")
    choice = text.whole("hi", "length", [7], 1, 1)["choices"][0]
    assert (choice["text"], choice["token_ids"], choice["finish_reason"]) == ("hi", [7], "length")


def test_stream_chunks() -> None:
    chat = Completion("m", chat=True, created=1)
    first = chat.chunk("", first=True, include_usage=True)
    assert first["object"] == "chat.completion.chunk" and first["usage"] is None
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chat.chunk("ab", ids=(4,))["choices"][0]["delta"] == {"content": "ab"}
    last = chat.chunk("", "length")["choices"][0]
    assert (last["delta"], last["finish_reason"]) == ({}, "length")
    assert "usage" not in chat.chunk("x")
    usage = chat.usage_chunk(3, 4)
    assert usage["choices"] == [] and usage["usage"]["total_tokens"] == 7
    text = Completion("m", chat=False, created=1, with_ids=True)
    c = text.chunk("ab", ids=(4, 5))
    assert c["object"] == "text_completion" and c["choices"][0]["text"] == "ab"
    assert c["choices"][0]["token_ids"] == [4, 5]


def test_server_sent_events() -> None:
    event = sse({"a": [1, "é"]})
    assert event.startswith(b"data: ") and event.endswith(b"\n\n")
    assert json.loads(event[6:]) == {"a": [1, "é"]}
    assert DONE == b"data: [DONE]\n\n"


def test_model_and_embedding_lists() -> None:
    listed = model_list([("gpt2", "generation", 9, "p2pagent")])
    assert listed == {"object": "list", "data": [
        {"id": "gpt2", "object": "model", "created": 9, "owned_by": "p2pagent",
         "task": "generation"}]}  # fmt: skip
    rows = [[0.5, -1.25], [2.0, 0.0]]
    floats = embedding_list("e", rows, 6, "float")
    assert [d["embedding"] for d in floats["data"]] == rows
    assert floats["usage"] == {"prompt_tokens": 6, "total_tokens": 6}
    packed = embedding_list("e", rows, 6, "base64")["data"][1]["embedding"]
    assert list(struct.unpack("<2f", base64.b64decode(packed))) == rows[1]


def test_every_error_code_has_an_http_status() -> None:
    assert set(errors.BY_CODE) <= set(HTTP_OF_CODE)


@pytest.mark.parametrize(
    ("exc", "status", "kind", "code"),
    [
        (errors.NotFound("no model"), 404, "not_found_error", "model_not_found"),
        (errors.InvalidArgument("bad"), 400, "invalid_request_error", "invalid_argument"),
        (errors.FailedPrecondition("x"), 400, "invalid_request_error", "failed_precondition"),
        (errors.PermissionDenied("x"), 403, "permission_error", "permission_denied"),
        (Unauthenticated("x"), 401, "authentication_error", "unauthenticated"),
        (errors.ResourceExhausted("full"), 429, "rate_limit_error", "resource_exhausted"),
        (errors.Unavailable("x"), 503, "overloaded_error", "unavailable"),
        (errors.Internal("x"), 500, "api_error", "internal"),
        (PayloadTooLarge("x"), 413, "invalid_request_error", "request_too_large"),
    ],
)
def test_errors_in_openais_shape(
    exc: errors.P2PAgentError, status: int, kind: str, code: str
) -> None:
    e = http_error(exc)
    assert e.status == status
    assert e.body == {"error": {"message": str(exc), "type": kind, "param": None, "code": code}}


def test_a_parameter_error_names_it_and_a_retry_hint_is_a_header() -> None:
    e = http_error(ParamError("top_p", "must be in (0, 1]"))
    assert e.body["error"]["param"] == "top_p" and "'top_p'" in e.body["error"]["message"]
    assert http_error(errors.ResourceExhausted("x", retry_after_s=0.2)).headers == {
        "retry-after": "1"
    }
    assert http_error(errors.ResourceExhausted("x")).headers == {}


def test_a_callers_long_parameter_name_is_cut_in_the_answer() -> None:
    e = http_error(ParamError("x" * 100_000, "unrecognized request argument"))
    assert len(e.body["error"]["param"]) == errors.QUOTE_CHARS
    assert len(e.body["error"]["message"]) < 200
