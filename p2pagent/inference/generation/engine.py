"""The decode engine of one decoder model: the scheduler's plans run on a transformers
causal LM, one step at a time, over many sequences.

Synchronous and single-threaded on purpose: the caller (the asyncio driver, the benchmark,
the tests) decides where ``step`` runs. ``submit`` checks a request completely and refuses it
before anything is queued; ``step`` runs one plan (drop cancelled sequences, one batched
decode forward for the running sequences, then the planned prefill chunks, each sequence on
its own cache) and returns what happened as events. A model that raises fails the sequences
of that forward only, with the message; the engine goes on with the rest.
"""

from __future__ import annotations

import inspect
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache

from p2pagent.errors import InvalidArgument, ResourceExhausted
from p2pagent.inference.generation.batch_cache import BatchCache
from p2pagent.inference.generation.config import GenerationConfig
from p2pagent.inference.generation.folder import DecoderFolder
from p2pagent.inference.generation.sampling import Sampler, SamplingParams
from p2pagent.inference.generation.scheduler import (
    DecodeScheduler,
    FinishReason,
    PrefillChunk,
    StepPlan,
)
from p2pagent.inference.generation.text import TextStream


@dataclass(frozen=True)
class TokenEvent:
    seq_id: int
    token_id: int
    #: Text this token completes (may be empty: part of a character, a special token, or
    #: held back while it could be the start of a stop string).
    text: str


@dataclass(frozen=True)
class FinishEvent:
    seq_id: int
    reason: FinishReason
    prompt_tokens: int
    generated_tokens: int
    #: Text held back until the end (empty after a stop string).
    text: str = ""
    #: What the model raised, when ``reason`` is ERROR.
    error: str = ""
    #: The node that ran the sequence (set by the placement layer; empty inside the engine).
    node: str = ""


Event = TokenEvent | FinishEvent


@dataclass
class _Live:
    prompt: list[int]
    sampler: Sampler
    text: TextStream
    generated: int = 0
    cache: Any = None  # the prefill cache until the sequence joins the batch
    stopped: bool = False


@dataclass
class DecodeEngine:
    folder: DecoderFolder
    config: GenerationConfig = field(default_factory=GenerationConfig)
    rng: random.Random = field(default_factory=random.Random)
    clock: Callable[[], float] = field(default=lambda: 0.0)

    def __post_init__(self) -> None:
        self.scheduler = DecodeScheduler(
            kv_cache_bytes=self.config.kv_cache_bytes,
            kv_bytes_per_token=budgeted_bytes_per_token(self.folder),
            max_running=self.config.max_running,
            prefill_tokens_per_step=self.config.prefill_tokens_per_step,
            max_queued=self.config.max_queued,
        )
        self._live: dict[int, _Live] = {}
        self._batch = BatchCache()
        self._next_id = 0
        self._device = next(self.folder.model.parameters()).device
        self._last_logits_only = last_logits_only(self.folder.model)

    # ---- inputs ---------------------------------------------------------------------------

    def submit(
        self, prompt: list[int], params: SamplingParams, *, require_room: bool = False
    ) -> int:
        """Queues a sequence; returns its id. Raises InvalidArgument or ResourceExhausted
        before anything is queued; with ``require_room``, ResourceExhausted also when the
        sequence would wait (a peer placed it here and can try another node instead)."""
        params.validate(len(prompt), self.folder.context)
        vocab = int(self.folder.model.config.get_text_config(decoder=True).vocab_size)
        bad = next((t for t in prompt if not 0 <= t < vocab), None)
        if bad is not None:
            raise InvalidArgument(f"token id {bad} is outside the vocabulary (0-{vocab - 1})")
        if require_room and not self.scheduler.room_for(len(prompt), params.max_new_tokens):
            raise ResourceExhausted(
                f"no room to start this sequence now ({self.scheduler.running} running, "
                f"{self.scheduler.waiting} waiting); the caller tries another node"
            )
        seq_id = self._next_id
        self.scheduler.submit(seq_id, len(prompt), params.max_new_tokens, self.clock())
        self._next_id += 1
        seed = params.seed if params.seed is not None else self.rng.getrandbits(63)
        self._live[seq_id] = _Live(
            prompt=list(prompt),
            sampler=Sampler(params, seed, self._device),
            text=TextStream(self.folder.decode, params.stop),
        )
        return seq_id

    def cancel(self, seq_id: int) -> None:
        """The caller went away: a queued sequence leaves now, a running one at the next
        step (its cache is freed then)."""
        if self.scheduler.cancel(seq_id) and self.scheduler.phase(seq_id) is None:
            self._live.pop(seq_id, None)

    @property
    def idle(self) -> bool:
        return self.scheduler.running == 0 and self.scheduler.waiting == 0

    # ---- one step -------------------------------------------------------------------------

    @torch.inference_mode()
    def step(self) -> list[Event]:
        plan = self.scheduler.plan(self.clock())
        for seq_id in plan.released:
            self._live.pop(seq_id, None)
        self._batch.keep(set(plan.decode))
        events: list[Event] = []
        failed: dict[int, str] = {}
        if plan.decode:
            self._decode(events, failed)
        for chunk in plan.prefill:
            self._prefill(chunk, events, failed)
        stopped = {s for s, live in self._live.items() if live.stopped}
        finished = self.scheduler.fail(list(failed)) + self.scheduler.complete(
            _without(plan, failed), stopped
        )
        for done in finished:
            live = self._live.pop(done.seq_id)
            tail = live.text.flush() if done.reason is FinishReason.LENGTH else ""
            events.append(
                FinishEvent(
                    done.seq_id,
                    done.reason,
                    len(live.prompt),
                    live.generated,
                    tail,
                    failed.get(done.seq_id, ""),
                )
            )
        return events

    def _decode(self, events: list[Event], failed: dict[int, str]) -> None:
        batch = self._batch
        try:
            out = self.folder.model(**batch.step_inputs())
        except Exception as exc:  # the model's own failure: its sequences end, we go on
            message = _describe(exc)
            failed.update(dict.fromkeys(batch.seq_ids, message))
            batch.drop_all()
            return
        logits = out.logits[:, -1, :]
        # One argmax for the whole batch (greedy rows take it; sampling rows draw their own):
        # a per-row argmax costs more in dispatch than in arithmetic.
        argmax = logits.argmax(dim=-1).tolist()
        picked = [self._emit(s, logits[i], events, argmax[i]) for i, s in enumerate(batch.seq_ids)]
        batch.advance(out.cache, torch.tensor(picked, device=self._device))

    def _prefill(self, chunk: PrefillChunk, events: list[Event], failed: dict[int, str]) -> None:
        live = self._live[chunk.seq_id]
        if live.cache is None:
            live.cache = DynamicCache()
        ids = torch.tensor([live.prompt[chunk.start : chunk.end]], device=self._device)
        # No attention mask: one row without padding is plain causal attention, which the
        # model's fast path handles without building a mask (a few ms on a long prompt).
        try:
            out = self.folder.model(
                input_ids=ids,
                position_ids=torch.arange(chunk.start, chunk.end, device=self._device)[None],
                cache=live.cache,
                use_cache=True,
                **self._last_logits_only,
            )
        except Exception as exc:
            failed[chunk.seq_id] = _describe(exc)
            live.cache = None
            return
        live.cache = out.cache
        if chunk.last:
            token = self._emit(chunk.seq_id, out.logits[0, -1, :], events)
            if not live.stopped and live.sampler.params.max_new_tokens > 1:
                limit = len(live.prompt) + live.sampler.params.max_new_tokens
                self._batch.join(chunk.seq_id, live.cache, chunk.end, token, limit)
            live.cache = None

    def _emit(
        self, seq_id: int, logits: torch.Tensor, events: list[Event], argmax: int | None = None
    ) -> int:
        live = self._live[seq_id]
        greedy = argmax is not None and live.sampler.greedy
        token = argmax if greedy and argmax is not None else live.sampler.pick(logits)
        live.generated += 1
        events.append(TokenEvent(seq_id, token, live.text.push(token)))
        if token in self.folder.eos_token_ids or live.text.stopped:
            live.stopped = True
        return token


def last_logits_only(model: Any) -> dict[str, int]:
    """The forward's keyword that computes the language-model head on the last position
    only, where the model has it (transformers' own ``generate`` passes it too). A prefill
    needs one row of logits; the head over every prompt position costs ``vocab x width``
    per token (about a third of GPT-2 small's prefill, with its 50k vocabulary) and a
    ``prompt x vocab`` float tensor."""
    try:
        accepted = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # a forward without a readable signature: ask for all
        return {}
    return {"logits_to_keep": 1} if "logits_to_keep" in accepted else {}


def budgeted_bytes_per_token(folder: DecoderFolder) -> int:
    """What one cached token costs the KV budget: its keys and values, plus its share of the
    copy each step makes while it grows one layer's cache (transformers' DynamicCache
    concatenates: the old and new tensors of that layer are both alive for a moment). So
    ``generation.kv_cache_bytes`` bounds the cache's peak, not only its resting size."""
    per_layer = -(-folder.kv_bytes_per_token // max(1, folder.layers))
    return folder.kv_bytes_per_token + per_layer


def _without(plan: StepPlan, failed: dict[int, str]) -> StepPlan:
    if not failed:
        return plan
    return StepPlan(
        plan.released,
        tuple(s for s in plan.decode if s not in failed),
        tuple(c for c in plan.prefill if c.seq_id not in failed),
        plan.admitted,
    )


def _describe(exc: BaseException) -> str:
    return f"the model raised {type(exc).__name__}: {exc}"[:512]
