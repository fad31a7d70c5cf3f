"""The placing entry of a generation (inference/generation/placed.py) over real engines and
fake peers: each peer is a real ``GenerationService`` behind a fake network that can refuse,
die before the first token or die mid-stream. Also the service's loads (no lock held across
a pull) and unloads (a superseded version, the weight budget)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncGenerator, Callable
from pathlib import Path

import pytest

from p2pagent._proto import agent_pb2
from p2pagent.errors import InvalidArgument, ResourceExhausted, Unavailable
from p2pagent.inference.generation.config import GenerationConfig
from p2pagent.inference.generation.engine import (
    Event,
    FinishEvent,
    TokenEvent,
    budgeted_bytes_per_token,
)
from p2pagent.inference.generation.placed import PlacedGeneration, named
from p2pagent.inference.generation.placement import Load
from p2pagent.inference.generation.published import PublishedDecoders
from p2pagent.inference.generation.sampling import SamplingParams
from p2pagent.inference.generation.service import GenerationService, Prompt
from p2pagent.inference.generation.wire import prompt_of, sampling_of
from p2pagent.membership.view import ALIVE, MemberView
from p2pagent.models.manifest import Manifest
from p2pagent.models.registry import Entry
from p2pagent.testing.decoder_folders import build_gpt2_folder
from tests.unit.generation.test_published import FakeVersions, _pack

PROMPT = Prompt(ids=(5, 6, 7, 8))
NEW = 6
WAIT_S = 60.0


class FakePeers:
    """The network as placing sees it; each peer runs on its own real service."""

    def __init__(self, services: dict[str, GenerationService]) -> None:
        self.services = services
        self.loads: dict[str, Load | Exception] = {}
        self.behaviour: dict[str, str] = {}
        self.asked: list[str] = []
        self.relayed: list[str] = []
        self.closed: list[str] = []
        #: Peers with behaviour "hold" take the sequence once this is set.
        self.hold = asyncio.Event()

    async def load(self, peer: str, model: str, manifest_id: str, within_s: float) -> Load:
        self.asked.append(peer)
        answer = self.loads.get(peer, Load(peer, loaded=False, room=True))
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def relay(
        self, peer: str, request: agent_pb2.GenerateRequest
    ) -> AsyncGenerator[Event, None]:
        self.relayed.append(peer)
        try:
            how = self.behaviour.get(peer, "run")
            if how == "refuse":
                raise ResourceExhausted("no room to start this sequence now")
            if how == "die":
                raise Unavailable("cannot connect: connection refused")
            if how == "hold":
                await self.hold.wait()
            service = self.services[peer]
            target = service.resolve(request.model, request.model_version)
            events = await service.generate_on(
                target, prompt_of(request), sampling_of(request), require_room=True
            )
            sent = 0
            async with contextlib.aclosing(named(events, peer)) as stream:
                async for event in stream:
                    if how == "die_after_2" and sent == 2:
                        raise Unavailable("connection reset by peer")
                    yield event
                    sent += 1
        finally:
            self.closed.append(peer)


def _members(*names: str) -> list[MemberView]:
    return [MemberView(n, f"{n}:1", ALIVE, 1, {}) for n in names]


async def _collect(events: object) -> list[Event]:
    assert hasattr(events, "__aiter__")
    return [e async for e in events]


def _ids(events: list[Event]) -> list[int]:
    return [e.token_id for e in events if isinstance(e, TokenEvent)]


class Mesh:
    """A published tiny GPT-2, this node's service and two peers' services."""

    def __init__(self, tmp_path: Path, here: GenerationConfig | None = None) -> None:
        self.versions = FakeVersions()
        self.folder = build_gpt2_folder(tmp_path / "lm", seed=3)
        self.manifest = self.versions.add("lm", *_pack(self.folder, tmp_path / "lm.pk"), 1)
        published = PublishedDecoders(self.versions)
        self.here = GenerationService({}, here or GenerationConfig(), "cpu", published)
        self.p1 = GenerationService({}, GenerationConfig(), "cpu", published)
        self.p2 = GenerationService({}, GenerationConfig(), "cpu", published)
        self.peers = FakePeers({"p1": self.p1, "p2": self.p2})
        self.placed = PlacedGeneration(
            "here", self.here, self.peers, lambda: _members("p1", "p2"), random.Random(0)
        )

    async def generate(self, new: int = NEW) -> list[Event]:
        return await _collect(
            await self.placed.generate("lm", PROMPT, SamplingParams(max_new_tokens=new))
        )

    async def close(self) -> None:
        for service in (self.here, self.p1, self.p2):
            await service.close()


def _small_kv(tmp_path: Path, tokens: int) -> GenerationConfig:
    """A budget that holds one sequence of at most ``tokens`` tokens."""
    from p2pagent.inference.generation.folder import load_decoder_folder

    folder = load_decoder_folder(build_gpt2_folder(tmp_path / "probe", seed=3), "cpu")
    return GenerationConfig(kv_cache_bytes=budgeted_bytes_per_token(folder) * tokens)


async def test_a_node_with_room_runs_it_here_without_asking(tmp_path: Path) -> None:
    mesh = Mesh(tmp_path)
    try:
        first = await mesh.generate()  # not loaded anywhere: this node wins the tie
        assert isinstance(first[-1], FinishEvent) and first[-1].node == "here"
        asked = list(mesh.peers.asked)
        second = await mesh.generate()  # loaded, room: nobody is asked
        assert mesh.peers.asked == asked and mesh.peers.relayed == []
        assert isinstance(second[-1], FinishEvent) and second[-1].node == "here"
        assert _ids(first) == _ids(second) and len(_ids(first)) == NEW
    finally:
        await mesh.close()


async def test_a_full_node_places_it_on_a_peer_with_the_same_tokens(tmp_path: Path) -> None:
    mesh = Mesh(tmp_path, _small_kv(tmp_path, len(PROMPT.ids) + 3))
    try:
        warm = await mesh.generate(new=2)  # fits here: loads the engine here
        assert isinstance(warm[-1], FinishEvent) and warm[-1].node == "here"
        mesh.peers.asked.clear()
        mesh.peers.loads = {
            "p1": Unavailable("cannot connect: connection refused"),  # left out
            "p2": Load("p2", loaded=True, room=True, running=1, max_running=4),
        }
        events = await mesh.generate()  # 4 + 6 tokens do not fit here
        assert sorted(mesh.peers.asked) == ["p1", "p2"]  # both sampled (power of two)
        assert mesh.peers.relayed == ["p2"]
        last = events[-1]
        assert isinstance(last, FinishEvent) and last.node == "p2"
        assert last.generated_tokens == NEW and last.prompt_tokens == len(PROMPT.ids)
        alone = await mesh.p1.generate("lm", PROMPT, SamplingParams(max_new_tokens=NEW))
        assert _ids(events) == _ids(await _collect(alone))  # greedy: the same ids anywhere
        assert mesh.peers.closed == ["p2"]
        assert mesh.placed.counts.relayed_out == 1 and mesh.placed.counts.placed_locally == 1
    finally:
        await mesh.close()


async def test_refusals_and_a_death_before_the_first_token_try_the_next(tmp_path: Path) -> None:
    mesh = Mesh(tmp_path)
    try:
        mesh.peers.loads = {
            "p1": Load("p1", loaded=True, room=True),
            "p2": Load("p2", loaded=True, room=True, running=1, max_running=2),
        }
        mesh.peers.behaviour = {"p1": "refuse", "p2": "die"}
        events = await mesh.generate()
        assert mesh.peers.relayed == ["p1", "p2"]
        assert sorted(mesh.peers.closed) == ["p1", "p2"]
        last = events[-1]
        assert isinstance(last, FinishEvent) and last.node == "here"  # run here at last
        assert len(_ids(events)) == NEW
        assert mesh.placed.counts.failed_over == 2 and mesh.placed.counts.placed_locally == 1
    finally:
        await mesh.close()


async def test_a_peer_dying_mid_stream_is_unavailable_without_repeats(tmp_path: Path) -> None:
    mesh = Mesh(tmp_path, _small_kv(tmp_path, len(PROMPT.ids) + 3))
    try:
        await mesh.generate(new=2)
        mesh.peers.loads = {
            "p1": Load("p1", loaded=True, room=True),
            "p2": Load("p2", loaded=False, room=True),
        }
        mesh.peers.behaviour = {"p1": "die_after_2"}
        events = await mesh.placed.generate("lm", PROMPT, SamplingParams(max_new_tokens=NEW))
        got: list[Event] = []
        with pytest.raises(Unavailable, match=r"node p1.*after 2 messages.*send the request"):
            async for event in events:
                got.append(event)
        assert len(got) == 2 and all(isinstance(e, TokenEvent) for e in got)
        assert mesh.peers.relayed == ["p1"]  # never run again elsewhere
    finally:
        await mesh.close()


async def test_leaving_the_stream_cancels_the_peers_sequence(tmp_path: Path) -> None:
    mesh = Mesh(tmp_path, _small_kv(tmp_path, len(PROMPT.ids) + 3))
    try:
        await mesh.generate(new=2)
        mesh.peers.loads = {
            "p1": Load("p1", loaded=True, room=True),
            "p2": Load("p2", loaded=False, room=True),
        }
        events = await mesh.placed.generate("lm", PROMPT, SamplingParams(max_new_tokens=400))
        assert hasattr(events, "aclose")
        first = await anext(events)
        assert isinstance(first, TokenEvent)
        runner = mesh.p1.runner_if_loaded(mesh.p1.resolve("lm"))
        assert runner is not None
        cancelled: list[int] = []
        called = asyncio.Event()
        engine_cancel = runner.engine.cancel

        def cancel(seq_id: int) -> None:
            cancelled.append(seq_id)
            called.set()
            engine_cancel(seq_id)

        runner.engine.cancel = cancel  # type: ignore[method-assign]
        await events.aclose()  # the client hung up
        assert mesh.peers.closed == ["p1"] and not runner.queues
        async with asyncio.timeout(WAIT_S):  # at the engine's next step, long before 400
            await called.wait()
            async with runner.lock:  # the step after the cancel has run: the slot is free
                assert runner.engine.idle
        assert cancelled == [0]
    finally:
        await mesh.close()


async def test_a_local_folder_is_never_placed_on_a_peer(tmp_path: Path) -> None:
    folder = build_gpt2_folder(tmp_path / "local", seed=3)
    config = _small_kv(tmp_path, len(PROMPT.ids) + 3)
    service = GenerationService({"mine": folder}, config, "cpu")
    peers = FakePeers({})
    placed = PlacedGeneration("here", service, peers, lambda: _members("p1"))
    try:
        with pytest.raises(InvalidArgument, match="kv_cache_bytes"):
            await placed.generate("mine", PROMPT, SamplingParams(max_new_tokens=NEW))
        assert peers.asked == [] and peers.relayed == []
    finally:
        await service.close()


class SlowVersions(FakeVersions):
    """Pulls of ``slow`` wait until released."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()

    async def pull(self, entry: Entry, *, pin: bool = True) -> Manifest:
        if entry.manifest.name == "slow":
            await self.release.wait()
        return await super().pull(entry, pin=pin)


async def test_a_pull_holds_up_no_other_model(tmp_path: Path) -> None:
    versions = SlowVersions()
    versions.add("slow", *_pack(build_gpt2_folder(tmp_path / "s", seed=1), tmp_path / "s.pk"), 1)
    local = build_gpt2_folder(tmp_path / "local", seed=2)
    service = GenerationService(
        {"here": local}, GenerationConfig(), "cpu", PublishedDecoders(versions)
    )
    params = SamplingParams(max_new_tokens=2)
    try:
        slow = asyncio.create_task(_collect(await_generate(service, "slow", params)))
        twice = asyncio.create_task(_collect(await_generate(service, "slow", params)))
        async with asyncio.timeout(WAIT_S):
            done = await _collect(await service.generate("here", PROMPT, params))
        assert len(_ids(done)) == 2 and not slow.done()
        versions.release.set()
        async with asyncio.timeout(WAIT_S):
            assert len(_ids(await slow)) == len(_ids(await twice)) == 2
        assert versions.pulled.count(versions.entries("slow")[0].manifest_id) == 1  # one load
    finally:
        await service.close()


async def await_generate(
    service: GenerationService, model: str, params: SamplingParams
) -> AsyncGenerator[Event, None]:
    async for event in await service.generate(model, PROMPT, params):
        yield event


async def test_an_older_version_and_engines_over_the_budget_are_unloaded(tmp_path: Path) -> None:
    versions = FakeVersions()
    v1 = versions.add("lm", *_pack(build_gpt2_folder(tmp_path / "a", seed=1), tmp_path / "a.pk"), 1)
    local = build_gpt2_folder(tmp_path / "local", seed=2)
    service = GenerationService(
        {"here": local}, GenerationConfig(), "cpu", PublishedDecoders(versions)
    )
    params = SamplingParams(max_new_tokens=2)
    try:
        await _collect(await service.generate("lm", PROMPT, params))
        assert service.loaded() == [f"lm@{v1.manifest_id}"]
        v2 = versions.add(
            "lm", *_pack(build_gpt2_folder(tmp_path / "b", seed=2), tmp_path / "b.pk"), 2
        )
        await _collect(await service.generate("lm", PROMPT, params))
        await asyncio.sleep(0)  # the unload is scheduled on the loop
        assert service.loaded() == [f"lm@{v2.manifest_id}"]
        # Pinned, the old one loads again and stays while it is chosen.
        await _collect(await service.generate("lm", PROMPT, params, v1.manifest_id))
        await asyncio.sleep(0)
        assert service.loaded() == sorted([f"lm@{v1.manifest_id}", f"lm@{v2.manifest_id}"])
        # Over a weight budget of one engine, the least recently used idle ones go.
        service.config.loaded_bytes = 1
        await _collect(await service.generate("here", PROMPT, params))
        await asyncio.sleep(0)
        assert service.loaded() == ["here"]
    finally:
        await service.close()


async def test_a_cold_node_loads_first_then_places_what_it_cannot_hold(tmp_path: Path) -> None:
    mesh = Mesh(tmp_path, _small_kv(tmp_path, len(PROMPT.ids) + 3))
    try:
        # Cold everywhere: this node wins the tie, loads, learns that 4 + 6 tokens never
        # fit its budget, and places the sequence on a peer instead of refusing it.
        events = await mesh.generate()
        last = events[-1]
        assert isinstance(last, FinishEvent) and last.node == "p1"  # first among equals
        assert mesh.here.loaded() == [f"lm@{mesh.manifest.manifest_id}"]
        assert len(_ids(events)) == NEW
    finally:
        await mesh.close()


async def _until(check: Callable[[], object]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def _queueing() -> GenerationConfig:
    """One running sequence here; a waiting one is offered to peers after 50 ms."""
    return GenerationConfig(max_running=1, move_waiting_after_s=0.05, move_max_gap_s=0.1)


async def _start(mesh: Mesh, new: int) -> tuple[AsyncGenerator[Event, None], Event]:
    events = await mesh.placed.generate("lm", PROMPT, SamplingParams(max_new_tokens=new))
    assert isinstance(events, AsyncGenerator)
    return events, await anext(events)


async def test_a_waiting_sequence_moves_to_a_peer_that_has_room_later(tmp_path: Path) -> None:
    mesh = Mesh(tmp_path, _queueing())
    try:
        long, first = await _start(mesh, 400)  # holds this node's only running slot
        assert isinstance(first, TokenEvent)
        busy = Load("p1", loaded=True, room=False, running=1, max_running=1)
        mesh.peers.loads = {"p1": busy, "p2": busy}
        waiting = asyncio.create_task(mesh.generate())  # queued here: nobody has room
        # Asked at placement, then twice more by offers that found no room.
        await _until(lambda: len(mesh.peers.asked) >= 6)
        assert mesh.peers.relayed == [] and not waiting.done()
        mesh.peers.loads = {"p1": Load("p1", loaded=False, room=True), "p2": busy}
        async with asyncio.timeout(WAIT_S):
            events = await waiting
        last = events[-1]
        assert isinstance(last, FinishEvent) and last.node == "p1"
        assert last.generated_tokens == NEW and mesh.peers.relayed == ["p1"]
        alone = await mesh.p2.generate("lm", PROMPT, SamplingParams(max_new_tokens=NEW))
        assert _ids(events) == _ids(await _collect(alone))
        assert mesh.placed.counts.moved == 1 and mesh.placed.counts.relayed_out == 1
        runner = mesh.here.runner_if_loaded(mesh.here.resolve("lm"))
        assert runner is not None and runner.engine.scheduler.waiting == 0  # withdrawn here
        assert isinstance(await anext(long), TokenEvent)  # the running one goes on
        await long.aclose()
    finally:
        await mesh.close()


async def test_a_sequence_admitted_here_first_stays_and_the_peers_copy_is_cancelled(
    tmp_path: Path,
) -> None:
    mesh = Mesh(tmp_path, _queueing())
    try:
        long, _ = await _start(mesh, 400)
        busy = Load("p1", loaded=True, room=False, running=1, max_running=1)
        mesh.peers.loads = {"p1": busy, "p2": Unavailable("down")}
        waiting = asyncio.create_task(mesh.generate())
        runner = mesh.here.runner_if_loaded(mesh.here.resolve("lm"))
        assert runner is not None
        await _until(lambda: runner.engine.scheduler.waiting)  # queued here: nobody had room
        mesh.peers.loads["p1"] = Load("p1", loaded=True, room=True)
        mesh.peers.behaviour = {"p1": "hold"}  # takes it only once released
        await _until(lambda: "p1" in mesh.peers.relayed)  # offered to p1, which holds it
        await long.aclose()  # the slot here frees: the waiting one is admitted here
        await _until(lambda: not runner.engine.scheduler.waiting)
        mesh.peers.hold.set()  # the peer's first token comes too late: it is cancelled
        async with asyncio.timeout(WAIT_S):
            events = await waiting
        last = events[-1]
        assert isinstance(last, FinishEvent) and last.node == "here"
        assert len(_ids(events)) == NEW  # one stream only, never tokens from both
        assert mesh.placed.counts.moved == 0 and mesh.placed.counts.placed_locally == 2
        await _until(lambda: "p1" in mesh.peers.closed)
    finally:
        await mesh.close()


async def test_a_sequence_that_runs_at_once_is_never_offered(tmp_path: Path) -> None:
    mesh = Mesh(tmp_path, _queueing())
    try:
        await mesh.generate(new=2)  # loads here
        mesh.peers.asked.clear()
        events, _ = await _start(mesh, 60)
        await asyncio.sleep(0.3)  # six bounds: a waiting one would have been offered
        assert mesh.peers.asked == [] and mesh.peers.relayed == []
        await events.aclose()
    finally:
        await mesh.close()
