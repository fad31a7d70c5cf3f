"""Hostile or careless callers against one real daemon: a request flood from one identity,
oversized messages, and a bounded fuzz of every public RPC with hypothesis-generated
messages. Each gets a gRPC status (never a crash, never an internal error), and the daemon
keeps answering. Certificate attacks are in test_daemon.py, bad gossip in
test_membership.py, bad tensors in test_infer.py."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor as pbd
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pagent._proto import agent_pb2, agent_pb2_grpc
from p2pagent.identity import certs
from p2pagent.identity.spiffe import Role
from p2pagent.testing.channels import aio_channel, channel
from p2pagent.testing.daemon import Daemon

MAX_MESSAGE = 1 << 20


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, certs_dir: Path) -> Iterator[Daemon]:
    if not (certs_dir / "client2.crt").exists():
        certs.issue(certs_dir, "client2", Role.CLIENT)
    d = Daemon(
        "n4",
        certs_dir,
        tmp_path_factory.mktemp("attacks") / "n4",
        args=["--rate-limit", "50"],
        env={"P2PAGENT_MAX_MESSAGE_BYTES": str(MAX_MESSAGE)},
    ).start()
    try:
        yield d
    finally:
        d.kill()


def _alive(node: Daemon, certs_dir: Path, *, rate_limited_ok: bool = False) -> None:
    """The node answers ``Status`` to client2. ``rate_limited_ok``: client2 has itself been
    calling fast, so a rate-limit refusal is waited out as its message asks (a few tries)."""
    with channel(node.address, certs_dir, "client2", max_mib=4) as ch:
        stub = agent_pb2_grpc.AgentServiceStub(ch)
        for attempt in range(5):
            try:
                assert stub.Status(agent_pb2.StatusRequest(), timeout=10).name == "n4"
                return
            except grpc.RpcError as e:
                limited = e.code() is grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
                if not (rate_limited_ok and limited and attempt < 4):
                    raise
                time.sleep(0.2 * 2**attempt)


async def test_a_flood_from_one_identity_is_rate_limited_and_others_still_served(
    node: Daemon, certs_dir: Path
) -> None:
    async with aio_channel(node.address, certs_dir, "client", max_mib=4) as ch:
        stub = agent_pb2_grpc.AgentServiceStub(ch)

        async def one() -> grpc.StatusCode:
            try:
                await stub.Status(agent_pb2.StatusRequest(), timeout=10)
                return grpc.StatusCode.OK
            except grpc.aio.AioRpcError as e:
                return e.code()

        codes = await asyncio.gather(*(one() for _ in range(400)))
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
    _alive(node, certs_dir)  # another identity is not punished for the flood


def test_an_oversized_message_is_refused_and_survived(node: Daemon, certs_dir: Path) -> None:
    with channel(node.address, certs_dir, "client2", max_mib=8) as ch:
        big = agent_pb2.PutRequest(namespace="ns", key="k", value=b"x" * (2 * MAX_MESSAGE))
        with pytest.raises(grpc.RpcError) as e:
            agent_pb2_grpc.AgentServiceStub(ch).Put(big, timeout=10)
    assert e.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
    _alive(node, certs_dir)


# ---- fuzz -----------------------------------------------------------------------------------

NASTY_STRINGS = ["", "../../etc/passwd", "a" * 5000, "\x00", "ns/../..", "_models", "💥", " "]
NASTY_INTS = [0, 1, -1, 2**31 - 1, 2**32 - 1, -(2**31)]


def _fill(msg: Message, rng: random.Random, depth: int = 0) -> Message:
    """Sets random fields of ``msg`` from its descriptor: hostile strings, extreme numbers,
    random bytes, nested messages, repeated fields of random length."""
    for f in msg.DESCRIPTOR.fields:
        if rng.random() < 0.3:
            continue
        is_repeated = getattr(f, "is_repeated", None)
        repeated = is_repeated if isinstance(is_repeated, bool) else f.label == f.LABEL_REPEATED
        count = rng.randrange(4) if repeated else 1
        for _ in range(count):
            if f.type == pbd.FieldDescriptor.TYPE_MESSAGE:
                if f.message_type.GetOptions().map_entry:
                    getattr(msg, f.name)[rng.choice(NASTY_STRINGS)[:50]] = (
                        rng.randrange(2**63)
                        if f.message_type.fields_by_name["value"].type
                        != pbd.FieldDescriptor.TYPE_STRING
                        else rng.choice(NASTY_STRINGS)
                    )
                    continue
                if depth > 3:
                    continue
                target = getattr(msg, f.name).add() if repeated else getattr(msg, f.name)
                _fill(target, rng, depth + 1)
                continue
            value = _scalar(f, rng)
            if repeated:
                getattr(msg, f.name).append(value)
            else:
                setattr(msg, f.name, value)
    return msg


def _scalar(f: pbd.FieldDescriptor, rng: random.Random) -> object:
    t = f.type
    if t == pbd.FieldDescriptor.TYPE_STRING:
        return rng.choice(NASTY_STRINGS)
    if t == pbd.FieldDescriptor.TYPE_BYTES:
        return rng.randbytes(rng.choice([0, 1, 7, 64, 4096]))
    if t == pbd.FieldDescriptor.TYPE_BOOL:
        return rng.random() < 0.5
    if t in (pbd.FieldDescriptor.TYPE_DOUBLE, pbd.FieldDescriptor.TYPE_FLOAT):
        return rng.choice([0.0, -1.0, 1e-9, 1e30, float("inf"), float("nan")])
    if t == pbd.FieldDescriptor.TYPE_ENUM:
        return rng.choice([v.number for v in f.enum_type.values] + [99])
    fd = pbd.FieldDescriptor
    unsigned = t in (fd.TYPE_UINT32, fd.TYPE_UINT64, fd.TYPE_FIXED32, fd.TYPE_FIXED64)
    value = rng.choice(NASTY_INTS)
    if unsigned:
        value = abs(value)
    if t in (pbd.FieldDescriptor.TYPE_INT32, pbd.FieldDescriptor.TYPE_SINT32,
             pbd.FieldDescriptor.TYPE_SFIXED32, pbd.FieldDescriptor.TYPE_UINT32,
             pbd.FieldDescriptor.TYPE_FIXED32):  # fmt: skip
        value = max(min(value, 2**31 - 1 if not unsigned else 2**32 - 1), -(2**31))
    return value


SERVICE = agent_pb2.DESCRIPTOR.services_by_name["AgentService"]
#: Calls whose answer legitimately waits for something (a deadline is their normal ending).
WAITING = {"Wait", "SubmitAndWait", "Watch", "PullModel"}


def _call(ch: grpc.Channel, method: pbd.MethodDescriptor, payload: bytes) -> grpc.StatusCode:
    path = f"/{SERVICE.full_name}/{method.name}"
    timeout = 3.0 if method.name in WAITING else 20.0
    try:
        if method.client_streaming and method.server_streaming:  # InferStream, Average...
            for _ in ch.stream_stream(path)(iter([payload, payload]), timeout=timeout):
                pass
        elif method.client_streaming:
            call = ch.stream_unary(path)
            call(iter([payload, payload]), timeout=timeout)
        elif method.server_streaming:
            for _ in ch.unary_stream(path)(payload, timeout=timeout):
                pass
        else:
            ch.unary_unary(path)(payload, timeout=timeout)
        return grpc.StatusCode.OK
    except grpc.RpcError as e:
        return e.code()  # type: ignore[attr-defined, no-any-return]


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    method=st.sampled_from(list(SERVICE.methods)),
    seed=st.integers(0, 2**32),
    raw=st.booleans(),
)
def test_fuzzed_public_calls_get_a_status_never_a_crash(
    node: Daemon, certs_dir: Path, method: pbd.MethodDescriptor, seed: int, raw: bool
) -> None:
    rng = random.Random(seed)
    if raw:
        payload = rng.randbytes(rng.randrange(64))
    else:
        cls = getattr(agent_pb2, method.input_type.name)
        payload = _fill(cls(), rng).SerializeToString()
    with channel(node.address, certs_dir, "client2", max_mib=4) as ch:
        code = _call(ch, method, payload)
    assert code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), (method.name, seed)
    if method.name not in WAITING:
        assert code is not grpc.StatusCode.DEADLINE_EXCEEDED, (method.name, seed, "hung")
    _alive(node, certs_dir, rate_limited_ok=True)  # its own fast calls may be limited
