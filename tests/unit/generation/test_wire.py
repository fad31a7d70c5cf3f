"""A relayed generation on the wire (inference/generation/wire.py): the request a peer runs
carries the same prompt and parameters; events survive the trip; values the wire cannot
carry and malformed relayed messages are refused naming them."""

from __future__ import annotations

import pytest

from p2pagent._proto import agent_pb2
from p2pagent.errors import InvalidArgument, RemoteProtocolError
from p2pagent.inference.generation.engine import FinishEvent, TokenEvent
from p2pagent.inference.generation.folder import ChatMessage
from p2pagent.inference.generation.sampling import SamplingParams
from p2pagent.inference.generation.scheduler import FinishReason
from p2pagent.inference.generation.service import Prompt
from p2pagent.inference.generation.wire import (
    event_of,
    prompt_of,
    request_of,
    response_of,
    sampling_of,
)


def test_a_request_carries_the_same_prompt_and_parameters() -> None:
    params = SamplingParams(
        max_new_tokens=17, temperature=0.5, top_p=0.75, top_k=9, seed=2**63 + 5, stop=("\n",)
    )
    for prompt in (
        Prompt(text="hello"),
        Prompt(ids=(1, 2, 3)),
        Prompt(messages=(ChatMessage("user", "hi"),)),
    ):
        request = request_of("lm", prompt, params, "ab" * 32)
        assert request.model_version == "ab" * 32
        assert prompt_of(request) == prompt
        assert sampling_of(request) == params
    assert prompt_of(request_of("lm", [4, 5], params, "v")) == Prompt(ids=(4, 5))
    unseeded = sampling_of(request_of("lm", Prompt(text="x"), SamplingParams(), "v"))
    assert unseeded.seed is None and unseeded.top_p == 1.0


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (SamplingParams(max_new_tokens=0), "max_new_tokens"),
        (SamplingParams(temperature=-1), "temperature"),
        (SamplingParams(top_p=0), "top_p"),
        (SamplingParams(top_k=-1), "top_k"),
        (SamplingParams(top_k=2**32), "top_k"),
        (SamplingParams(seed=-1), "seed"),
        (SamplingParams(seed=2**64), "seed"),
    ],
)
def test_values_the_wire_cannot_carry_are_refused_naming_them(
    params: SamplingParams, message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        request_of("lm", Prompt(text="x"), params, "v")


def test_events_survive_the_trip() -> None:
    token = TokenEvent(3, 42, "hé")
    assert event_of(response_of(token)) == TokenEvent(-1, 42, "hé")
    finish = FinishEvent(3, FinishReason.STOP, 7, 5, text="tail", node="n2")
    assert event_of(response_of(finish)) == FinishEvent(
        -1, FinishReason.STOP, 7, 5, text="tail", node="n2"
    )


def test_malformed_relayed_messages_are_a_protocol_error() -> None:
    with pytest.raises(RemoteProtocolError, match="unknown reason 'exploded'"):
        event_of(agent_pb2.GenerateResponse(finish_reason="exploded"))
    with pytest.raises(RemoteProtocolError, match="2 token ids, not 1"):
        event_of(agent_pb2.GenerateResponse(token_ids=[1, 2]))
    with pytest.raises(RemoteProtocolError, match="0 token ids"):
        event_of(agent_pb2.GenerateResponse(text="x"))
