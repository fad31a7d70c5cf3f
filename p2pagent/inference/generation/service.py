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
from p2pagent.inference.generation.published import PublishedDecoders
from p2pagent.inference.generation.sampling import SamplingParams
from p2pagent.inference.generation.scheduler import FinishReason

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


class _ModelRunner:
    def __init__(self, name: str, folder: DecoderFolder, config: GenerationConfig) -> None:
        self.name = name
        self.engine = DecodeEngine(folder, config, random.Random())
        self.lock = asyncio.Lock()
        self.queues: dict[int, asyncio.Queue[Event]] = {}
        self.cancels: list[int] = []
        self.wake = asyncio.Event()
        self.executor = ThreadPoolExecutor(1, thread_name_prefix=f"generate-{name}")
        self.task = asyncio.create_task(self._loop(), name=f"generate {name}")

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

    async def generate(
        self, prompt: list[int], params: SamplingParams
    ) -> AsyncGenerator[Event, None]:
        async with self.lock:
            seq_id = self.engine.submit(prompt, params)
            queue: asyncio.Queue[Event] = asyncio.Queue()
            self.queues[seq_id] = queue
        self.wake.set()
        finished = False
        try:
            while True:
                event = await queue.get()
                yield event
                if isinstance(event, FinishEvent):
                    finished = True
                    return
        finally:
            self.queues.pop(seq_id, None)
            if not finished:
                self.cancels.append(seq_id)
                self.wake.set()

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        self.executor.shutdown(wait=True)


class GenerationService:
    """Decoder models this node generates with: the local folders of ``generation.folders``
    by name, and (with ``published``) every decoder model published through the mesh, its
    newest version or a pinned one, pulled on first use. Each is loaded on first use; a
    published version runs as ``name@<manifest id>``, so a newer version gets its own
    engine while streams on the older one finish."""

    def __init__(
        self,
        folders: Mapping[str, Path],
        config: GenerationConfig,
        device: str = "cpu",
        published: PublishedDecoders | None = None,
    ) -> None:
        self._paths = dict(folders)
        self._config = config
        self._device = device
        self._published = published
        self._runners: dict[str, _ModelRunner] = {}
        self._loading = asyncio.Lock()

    def names(self) -> list[str]:
        return sorted(self._paths)

    async def runner(self, model: str, version: str = "") -> _ModelRunner:
        if model in self._paths:
            if version:
                raise InvalidArgument(
                    f"model {model!r} is served from a local folder (generation.folders); "
                    "it has no versions to pin (leave model_version empty)"
                )
            path = self._paths[model]

            async def local() -> Path:
                return path

            return await self._load(model, local)
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

        return await self._load(f"{model}@{entry.manifest_id}", folder)

    async def _load(self, key: str, folder: Callable[[], Awaitable[Path]]) -> _ModelRunner:
        runner = self._runners.get(key)
        if runner is not None:
            return runner
        async with self._loading:
            if key not in self._runners:
                path = await folder()
                loaded = await asyncio.to_thread(load_decoder_folder, path, self._device)
                self._runners[key] = _ModelRunner(key, loaded, self._config)
                log.info("generation: %s loaded from %s", key, path)
        return self._runners[key]

    async def generate(
        self, model: str, prompt: Prompt, params: SamplingParams, version: str = ""
    ) -> AsyncIterator[Event]:
        """The sequence's events, ending with its FinishEvent. Raises before the first
        event for anything refused (nothing is queued then)."""
        runner = await self.runner(model, version)
        ids = prompt.tokens(runner.engine.folder)
        events = runner.generate(ids, params)
        first = await anext(events)  # submit happens here: refusals surface now
        return _chain(first, events)

    async def close(self) -> None:
        runners, self._runners = self._runners, {}
        for runner in runners.values():
            await runner.close()


async def _chain(first: Event, rest: AsyncGenerator[Event, None]) -> AsyncIterator[Event]:
    try:
        yield first
        if isinstance(first, FinishEvent):
            return
        async for event in rest:
            yield event
    finally:
        await rest.aclose()
