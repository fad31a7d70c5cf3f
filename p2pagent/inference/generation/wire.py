"""Generation on the wire: ``GenerateRequest`` to prompt and sampling parameters and back
(a node relays a request it cannot run at once to a peer), engine events to
``GenerateResponse`` messages and back (the peer's stream passes through the origin)."""

from __future__ import annotations

from p2pagent._proto import agent_pb2
from p2pagent.errors import InvalidArgument, RemoteProtocolError
from p2pagent.inference.generation.engine import Event, FinishEvent, TokenEvent
from p2pagent.inference.generation.folder import ChatMessage
from p2pagent.inference.generation.sampling import SamplingParams
from p2pagent.inference.generation.scheduler import FinishReason
from p2pagent.inference.generation.service import Prompt

#: max_new_tokens when a request leaves it 0.
DEFAULT_MAX_NEW_TOKENS = 64
#: Bounds of the wire's integer fields.
_UINT32, _UINT64 = 2**32, 2**64


def sampling_of(request: agent_pb2.GenerateRequest) -> SamplingParams:
    return SamplingParams(
        max_new_tokens=request.max_new_tokens or DEFAULT_MAX_NEW_TOKENS,
        temperature=request.temperature,
        top_p=request.top_p if request.HasField("top_p") else 1.0,
        top_k=request.top_k,
        seed=request.seed if request.HasField("seed") else None,
        stop=tuple(request.stop),
    )


def prompt_of(request: agent_pb2.GenerateRequest) -> Prompt:
    return Prompt(
        text=request.prompt,
        ids=tuple(request.prompt_ids),
        messages=tuple(ChatMessage(m.role, m.content) for m in request.messages),
    )


def request_of(
    model: str, prompt: Prompt | list[int], params: SamplingParams, version: str
) -> agent_pb2.GenerateRequest:
    """The request a peer runs: the same prompt and parameters. Values the wire cannot carry
    are refused here, naming them, as the engine would refuse them."""
    params.validate(1, _UINT32)  # every check that does not need the model's context
    if not 1 <= params.max_new_tokens < _UINT32:
        raise InvalidArgument(f"max_new_tokens must be at least 1, got {params.max_new_tokens}")
    if params.top_k >= _UINT32:
        raise InvalidArgument(f"top_k must be below {_UINT32}, got {params.top_k}")
    if params.seed is not None and not 0 <= params.seed < _UINT64:
        raise InvalidArgument(f"seed must be in [0, 2**64), got {params.seed}")
    ids = prompt if isinstance(prompt, list) else list(prompt.ids)
    text = "" if isinstance(prompt, list) else prompt.text
    messages = () if isinstance(prompt, list) else prompt.messages
    bad = next((t for t in ids if not 0 <= t < _UINT32), None)
    if bad is not None:
        raise InvalidArgument(f"token id {bad} is outside the vocabulary")
    request = agent_pb2.GenerateRequest(
        model=model,
        prompt=text,
        prompt_ids=ids,
        messages=[agent_pb2.ChatMessage(role=m.role, content=m.content) for m in messages],
        max_new_tokens=params.max_new_tokens,
        temperature=params.temperature,
        top_p=params.top_p,
        top_k=params.top_k,
        stop=list(params.stop),
        model_version=version,
    )
    if params.seed is not None:
        request.seed = params.seed
    return request


def response_of(event: Event) -> agent_pb2.GenerateResponse:
    if isinstance(event, FinishEvent):
        return agent_pb2.GenerateResponse(
            text=event.text,
            finish_reason=event.reason.value,
            prompt_tokens=event.prompt_tokens,
            generated_tokens=event.generated_tokens,
            node=event.node,
        )
    return agent_pb2.GenerateResponse(text=event.text, token_ids=[event.token_id])


def event_of(response: agent_pb2.GenerateResponse) -> Event:
    """A relayed message as the event it was made from (sequence id -1: not this node's)."""
    if response.finish_reason:
        try:
            reason = FinishReason(response.finish_reason)
        except ValueError:
            raise RemoteProtocolError(
                f"a relayed generation ended with an unknown reason {response.finish_reason!r}"
            ) from None
        return FinishEvent(
            -1,
            reason,
            response.prompt_tokens,
            response.generated_tokens,
            text=response.text,
            node=response.node,
        )
    if len(response.token_ids) != 1:
        raise RemoteProtocolError(
            f"a relayed generation message carries {len(response.token_ids)} token ids, not 1"
        )
    return TokenEvent(-1, response.token_ids[0], response.text)
