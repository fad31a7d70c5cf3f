"""The door's request parsing: OpenAI's bodies to sampling parameters and prompts, and every
refusal naming the parameter at fault."""

from __future__ import annotations

import json
from typing import Any

import pytest

from p2pagent import errors
from p2pagent.openai import requests as rq
from p2pagent.openai.errors import ParamError


def _body(**kw: Any) -> bytes:
    return json.dumps(kw).encode()


def _completion(**kw: Any) -> rq.CompletionRequest:
    return rq.parse(rq.CompletionRequest, _body(**{"model": "m", "prompt": "hi", **kw}))


def _chat(**kw: Any) -> rq.ChatRequest:
    kw.setdefault("messages", [{"role": "user", "content": "hi"}])
    return rq.parse(rq.ChatRequest, _body(model="m", **kw))


def test_openais_defaults_become_sampling_parameters() -> None:
    p = rq.sampling(_completion())
    assert (p.max_new_tokens, p.temperature, p.top_p, p.top_k, p.seed, p.stop) == (
        rq.COMPLETION_MAX_TOKENS, 1.0, 1.0, 0, None, ()
    )  # fmt: skip
    assert rq.sampling(_chat()).max_new_tokens == rq.CHAT_MAX_TOKENS


def test_given_values_are_carried() -> None:
    p = rq.sampling(
        _chat(max_completion_tokens=9, max_tokens=3, temperature=0, top_p=0.5, top_k=7, seed=11,
              stop="END")
    )  # fmt: skip
    assert (p.max_new_tokens, p.temperature, p.top_p, p.top_k, p.seed, p.stop) == (
        9, 0.0, 0.5, 7, 11, ("END",)
    )  # fmt: skip
    assert rq.sampling(_completion(stop=["a", "b"])).stop == ("a", "b")


@pytest.mark.parametrize(
    ("kw", "param", "match"),
    [
        ({"temperature": -0.1}, "temperature", ">= 0"),
        ({"top_p": 0}, "top_p", r"\(0, 1\]"),
        ({"top_p": 1.01}, "top_p", r"\(0, 1\]"),
        ({"top_k": -1}, "top_k", ">= 0"),
        ({"seed": -1}, "seed", "2\\*\\*64"),
        ({"seed": 2**64}, "seed", "2\\*\\*64"),
        ({"max_tokens": 0}, "max_tokens", "at least 1"),
        ({"stop": ["a"] * 5}, "stop", "at most 4"),
        ({"stop": [""]}, "stop", "empty"),
    ],
)
def test_bad_sampling_values_name_their_parameter(
    kw: dict[str, Any], param: str, match: str
) -> None:
    with pytest.raises(ParamError, match=match) as e:
        rq.sampling(_completion(**kw))
    assert e.value.param == param and param in str(e.value)


@pytest.mark.parametrize(
    ("kw", "param"),
    [
        ({"n": 2}, "n"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"frequency_penalty": 1}, "frequency_penalty"),
        ({"logit_bias": {"1": 2}}, "logit_bias"),
        ({"logprobs": 1}, "logprobs"),
        ({"echo": True}, "echo"),
        ({"suffix": "x"}, "suffix"),
        ({"best_of": 3}, "best_of"),
    ],
)
def test_options_not_served_are_refused_by_name(kw: dict[str, Any], param: str) -> None:
    with pytest.raises(ParamError) as e:
        rq.unsupported(_completion(**kw))
    assert e.value.param == param


def test_neutral_values_of_unserved_options_are_accepted() -> None:
    rq.unsupported(_completion(n=1, presence_penalty=0, logprobs=None, best_of=1, user="u"))
    rq.unsupported(_chat(tools=[], tool_choice="none"))
    with pytest.raises(ParamError, match="tool calls") as e:
        rq.unsupported(_chat(tool_choice="auto"))
    assert e.value.param == "tool_choice"


@pytest.mark.parametrize(
    ("body", "param", "match"),
    [
        (b"{nope", "body", "JSON object"),
        (b"", "body", "JSON object"),
        (b"[1]", "body", "JSON object"),
        (_body(prompt="x"), "model", "required"),
        (_body(model="", prompt="x"), "model", "at least 1"),
        (_body(model="m", prompt="x", bogus=1), "bogus", "unrecognized"),
        (_body(model="m", prompt=3), "prompt", "valid"),
        (_body(model="m", prompt="x", stream="yes"), "stream", "boolean"),
        (_body(model="m", prompt="x", max_tokens="many"), "max_tokens", "integer"),
    ],
)
def test_malformed_bodies_name_the_field(body: bytes, param: str, match: str) -> None:
    with pytest.raises(ParamError, match=match) as e:
        rq.parse(rq.CompletionRequest, body)
    assert e.value.param == param


def test_prompts_as_text_ids_or_a_list_of_one() -> None:
    assert rq.completion_prompt(_completion()) == ("hi", ())
    assert rq.completion_prompt(_completion(prompt=[1, 2, 3])) == ("", (1, 2, 3))
    assert rq.completion_prompt(_completion(prompt=["one"])) == ("one", ())
    assert rq.completion_prompt(_completion(prompt=[[4, 5]])) == ("", (4, 5))
    with pytest.raises(ParamError, match="one prompt per request") as e:
        rq.completion_prompt(_completion(prompt=["a", "b"]))
    assert e.value.param == "prompt"
    for empty in ([], "", [""]):
        with pytest.raises(ParamError, match="empty"):
            rq.completion_prompt(_completion(prompt=empty))


def test_chat_messages_flatten_text_parts_and_map_developer_to_system() -> None:
    messages = [
        {"role": "developer", "content": "Be short."},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": None},
    ]
    assert rq.chat_messages(_chat(messages=messages)) == [
        ("system", "Be short."), ("user", "ab"), ("assistant", "")
    ]  # fmt: skip
    image = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]
    with pytest.raises(ParamError, match="image_url") as e:
        rq.chat_messages(_chat(messages=image))
    assert e.value.param == "messages.0.content"
    with pytest.raises(ParamError) as e:
        _chat(messages=[{"role": "king", "content": "x"}])
    assert e.value.param == "messages.0.role"
    with pytest.raises(ParamError) as e:
        _chat(messages=[])
    assert e.value.param == "messages"


def test_embedding_inputs() -> None:
    def texts(value: Any, limit: int = 4) -> list[str]:
        body = rq.parse(rq.EmbeddingRequest, _body(model="e", input=value))
        return rq.embedding_texts(body, limit)

    assert texts("a") == ["a"]
    assert texts(["a", "b"]) == ["a", "b"]
    for bad, match in (([], "empty"), ([1, 2], "token ids"), ([[1]], "token ids"),
                       (["x"] * 5, "at most 4")):  # fmt: skip
        with pytest.raises(ParamError, match=match) as e:
            texts(bad)
        assert e.value.param == "input"
    with pytest.raises(ParamError) as e:
        rq.parse(rq.EmbeddingRequest, _body(model="e", input="a", encoding_format="int8"))
    assert e.value.param == "encoding_format"


def test_the_engines_refusals_are_renamed_to_openais_parameters() -> None:
    e = rq.named(
        errors.InvalidArgument("max_new_tokens 600 plus the 3-token prompt is beyond"), "prompt"
    )
    assert isinstance(e, ParamError) and e.param == "max_tokens"
    assert "max_tokens 600" in str(e) and "max_new_tokens" not in str(e)
    long = rq.named(errors.InvalidArgument("the prompt is 900 tokens; shorten"), "messages")
    assert isinstance(long, ParamError) and long.param == "messages"
    other = errors.InvalidArgument("model 'x' is a classification folder")
    assert rq.named(other, "prompt") is other
