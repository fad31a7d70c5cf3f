"""The three request bodies the door accepts, checked, and what they become: a prompt and
sampling parameters for the node's generation, or the texts to embed.

Parsed with pydantic from the raw bytes, so every refusal names the parameter at fault in
OpenAI's error shape (``ParamError``): a field of the wrong type, an unknown field (as
OpenAI answers "Unrecognized request argument"), or a known OpenAI field this node does not
implement (``n`` above 1, ``logprobs``, tools...) with what to do instead. The ranges of
the sampling values are checked here so the error names OpenAI's parameter; the engine
checks them again (``SamplingParams.validate``), with the prompt's length and the context.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError

from p2pagent import errors
from p2pagent.openai.errors import ParamError

if TYPE_CHECKING:
    from p2pagent.inference.generation.sampling import SamplingParams

BodyT = TypeVar("BodyT", bound=BaseModel)

#: Parts of a pydantic error location that name a member of a union, not a field
#: (``prompt.str``, ``input.list[str]``, ``messages.0.content.ContentPart``).
_TYPE_TAG = re.compile(r"^(str|int|float|bool|none|list\[.*\]|dict\[.*\]|[A-Z]\w*|.*[-\[].*)$")

#: OpenAI's documented default of max_tokens for /v1/completions.
COMPLETION_MAX_TOKENS = 16
#: max_tokens of a chat completion that names none (OpenAI's "up to the context" would make
#: a forgotten limit run for the whole context).
CHAT_MAX_TOKENS = 64
#: Stop strings OpenAI accepts per request.
MAX_STOP = 4


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False)


class StreamOptions(_Body):
    include_usage: StrictBool = False


class _Sampled(_Body):
    model: str = Field(min_length=1)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    #: Not OpenAI's but vLLM's and Ollama's: keep the k most likely tokens (0: all).
    top_k: int | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    logprobs: Any = None
    user: str | None = None
    #: vLLM's extension: the generated token ids in each choice or chunk (``token_ids``).
    return_token_ids: StrictBool = False
    #: p2pagent's: pin a published version of the model (a manifest id or its prefix).
    model_version: str = ""


class CompletionRequest(_Sampled):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: StrictBool = False
    suffix: str | None = None
    best_of: int | None = None


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None


class ChatRequest(_Sampled):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    response_format: Any = None
    parallel_tool_calls: Any = None
    top_logprobs: int | None = None


class EmbeddingRequest(_Body):
    model: str = Field(min_length=1)
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None
    model_version: str = ""


def parse(kind: type[BodyT], body: bytes) -> BodyT:
    """``body`` as a ``kind``; ParamError naming the first field at fault."""
    try:
        return kind.model_validate_json(body or b"null")
    except ValidationError as e:
        first = e.errors(include_url=False)[0]
        loc = ".".join(str(p) for p in first["loc"] if not _TYPE_TAG.match(str(p)))
        if not loc:
            raise ParamError("body", "the request body must be a JSON object") from None
        if first["type"] == "extra_forbidden":
            raise ParamError(loc, "unrecognized request argument") from None
        if first["type"] == "missing":
            raise ParamError(loc, "is required") from None
        raise ParamError(loc, first["msg"]) from None


def unsupported(request: _Sampled) -> None:
    """Refuses the OpenAI options this node does not implement, each with what to do."""
    if request.n not in (None, 1):
        raise ParamError("n", f"only n=1 is served, got {request.n}: send n requests")
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(request, name) not in (None, 0, 0.0):
            raise ParamError(name, "penalties are not supported: leave it out or send 0")
    if request.logit_bias:
        raise ParamError("logit_bias", "not supported: leave it out")
    if request.logprobs not in (None, False, 0):
        raise ParamError("logprobs", "not supported: leave it out (return_token_ids gives ids)")
    if isinstance(request, CompletionRequest):
        if request.echo:
            raise ParamError("echo", "not supported: the prompt is not repeated")
        if request.suffix:
            raise ParamError("suffix", "not supported: leave it out")
        if request.best_of not in (None, 1):
            raise ParamError("best_of", f"only best_of=1 is served, got {request.best_of}")
    if isinstance(request, ChatRequest):
        for name in ("tools", "tool_choice", "response_format", "parallel_tool_calls"):
            if getattr(request, name) not in (None, [], "none"):
                raise ParamError(name, "tool calls and structured output are not supported")
        if request.top_logprobs:
            raise ParamError("top_logprobs", "not supported: leave it out")


def stop_strings(request: _Sampled) -> tuple[str, ...]:
    stop = request.stop
    if stop is None:
        return ()
    out = (stop,) if isinstance(stop, str) else tuple(stop)
    if len(out) > MAX_STOP:
        raise ParamError("stop", f"at most {MAX_STOP} stop strings, got {len(out)}")
    if any(not s for s in out):
        raise ParamError("stop", "a stop string is empty")
    return out


def max_tokens(request: _Sampled) -> int:
    given = request.max_tokens
    if isinstance(request, ChatRequest) and request.max_completion_tokens is not None:
        given = request.max_completion_tokens
    default = CHAT_MAX_TOKENS if isinstance(request, ChatRequest) else COMPLETION_MAX_TOKENS
    if given is None:
        return default
    if given < 1:
        name = "max_tokens" if request.max_tokens is not None else "max_completion_tokens"
        raise ParamError(name, f"must be at least 1, got {given}")
    return given


def completion_prompt(request: CompletionRequest) -> tuple[str, tuple[int, ...]]:
    """(text, token ids): one prompt, as text or as token ids."""
    p = request.prompt
    if p == "" or p == [""]:
        raise ParamError("prompt", "is empty: send at least one character or token id")
    if isinstance(p, str):
        return p, ()
    if not p:
        raise ParamError("prompt", "is empty: send a string")
    if all(isinstance(x, int) for x in p):
        return "", tuple(p)  # type: ignore[arg-type]
    if len(p) != 1:
        raise ParamError("prompt", f"one prompt per request is served, got {len(p)}")
    only = p[0]
    if isinstance(only, str):
        return only, ()
    if isinstance(only, list):
        return "", tuple(only)
    raise ParamError("prompt", "send a string, a list of one string, or token ids")


def chat_messages(request: ChatRequest) -> list[tuple[str, str]]:
    """(role, text) of each message; content parts must be text."""
    out: list[tuple[str, str]] = []
    for i, m in enumerate(request.messages):
        if isinstance(m.content, str) or m.content is None:
            text = m.content or ""
        else:
            parts = []
            for part in m.content:
                if part.type != "text" or part.text is None:
                    raise ParamError(
                        f"messages.{i}.content",
                        f"content parts of type {errors.quoted(part.type)} are not "
                        "supported: send text",
                    )
                parts.append(part.text)
            text = "".join(parts)
        # Templates know system, user and assistant; OpenAI's newer "developer" is a system.
        out.append(("system" if m.role == "developer" else m.role, text))
    return out


def embedding_texts(request: EmbeddingRequest, limit: int) -> list[str]:
    texts = [request.input] if isinstance(request.input, str) else request.input
    if not texts:
        raise ParamError("input", "is empty: send a string or a list of strings")
    if not all(isinstance(t, str) for t in texts):
        raise ParamError("input", "token ids are not accepted here: send the texts")
    if len(texts) > limit:
        raise ParamError(
            "input", f"at most {limit} texts per request (openai.max_embedding_inputs), "
            f"got {len(texts)}"
        )  # fmt: skip
    return texts  # type: ignore[return-value]


def sampling(request: _Sampled) -> SamplingParams:
    """The engine's sampling parameters. OpenAI's defaults: temperature 1 and top_p 1 when
    left out (send temperature 0 for greedy decoding). The ranges are checked here so the
    error names OpenAI's parameter; the engine checks them again."""
    from p2pagent.inference.generation.sampling import SamplingParams

    temperature = 1.0 if request.temperature is None else request.temperature
    if not math.isfinite(temperature) or temperature < 0:
        raise ParamError("temperature", f"must be >= 0, got {temperature}")
    top_p = 1.0 if request.top_p is None else request.top_p
    if not (math.isfinite(top_p) and 0 < top_p <= 1):
        raise ParamError("top_p", f"must be in (0, 1], got {top_p}")
    if request.seed is not None and not 0 <= request.seed < 2**64:
        raise ParamError("seed", f"must be in [0, 2**64), as gRPC Generate's, got {request.seed}")
    top_k = request.top_k or 0
    if top_k < 0:
        raise ParamError("top_k", f"must be >= 0 (0 keeps every token), got {top_k}")
    return SamplingParams(
        max_new_tokens=max_tokens(request),
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        seed=request.seed,
        stop=stop_strings(request),
    )


def named(e: errors.InvalidArgument, prompt_param: str) -> errors.InvalidArgument:
    """The engine's refusal of a request with OpenAI's parameter named: its words are
    gRPC's (``max_new_tokens``), the caller sent ``max_tokens``."""
    message = str(e)
    if message.startswith("max_new_tokens"):
        return ParamError("max_tokens", message.replace("max_new_tokens", "max_tokens", 1))
    if message.startswith("the prompt") or "prompt" in message.split(":")[0]:
        return ParamError(prompt_param, message)
    return e
