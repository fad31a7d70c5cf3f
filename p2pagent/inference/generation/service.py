"""The asyncio side of generation: decoder folders served by this node, one decode engine
each, stepped by one task per model on a thread of its own.

Thin glue around ``DecodeEngine``: the engine is not thread-safe, so every submit and cancel
happens on the event loop between two steps (an ``asyncio.Lock`` the stepping task holds
while a step runs in its thread); a caller waits at most one step to be queued. Events go to
one ``asyncio.Queue`` per sequence. A caller that stops iterating (hung up, cancelled)
cancels its sequence, which leaves at the next step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from p2pagent.errors import InvalidArgument, NotFound, quoted
from p2pagent.inference.generation.config import GenerationConfig
from p2pagent.inference.generation.engine import DecodeEngine, Event, FinishEvent
from p2pagent.inference.generation.folder import (
    ChatMessage,
    DecoderFolder,
    load_decoder_folder,
)
from p2pagent.inference.generation.placement import Load
from p2pagent.inference.generation.published import PublishedDecoders
from p2pagent.inference.generation.residency import (
    Resident,
    is_superseded,
    next_deadline,
    to_unload,
)
from p2pagent.inference.generation.sampling import SamplingParams
from p2pagent.inference.generation.scheduler import FinishReason, Phase

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prompt:
    """Exactly one of text, token ids or chat messages."""

    text: str = ""
    ids: tuple[int, ...] = ()
    messages: tuple[ChatMessage, ...] = ()

    def tokens(self, folder: DecoderFolder) -> list[int]:
        given = sum(map(bool, (self.text, self.ids, self.messages)))
        if given != 1:
            raise InvalidArgument(
                "give exactly one of prompt (text), prompt_ids or messages, got "
                + ("none" if not given else f"{given}")
            )
        if self.messages:
            return folder.render_chat(list(self.messages))
        if self.ids:
            return list(self.ids)
        return folder.encode(self.text)


class _Withdrawn:
    """Put in a sequence's queue when it moved to a peer: its local events end."""


_WITHDRAWN = _Withdrawn()


class _ModelRunner:
    def __init__(
        self,
        name: str,
        folder: DecoderFolder,
        config: GenerationConfig,
        clock: Callable[[], float],
    ) -> None:
        self.name = name
        self.clock = clock
        self.engine = DecodeEngine(folder, config, random.Random())
        self.lock = asyncio.Lock()
        self.queues: dict[int, asyncio.Queue[Event | _Withdrawn]] = {}
        self.cancels: list[int] = []
        self.wake = asyncio.Event()
        self.weight_bytes = sum(p.numel() * p.element_size() for p in folder.model.parameters())
        self.last_used = clock()
        #: When a sequence last chose this engine (a superseded version is one not chosen
        #: since the newer one was).
        self.chosen_at = self.last_used
        #: Callers between their choice of this runner and their submit (not yet queued).
        self.arriving = 0
        #: Called on the loop when the runner's last sequence ends (the unload timer).
        self.on_idle: Callable[[], None] = lambda: None
        self.executor = ThreadPoolExecutor(1, thread_name_prefix=f"generate-{name}")
        self.task = asyncio.create_task(self._loop(), name=f"generate {name}")

    @property
    def busy(self) -> bool:
        return bool(self.queues or self.arriving or not self.engine.idle)

    async def load(self, node: str, prompt: list[int] | None, params: SamplingParams) -> Load:
        """This engine's load; ``room`` for a sequence of that size (None: any size). Read
        between two steps: a step changes the scheduler's sets on its thread."""
        async with self.lock:
            return self._load(node, prompt, params)

    def _load(self, node: str, prompt: list[int] | None, params: SamplingParams) -> Load:
        s = self.engine.scheduler
        size = (len(prompt), params.max_new_tokens) if prompt is not None else (1, 1)
        return Load(
            node=node,
            loaded=True,
            room=s.room_for(*size),
            running=s.running,
            waiting=s.waiting,
            max_running=s.max_running,
            reserved_fraction=s.reserved_bytes / max(1, s.kv_cache_bytes),
        )

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            async with self.lock:
                for seq_id in self.cancels:
                    self.engine.cancel(seq_id)
                    log.debug("%s: sequence %d cancelled by its caller, freed", self.name, seq_id)
                self.cancels.clear()
                if not self.engine.idle:
                    try:
                        events = await loop.run_in_executor(self.executor, self.engine.step)
                    except Exception:  # a bug of ours, not the model's: end every sequence
                        log.exception("generation step of %s failed", self.name)
                        events = [
                            FinishEvent(s, FinishReason.ERROR, 0, 0, error="internal error")
                            for s in self.queues
                        ]
                        self.engine = DecodeEngine(
                            self.engine.folder, self.engine.config, self.engine.rng
                        )
                    for event in events:
                        queue = self.queues.get(event.seq_id)
                        if queue is not None:
                            queue.put_nowait(event)
                    continue
            self.wake.clear()
            if self.engine.idle and not self.cancels:
                await self.wake.wait()

    async def submit(
        self, prompt: list[int], params: SamplingParams, *, require_room: bool = False
    ) -> int:
        """Queues a sequence (refusals raise now, nothing queued); its events arrive through
        ``events``, which the caller reads (or ends with ``close_sequence``)."""
        async with self.lock:
            seq_id = self.engine.submit(prompt, params, require_room=require_room)
            self.queues[seq_id] = asyncio.Queue()
        self.wake.set()
        return seq_id

    async def events(self, seq_id: int) -> AsyncGenerator[Event, None]:
        """The sequence's events up to its FinishEvent, or none more once it was withdrawn.
        Leaving early cancels the sequence."""
        queue = self.queues.get(seq_id)
        ended = False
        try:
            while queue is not None:
                event = await queue.get()
                if isinstance(event, _Withdrawn):
                    ended = True
                    return
                yield event
                if isinstance(event, FinishEvent):
                    ended = True
                    return
        finally:
            self.close_sequence(seq_id, cancel=not ended)

    def close_sequence(self, seq_id: int, *, cancel: bool = True) -> None:
        """The caller is done with the sequence; ``cancel``: it has not ended, so it leaves
        at the next step. Safe to call more than once."""
        if self.queues.pop(seq_id, None) is None:
            return
        self.last_used = self.clock()
        if cancel:
            self.cancels.append(seq_id)
            self.wake.set()
        if not self.queues:
            self.on_idle()

    def waiting(self, seq_id: int) -> bool:
        """Whether the sequence still waits for admission (a peek: ``withdraw`` decides)."""
        return self.engine.scheduler.phase(seq_id) is Phase.WAITING

    async def withdraw(self, seq_id: int) -> bool:
        """Takes a sequence that still waits for admission out of the queue, between two
        steps (so it cannot be admitted meanwhile): it moves to a peer. Its ``events`` end
        without a FinishEvent. False once it was admitted, ended or cancelled."""
        async with self.lock:
            queue = self.queues.get(seq_id)
            if queue is None or self.engine.scheduler.phase(seq_id) is not Phase.WAITING:
                return False
            self.engine.cancel(seq_id)
            queue.put_nowait(_WITHDRAWN)
            return True

    async def generate(
        self, prompt: list[int], params: SamplingParams, *, require_room: bool = False
    ) -> AsyncGenerator[Event, None]:
        seq_id = await self.submit(prompt, params, require_room=require_room)
        try:
            async for event in self.events(seq_id):
                yield event
        finally:
            self.close_sequence(seq_id)

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        self.executor.shutdown(wait=True)


@dataclass(frozen=True)
class QueuedSequence:
    """A sequence submitted to this node's engine, not yet necessarily admitted."""

    runner: _ModelRunner
    seq_id: int

    def events(self) -> AsyncGenerator[Event, None]:
        return self.runner.events(self.seq_id)

    def waiting(self) -> bool:
        return self.runner.waiting(self.seq_id)

    async def withdraw(self) -> bool:
        return await self.runner.withdraw(self.seq_id)

    def close(self) -> None:
        self.runner.close_sequence(self.seq_id)


@dataclass(frozen=True)
class Target:
    """A resolved model: the engine key it runs under and where its folder comes from."""

    model: str
    key: str
    #: The published version's full manifest id; empty for a local folder.
    manifest_id: str
    folder: Callable[[], Awaitable[Path]]

    @property
    def relayable(self) -> bool:
        """Only a published version is the same model on every node (placement rule 1)."""
        return bool(self.manifest_id)


class GenerationService:
    """Decoder models this node generates with: the local folders of ``generation.folders``
    by name, and (with ``published``) every decoder model published through the mesh, its
    newest version or a pinned one, pulled on first use. Each is loaded on first use; a
    published version runs as ``name@<manifest id>``, so a newer version gets its own
    engine while streams on the older one finish. Engines are unloaded by the rules of
    ``residency``: superseded, idle too long, or over ``generation.loaded_bytes``."""

    def __init__(
        self,
        folders: Mapping[str, Path],
        config: GenerationConfig,
        device: str = "cpu",
        published: PublishedDecoders | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._paths = dict(folders)
        self._config = config
        self._device = device
        self._published = published
        self._clock = clock
        self._runners: dict[str, _ModelRunner] = {}
        #: Loads under way, by key: a second caller for the same key waits on the same one;
        #: callers for other models are not held up by a pull.
        self._loads: dict[str, asyncio.Task[_ModelRunner]] = {}
        #: Published name -> the key of its newest version asked for, and since when (rule 1
        #: of residency: an older one not used since then is superseded).
        self._newest: dict[str, tuple[str, float]] = {}
        self._sweep_timer: asyncio.Handle | None = None

    @property
    def config(self) -> GenerationConfig:
        return self._config

    def names(self) -> list[str]:
        return sorted(self._paths)

    def loaded(self) -> list[str]:
        """Keys of the engines loaded now."""
        return sorted(self._runners)

    def resolve(self, model: str, version: str = "") -> Target:
        """The version ``model`` (and ``version``) names here; NotFound or InvalidArgument
        naming the problem. Nothing is pulled or loaded."""
        if model in self._paths:
            if version:
                raise InvalidArgument(
                    f"model {model!r} is served from a local folder (generation.folders); "
                    "it has no versions to pin (leave model_version empty)"
                )
            path = self._paths[model]

            async def local() -> Path:
                return path

            return Target(model, model, "", local)
        if self._published is None:
            known = ", ".join(self.names()) or "none"
            raise NotFound(f"no decoder model {quoted(model)} on this node (serving: {known})")
        published = self._published
        try:
            entry = published.entry(model, version)
        except NotFound as e:
            folders = ", ".join(self.names()) or "none"
            raise NotFound(
                f"{e}; local decoder folders here: {folders}. Push a causal LM folder with "
                "p2pagentctl models push DIR --name NAME, or serve one with "
                "generation.folders (NAME=DIR)"
            ) from None

        async def folder() -> Path:
            return (await published.folder(entry)).folder

        key = f"{model}@{entry.manifest_id}"
        if not version and self._newest.get(model, ("", 0.0))[0] != key:
            self._newest[model] = (key, self._clock())
        return Target(model, key, entry.manifest_id, folder)

    def runner_if_loaded(self, target: Target) -> _ModelRunner | None:
        return self._runners.get(target.key)

    async def runner(self, model: str, version: str = "") -> _ModelRunner:
        return await self.load(self.resolve(model, version))

    async def load(self, target: Target) -> _ModelRunner:
        """The target's engine, loaded (and its version pulled) on first use. A load holds
        no lock other models wait on."""
        runner = self._runners.get(target.key)
        if runner is not None:
            return runner
        task = self._loads.get(target.key)
        if task is None:
            task = asyncio.create_task(self._load(target), name=f"load {target.key}")
            self._loads[target.key] = task
            task.add_done_callback(lambda t: self._load_done(target.key, t))
        return await asyncio.shield(task)

    def _load_done(self, key: str, task: asyncio.Task[_ModelRunner]) -> None:
        self._loads.pop(key, None)
        if not task.cancelled():
            task.exception()  # retrieved: the callers that still wait get it raised

    async def _load(self, target: Target) -> _ModelRunner:
        path = await target.folder()
        loaded = await asyncio.to_thread(load_decoder_folder, path, self._device)
        runner = _ModelRunner(target.key, loaded, self._config, self._clock)
        runner.on_idle = self._arm_sweep
        self._runners[target.key] = runner
        log.info("generation: %s loaded from %s", target.key, path)
        return runner

    async def generate(
        self, model: str, prompt: Prompt, params: SamplingParams, version: str = ""
    ) -> AsyncIterator[Event]:
        """The sequence's events, ending with its FinishEvent. Raises before the first
        event for anything refused (nothing is queued then). Runs on this node only (see
        ``placed.PlacedGeneration`` for the entry that places it in the mesh)."""
        return await self.generate_on(self.resolve(model, version), prompt, params)

    async def generate_on(
        self,
        target: Target,
        prompt: Prompt | list[int],
        params: SamplingParams,
        *,
        require_room: bool = False,
    ) -> AsyncGenerator[Event, None]:
        """``generate`` for a resolved target; ``prompt`` may be already tokenized. With
        ``require_room``, ResourceExhausted instead of waiting in the queue."""
        runner = await self.load(target)
        runner.arriving += 1  # not unloaded between its choice and its submit
        try:
            ids = prompt if isinstance(prompt, list) else prompt.tokens(runner.engine.folder)
            events = runner.generate(ids, params, require_room=require_room)
            first = await anext(events)  # submit happens here: refusals surface now
        finally:
            runner.arriving -= 1
            runner.last_used = runner.chosen_at = self._clock()
            self._sweep()  # a new engine may put others over the budget or supersede one
        return _chain(first, events)

    async def queue_on(
        self, target: Target, prompt: Prompt | list[int], params: SamplingParams
    ) -> QueuedSequence:
        """Queues a sequence for ``target`` and returns at once (refusals raise before
        anything is queued): the caller reads its events, or withdraws it while it waits
        (``placed`` moves it to a peer then)."""
        runner = await self.load(target)
        runner.arriving += 1  # not unloaded between its choice and its submit
        try:
            ids = prompt if isinstance(prompt, list) else prompt.tokens(runner.engine.folder)
            seq_id = await runner.submit(ids, params)
        finally:
            runner.arriving -= 1
            runner.last_used = runner.chosen_at = self._clock()
            self._sweep()
        return QueuedSequence(runner, seq_id)

    # ---- unloading (rules in residency.py) ------------------------------------------------

    def _residents(self) -> list[Resident]:
        return [
            Resident(
                key,
                r.weight_bytes,
                r.busy,
                r.last_used,
                is_superseded(key, r.chosen_at, self._newest),
            )
            for key, r in self._runners.items()
        ]

    def _sweep(self) -> None:
        self._sweep_timer = None
        residents = self._residents()
        for key in to_unload(
            residents,
            self._clock(),
            idle_s=self._config.unload_idle_s,
            budget_bytes=self._config.loaded_bytes,
        ):
            runner = self._runners.pop(key)
            log.info("generation: %s unloaded (idle, superseded or over budget)", key)
            asyncio.get_running_loop().create_task(runner.close(), name=f"unload {key}")
        self._arm_sweep()

    def _arm_sweep(self) -> None:
        """Schedules the next sweep: at once when a runner just went idle (it may be a
        superseded one), else at the next idle deadline; no timer while nothing is idle."""
        loop = asyncio.get_running_loop()
        if self._sweep_timer is not None:
            self._sweep_timer.cancel()
        residents = self._residents()
        if any(r.superseded and not r.busy for r in residents):
            self._sweep_timer = loop.call_soon(self._sweep)
            return
        deadline = next_deadline(residents, idle_s=self._config.unload_idle_s)
        if deadline is not None:
            delay = max(0.0, deadline - self._clock())
            self._sweep_timer = loop.call_later(delay, self._sweep)

    async def close(self) -> None:
        if self._sweep_timer is not None:
            self._sweep_timer.cancel()
        for task in list(self._loads.values()):
            task.cancel()
        runners, self._runners = self._runners, {}
        for runner in runners.values():
            await runner.close()


async def _chain(first: Event, rest: AsyncGenerator[Event, None]) -> AsyncGenerator[Event, None]:
    try:
        yield first
        if isinstance(first, FinishEvent):
            return
        async for event in rest:
            yield event
    finally:
        await rest.aclose()
