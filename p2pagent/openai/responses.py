"""The response bodies the door sends, in OpenAI's shapes: whole completions, the chunks of
a streamed one as server-sent events (``data: {...}`` each, ``data: [DONE]`` last), model
lists and embeddings. Plain functions of values: no I/O, unit-tested on their own."""

from __future__ import annotations

import base64
import json
import struct
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

#: The last event of every stream, as OpenAI sends it.
DONE = b"data: [DONE]\n\n"


def sse(body: dict[str, Any]) -> bytes:
    """One server-sent event carrying ``body`` as compact JSON."""
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


@dataclass
class Completion:
    """One completion as it builds up, chat or not; renders whole or as stream chunks."""

    model: str
    chat: bool
    created: int
    with_ids: bool = False
    id: str = field(default="")

    def __post_init__(self) -> None:
        if not self.id:
            self.id = ("chatcmpl-" if self.chat else "cmpl-") + uuid.uuid4().hex

    @property
    def object(self) -> str:
        return "chat.completion" if self.chat else "text_completion"

    @property
    def chunk_object(self) -> str:
        return "chat.completion.chunk" if self.chat else "text_completion"

    def _head(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def whole(
        self, text: str, finish: str, ids: Sequence[int], prompt_tokens: int, generated: int
    ) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
        if self.chat:
            choice["message"] = {"role": "assistant", "content": text}
            choice["logprobs"] = None
        else:
            choice["text"] = text
            choice["logprobs"] = None
        if self.with_ids:
            choice["token_ids"] = list(ids)
        return {
            **self._head(self.object),
            "choices": [choice],
            "usage": usage(prompt_tokens, generated),
        }

    def chunk(
        self,
        text: str,
        finish: str | None = None,
        ids: Sequence[int] = (),
        first: bool = False,
        include_usage: bool = False,
    ) -> dict[str, Any]:
        """A stream chunk: a text delta (and the ids it came from), or the last one with the
        finish reason. With ``include_usage`` every chunk has ``usage: null`` as OpenAI's do
        (the counts come in a chunk of their own, ``usage_chunk``)."""
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant"} if first else {}
            if text or first:
                delta["content"] = text
            choice["delta"] = delta
        else:
            choice["text"] = text
        if self.with_ids:
            choice["token_ids"] = list(ids)
        body = {**self._head(self.chunk_object), "choices": [choice]}
        if include_usage:
            body["usage"] = None
        return body

    def usage_chunk(self, prompt_tokens: int, generated: int) -> dict[str, Any]:
        usage_ = usage(prompt_tokens, generated)
        return {**self._head(self.chunk_object), "choices": [], "usage": usage_}


def model_list(models: Sequence[tuple[str, str, int, str]]) -> dict[str, Any]:
    """(name, task, created unix, owner) of each model -> OpenAI's list. ``task`` (generation
    or embedding) is our addition: which endpoints serve the model."""
    return {
        "object": "list",
        "data": [
            {"id": name, "object": "model", "created": created, "owned_by": owner, "task": task}
            for name, task, created, owner in models
        ],
    }


def embedding_list(
    model: str, rows: Sequence[Sequence[float]], tokens: int, encoding: str
) -> dict[str, Any]:
    """The embeddings of ``rows``; ``base64`` is the little-endian float32 bytes, which is
    what OpenAI's Python client asks for by default and decodes."""
    data = []
    for i, row in enumerate(rows):
        value: list[float] | str = list(row)
        if encoding == "base64":
            value = base64.b64encode(struct.pack(f"<{len(row)}f", *row)).decode()
        data.append({"object": "embedding", "index": i, "embedding": value})
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
