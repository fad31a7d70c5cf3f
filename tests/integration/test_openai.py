"""The OpenAI-compatible door of a real daemon, driven by the official ``openai`` client over
mutual TLS: models, completions and chat (whole and streamed as server-sent events), seeded
sampling equal to gRPC Generate's ids, stop strings, embeddings equal to Embed, every bad
input with OpenAI's error shape and status, a full queue as 429, and callers without a
certificate, from another CA or revoked refused."""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest

from p2pagent._proto import agent_pb2, agent_pb2_grpc
from p2pagent.client import Client
from p2pagent.identity import certs
from p2pagent.identity.material import TLSPaths
from p2pagent.identity.spiffe import Role
from p2pagent.openai.tls import client_context
from p2pagent.testing import hf_folders
from p2pagent.testing.channels import aio_channel
from p2pagent.testing.daemon import Daemon, free_port
from p2pagent.testing.decoder_folders import BUILDERS

PROMPT = "Return the path of the file."
CHAT = [("system", "Be short."), ("user", "Open the file.")]
TEXTS = ["the river near the big city", "bob ran"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("openai-folders")
    out = {family: build(root / family) for family, build in BUILDERS.items()}
    out["emb"] = hf_folders.embedding_folder(root / "emb")
    return out


@pytest.fixture(scope="module")
def port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def node(
    tmp_path_factory: pytest.TempPathFactory, certs_dir: Path, folders: dict[str, Path], port: int
) -> Iterator[Daemon]:
    served = ",".join(f"{f}={folders[f]}" for f in BUILDERS)
    env = {
        "P2PAGENT_GENERATION__FOLDERS": served,
        # One sequence runs and one waits: the full-queue test needs it.
        "P2PAGENT_GENERATION__MAX_RUNNING": "1",
        "P2PAGENT_GENERATION__MAX_QUEUED": "1",
        "P2PAGENT_OPENAI__LISTEN": f"127.0.0.1:{port}",
        "P2PAGENT_OPENAI__MAX_REQUEST_BYTES": "65536",
    }
    d = Daemon("n7", certs_dir, tmp_path_factory.mktemp("openai") / "n7", env=env)
    d.start(timeout=120)
    try:
        yield d
    finally:
        d.kill()


@pytest.fixture(scope="module")
async def published(node: Daemon, certs_dir: Path, folders: dict[str, Path]) -> str:
    async with Client.from_certs([node.address], certs_dir, identity="publisher") as c:
        await c.publish(folders["emb"], "tiny-emb")
    return "tiny-emb"


_PORTS: dict[str, int] = {}


@pytest.fixture(scope="module", autouse=True)
def _remember_port(node: Daemon, port: int) -> None:
    _PORTS[node.address] = port


def _url(node: Daemon) -> str:
    return f"https://127.0.0.1:{_PORTS[node.address]}/v1"


def _http(ctx: ssl.SSLContext | bool) -> httpx2.AsyncClient:
    return httpx2.AsyncClient(verify=ctx, timeout=120)


@pytest.fixture
async def api(node: Daemon, certs_dir: Path) -> AsyncIterator[openai.AsyncOpenAI]:
    http = _http(client_context(TLSPaths.in_dir(certs_dir, "client")))
    async with openai.AsyncOpenAI(
        base_url=_url(node), api_key="unused: the certificate is the credential",
        http_client=http, max_retries=0,
    ) as client:  # fmt: skip
        yield client


async def _grpc(node: Daemon, certs_dir: Path, model: str, **kw: Any) -> tuple[str, list[int], str]:
    """Text, token ids and finish reason of the same generation through gRPC Generate."""
    async with Client.from_certs([node.address], certs_dir, follow_s=120) as c:
        ms = [m async for m in c.generate(model, **kw)]
    return "".join(m.text for m in ms), [t for m in ms for t in m.token_ids], ms[-1].finish_reason


async def test_models_lists_decoders_and_encoders(api: openai.AsyncOpenAI, published: str) -> None:
    listed = {m.id: m.model_extra["task"] for m in (await api.models.list()).data}  # type: ignore[index]
    assert listed == {"gpt2": "generation", "llama": "generation", published: "embedding"}
    one = await api.models.retrieve(published)
    assert (one.id, one.object, one.model_extra) == (published, "model", {"task": "embedding"})
    with pytest.raises(openai.NotFoundError, match="GET /v1/models lists them"):
        await api.models.retrieve("nope")


@pytest.mark.parametrize("family", sorted(BUILDERS))
async def test_greedy_completion_equals_grpc_generate(
    api: openai.AsyncOpenAI, node: Daemon, certs_dir: Path, family: str
) -> None:
    text, ids, _ = await _grpc(node, certs_dir, family, prompt=PROMPT, max_new_tokens=32)
    got = await api.completions.create(
        model=family, prompt=PROMPT, max_tokens=32, temperature=0,
        extra_body={"return_token_ids": True},
    )  # fmt: skip
    choice = got.choices[0]
    assert choice.model_extra["token_ids"] == ids  # type: ignore[index]
    assert (choice.text, choice.finish_reason) == (text, "length")
    assert got.usage is not None and got.usage.completion_tokens == 32
    assert got.usage.total_tokens == got.usage.prompt_tokens + 32 and got.usage.prompt_tokens > 0


async def test_seeded_chat_streams_the_ids_of_grpc_generate(
    api: openai.AsyncOpenAI, node: Daemon, certs_dir: Path
) -> None:
    sampled = {"temperature": 0.8, "top_p": 0.9, "seed": 3}
    text, ids, finish = await _grpc(
        node, certs_dir, "llama", messages=CHAT, max_new_tokens=24, **sampled
    )
    stream = await api.chat.completions.create(
        model="llama", messages=[{"role": r, "content": c} for r, c in CHAT],  # type: ignore[misc]
        max_tokens=24, stream=True, stream_options={"include_usage": True},
        extra_body={"return_token_ids": True}, **sampled,
    )  # fmt: skip
    chunks = [c async for c in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    deltas = [c.choices[0] for c in chunks if c.choices]
    assert "".join(d.delta.content or "" for d in deltas) == text
    assert [t for d in deltas for t in d.model_extra.get("token_ids", [])] == ids  # type: ignore[union-attr]
    assert deltas[-1].finish_reason == finish
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == len(ids)
    # Whole, the same seed gives the same text.
    again = await api.chat.completions.create(
        model="llama", messages=[{"role": r, "content": c} for r, c in CHAT],  # type: ignore[misc]
        max_tokens=24, **sampled,
    )  # fmt: skip
    assert again.choices[0].message.content == text


async def test_stop_string_ends_the_completion_before_it(api: openai.AsyncOpenAI) -> None:
    full = await api.completions.create(model="gpt2", prompt=PROMPT, max_tokens=24, temperature=0)
    text = full.choices[0].text
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    stopped = await api.completions.create(
        model="gpt2", prompt=PROMPT, max_tokens=24, temperature=0, stop=[stop]
    )
    assert stopped.choices[0].text == text[: text.index(stop)]
    assert stopped.choices[0].finish_reason == "stop"
    streamed = await api.completions.create(
        model="gpt2", prompt=PROMPT, max_tokens=24, temperature=0, stop=stop, stream=True
    )
    parts = [c.choices[0] async for c in streamed]
    assert "".join(p.text for p in parts) == text[: text.index(stop)]
    assert parts[-1].finish_reason == "stop"


async def test_embeddings_equal_embed(
    api: openai.AsyncOpenAI, node: Daemon, certs_dir: Path, published: str
) -> None:
    # Generous: the first Embed starts the model worker and loads the folder there.
    async with Client.from_certs([node.address], certs_dir, timeout_s=120) as c:
        want = await c.embed(published, TEXTS)
    floats = await api.embeddings.create(model=published, input=TEXTS, encoding_format="float")
    for got, w in zip(floats.data, want, strict=True):
        assert got.embedding == pytest.approx(w, abs=1e-6)
    assert floats.usage.prompt_tokens > 0
    default = await api.embeddings.create(model=published, input=TEXTS[0])  # base64 on the wire
    assert default.data[0].embedding == pytest.approx(want[0], abs=1e-6)


def _chat(**kw: Any) -> dict[str, Any]:
    return {"model": "gpt2", "messages": [{"role": "user", "content": "hi"}], **kw}


@pytest.mark.parametrize(
    ("path", "body", "status", "param", "match"),
    [
        ("completions", {"model": "nope", "prompt": "x"}, 404, None, "'nope' is not published"),
        ("chat/completions", _chat(model="nope"), 404, None, "nope"),
        ("completions", {"model": "gpt2", "prompt": "x", "n": 2}, 400, "n", "only n=1"),
        ("completions", {"model": "gpt2", "prompt": "x", "temperature": -1}, 400,
         "temperature", ">= 0"),
        ("completions", {"model": "gpt2", "prompt": "x", "top_p": 0}, 400, "top_p", r"\(0, 1\]"),
        ("completions", {"model": "gpt2", "prompt": "x", "top_p": 1.5}, 400, "top_p", "1"),
        ("completions", {"model": "gpt2", "prompt": "x", "max_tokens": 0}, 400, "max_tokens",
         "at least 1"),
        ("completions", {"model": "gpt2", "prompt": "x", "max_tokens": 600}, 400, "max_tokens",
         "beyond the model's context"),
        ("completions", {"model": "gpt2", "prompt": "x " * 600}, 400, "prompt",
         "shorten the prompt"),
        ("completions", {"model": "gpt2", "prompt": "x", "stop": ["a"] * 5}, 400, "stop",
         "at most 4"),
        ("completions", {"model": "gpt2", "prompt": "x", "logprobs": 2}, 400, "logprobs",
         "not supported"),
        ("completions", {"model": "gpt2", "prompt": "x", "bogus": 1}, 400, "bogus",
         "unrecognized"),
        ("completions", {"model": "gpt2", "prompt": 7}, 400, "prompt", ""),
        ("completions", {"prompt": "x"}, 400, "model", "required"),
        ("chat/completions", _chat(messages=[]), 400, "messages", ""),
        ("chat/completions", _chat(messages=[{"role": "king", "content": "x"}]), 400,
         "messages.0.role", ""),
        ("chat/completions", _chat(tools=[{"type": "function"}]), 400, "tools", "not supported"),
        ("chat/completions", _chat(stream="yes"), 400, "stream", ""),
        ("completions", {"model": "tiny-emb", "prompt": "x"}, 400, None, "not a text-generation"),
        ("embeddings", {"model": "gpt2", "input": "x"}, 400, None, ""),
        ("embeddings", {"model": "nope", "input": "x"}, 404, None, "nope"),
        ("embeddings", {"model": "tiny-emb", "input": [[1, 2]]}, 400, "input", "token ids"),
        ("embeddings", {"model": "tiny-emb", "input": "x", "dimensions": 3}, 400, "dimensions",
         "dimensions"),
        ("nowhere", {}, 404, None, "no route"),
    ],
)  # fmt: skip
async def test_bad_input_is_refused_in_openais_error_shape(
    node: Daemon, certs_dir: Path, published: str,
    path: str, body: dict[str, Any], status: int, param: str | None, match: str,
) -> None:  # fmt: skip
    async with _http(client_context(TLSPaths.in_dir(certs_dir, "client"))) as http:
        r = await http.post(f"{_url(node)}/{path}", json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["param"] == param and error["type"] and error["code"]
    assert re.search(match, error["message"]), error["message"]
    assert "Traceback" not in node.log_tail(200)


async def test_malformed_and_oversized_bodies(node: Daemon, certs_dir: Path) -> None:
    async with _http(client_context(TLSPaths.in_dir(certs_dir, "client"))) as http:
        bad = await http.post(f"{_url(node)}/completions", content=b"{not json")
        big = await http.post(
            f"{_url(node)}/completions", json={"model": "gpt2", "prompt": "x" * 70000}
        )
        wrong = await http.get(f"{_url(node)}/completions")
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
    assert big.status_code == 413 and "max_request_bytes" in big.json()["error"]["message"]
    assert wrong.status_code == 405


async def test_a_full_queue_is_429_and_a_hang_up_frees_the_slot(
    api: openai.AsyncOpenAI,
) -> None:
    # max_running 1, max_queued 1: a long stream runs, the next waits, a third is refused.
    long = await api.completions.create(
        model="gpt2", prompt=PROMPT, max_tokens=450, temperature=0, stream=True
    )
    it = long.__aiter__()
    await anext(it)
    waiting = asyncio.ensure_future(
        api.completions.create(model="gpt2", prompt=PROMPT, max_tokens=5, temperature=0)
    )
    for _ in range(200):
        await asyncio.sleep(0.05)
        try:
            await api.completions.create(model="gpt2", prompt=PROMPT, max_tokens=5)
        except openai.RateLimitError as e:
            assert "queue full" in str(e)
            break
    else:
        pytest.fail("a third completion was never refused with 429")
    await long.close()  # hang up: the node frees the long one at its next step
    done = await asyncio.wait_for(waiting, 120)
    assert done.choices[0].finish_reason == "length" and done.usage.completion_tokens == 5  # type: ignore[union-attr]


async def test_callers_without_a_good_certificate_are_refused(
    node: Daemon, certs_dir: Path, foreign_certs_dir: Path
) -> None:
    plain = ssl.create_default_context(cafile=str(certs_dir / "ca.crt"))
    plain.check_hostname = False
    for ctx in (plain, client_context(TLSPaths.in_dir(foreign_certs_dir, "client"))):
        async with _http(ctx) as http:
            with pytest.raises(httpx2.TransportError):
                await http.get(f"{_url(node)}/models")
    async with openai.AsyncOpenAI(
        base_url=_url(node), api_key="x", max_retries=0, http_client=_http(plain)
    ) as client:
        with pytest.raises(openai.APIConnectionError):
            await client.models.list()
    assert "Traceback" not in node.log_tail(200)


async def test_a_revoked_identity_is_refused(node: Daemon, certs_dir: Path) -> None:
    certs.issue(certs_dir, "openai-revoked", Role.CLIENT)
    ctx = client_context(TLSPaths.in_dir(certs_dir, "openai-revoked"))
    async with _http(ctx) as http:
        assert (await http.get(f"{_url(node)}/models")).status_code == 200
        await _revoke(node, certs_dir, "spiffe://test/client/openai-revoked")
        for _ in range(100):
            r = await http.get(f"{_url(node)}/models")
            if r.status_code != 200:
                break
            await asyncio.sleep(0.1)
    assert r.status_code == 403, r.text
    assert "revoked" in r.json()["error"]["message"]


async def test_the_openai_client_raises_its_own_errors(api: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError, match="nope"):
        await api.completions.create(model="nope", prompt="x")
    with pytest.raises(openai.BadRequestError) as e:
        await api.chat.completions.create(
            model="gpt2", messages=[{"role": "user", "content": "hi"}], n=2
        )
    assert e.value.param == "n" and e.value.type == "invalid_request_error"


async def test_a_stream_open_when_its_identity_is_revoked_ends_with_an_error(
    node: Daemon, certs_dir: Path
) -> None:
    certs.issue(certs_dir, "openai-revoked-mid", Role.CLIENT)
    http = _http(client_context(TLSPaths.in_dir(certs_dir, "openai-revoked-mid")))
    async with openai.AsyncOpenAI(
        base_url=_url(node), api_key="x", max_retries=0, http_client=http
    ) as client:
        stream = await client.completions.create(
            model="gpt2", prompt=PROMPT, max_tokens=450, temperature=0, stream=True,
            extra_body={"return_token_ids": True},
        )  # fmt: skip
        it = stream.__aiter__()
        await anext(it)
        await _revoke(node, certs_dir, "spiffe://test/client/openai-revoked-mid")
        with pytest.raises(openai.APIError, match="revoked"):
            async for _ in it:
                pass
    assert "Traceback" not in node.log_tail(200)


async def _revoke(node: Daemon, certs_dir: Path, uri: str) -> None:
    async with aio_channel(node.address, certs_dir, "admin") as ch:
        await agent_pb2_grpc.AgentServiceStub(ch).Revoke(
            agent_pb2.RevokeRequest(identity=uri), timeout=30
        )


def test_a_door_port_in_use_stops_the_start_with_one_line(
    node: Daemon, port: int, tmp_path: Path, certs_dir: Path
) -> None:
    grpc_port = free_port()
    args = ["--name", "n8", "--certs", str(certs_dir), "--data", str(tmp_path / "n8"),
            "--listen", f"127.0.0.1:{grpc_port}", "--http-listen", f"127.0.0.1:{port}"]  # fmt: skip
    r = subprocess.run(
        [sys.executable, "-m", "p2pagent.cli.daemon", *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 2, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("p2pagentd: error: cannot serve the OpenAI door on 127.0.0.1:")
    assert "(openai.listen)" in last and "Traceback" not in r.stderr


async def test_requests_over_the_connection_limit_get_openais_503(
    tmp_path: Path, certs_dir: Path
) -> None:
    door = free_port()
    env = {"P2PAGENT_OPENAI__LISTEN": f"127.0.0.1:{door}", "P2PAGENT_OPENAI__MAX_CONNECTIONS": "2"}
    d = Daemon("n6", certs_dir, tmp_path / "n6", env=env)  # a node certificate of its own
    d.start(timeout=120)
    ctx = client_context(TLSPaths.in_dir(certs_dir, "client"))
    url = f"https://127.0.0.1:{door}/v1"
    held: list[ssl.SSLSocket] = []
    try:
        for _ in range(2):  # two open connections (handshake done, no request): the limit
            held.append(ctx.wrap_socket(socket.create_connection(("127.0.0.1", door), 30)))
        async with openai.AsyncOpenAI(
            base_url=url, api_key="x", max_retries=0, http_client=_http(ctx)
        ) as client:
            with pytest.raises(openai.InternalServerError) as refused:
                for _ in range(100):  # until the node has counted both connections
                    await client.models.list()
                    await asyncio.sleep(0.05)
            assert refused.value.status_code == 503
            assert refused.value.response.headers["retry-after"] == "1"
            assert refused.value.type == "overloaded_error"  # OpenAI's shape, not plain text
            assert "openai.max_connections" in refused.value.message
            for s in held:
                s.close()
            held.clear()
            for _ in range(100):  # the node notices the closed connections
                try:
                    await client.models.list()
                    break
                except openai.InternalServerError:
                    await asyncio.sleep(0.05)
            else:
                pytest.fail("the door still refused after the connections closed")
        assert "Traceback" not in d.log_tail(200)
    finally:
        for s in held:
            s.close()
        d.kill()
