"""The continuous-batching scheduler of one decoder model (pure: no I/O, no clock).

Iteration-level scheduling as in Orca and vLLM: the engine asks for a ``StepPlan`` before
every forward step and reports back with ``complete``. Between any two steps sequences join
(admitted from the queue) and leave (finished or cancelled), so a short request never waits
for a long one to end.

Rules, in the order ``plan`` applies them:

1. Cancelled sequences leave first; their KV cache is released in that plan.
2. Every sequence that has its first token decodes one more token in this step.
3. Prefill is bounded per step (``prefill_tokens_per_step``): a sequence already part-way
   through its prompt continues first, then queued sequences are admitted in arrival order
   while the budget lasts. A prompt longer than the budget is prefilled in chunks over
   several steps, so the running sequences' next token waits at most one chunk.
4. Admission control by memory: a sequence's worst case is ``prompt + max_new_tokens``
   tokens. The running set's cache is left-padded to its longest member (the engine batches
   sequences of different lengths that way), so a set of ``n`` sequences costs
   ``n * longest_limit * kv_bytes_per_token``; a sequence is admitted only while that stays
   within ``kv_cache_bytes``. Admission is first-come first-served: when the head of the
   queue does not fit, nothing behind it jumps ahead (a big request is never starved).
5. ``submit`` refuses before anything is queued: a request that could never fit the budget
   (InvalidArgument, it would wait forever) and a full queue (ResourceExhausted).

Time enters as ``now`` only to report how long each sequence waited for admission.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection
from dataclasses import dataclass, field
from enum import Enum

from p2pagent.errors import InvalidArgument, ResourceExhausted


class Phase(Enum):
    WAITING = "waiting"  # queued, holds no cache
    PREFILLING = "prefilling"  # admitted, prompt partly through the model
    DECODING = "decoding"  # has its first token, one more per step


@dataclass
class _Sequence:
    seq_id: int
    prompt_tokens: int
    max_new_tokens: int
    submitted_at: float
    phase: Phase = Phase.WAITING
    prefilled: int = 0
    generated: int = 0

    @property
    def limit(self) -> int:
        """Most tokens this sequence's cache can ever hold."""
        return self.prompt_tokens + self.max_new_tokens


@dataclass(frozen=True)
class PrefillChunk:
    """Prompt positions ``[start, end)`` of one sequence to run in this step; ``last`` means
    the prompt is then complete and the engine samples the sequence's first token."""

    seq_id: int
    start: int
    end: int
    last: bool


@dataclass(frozen=True)
class Admitted:
    seq_id: int
    waited_s: float


@dataclass(frozen=True)
class StepPlan:
    """What the engine runs in one step."""

    #: Sequences whose cache the engine drops before the step (cancelled).
    released: tuple[int, ...] = ()
    #: Sequences that decode one token (in one batched forward).
    decode: tuple[int, ...] = ()
    #: Prompt chunks to prefill, in order.
    prefill: tuple[PrefillChunk, ...] = ()
    #: Sequences admitted from the queue by this plan.
    admitted: tuple[Admitted, ...] = ()

    @property
    def has_work(self) -> bool:
        return bool(self.decode or self.prefill)


class FinishReason(Enum):
    LENGTH = "length"  # max_new_tokens reached
    STOP = "stop"  # end-of-sequence token or a stop string (decided by the engine)
    CANCELLED = "cancelled"  # the caller went away
    ERROR = "error"  # the model raised


@dataclass(frozen=True)
class Finished:
    seq_id: int
    reason: FinishReason


@dataclass
class DecodeScheduler:
    """Admission, prefill budget and join/leave per step for one model's sequences."""

    kv_cache_bytes: int
    kv_bytes_per_token: int
    max_running: int = 64
    prefill_tokens_per_step: int = 256
    max_queued: int = 256
    _waiting: OrderedDict[int, _Sequence] = field(default_factory=OrderedDict, init=False)
    _running: dict[int, _Sequence] = field(default_factory=dict, init=False)
    _cancelled: list[int] = field(default_factory=list, init=False)

    # ---- inputs ---------------------------------------------------------------------------

    def submit(self, seq_id: int, prompt_tokens: int, max_new_tokens: int, now: float) -> None:
        """Queues a sequence, or refuses it before anything is queued."""
        if seq_id in self._waiting or seq_id in self._running:
            raise InvalidArgument(f"sequence {seq_id} is already scheduled")
        if prompt_tokens < 1 or max_new_tokens < 1:
            raise InvalidArgument(
                f"a sequence needs at least one prompt token and one new token, got "
                f"{prompt_tokens} and {max_new_tokens}"
            )
        need = (prompt_tokens + max_new_tokens) * self.kv_bytes_per_token
        if need > self.kv_cache_bytes:
            raise InvalidArgument(
                f"{prompt_tokens} prompt tokens plus max_new_tokens {max_new_tokens} need "
                f"{need} bytes of KV cache, more than generation.kv_cache_bytes "
                f"({self.kv_cache_bytes}) allows for one sequence: ask for fewer tokens"
            )
        if len(self._waiting) >= self.max_queued:
            raise ResourceExhausted(
                f"generation queue full ({self.max_queued} sequences waiting); retry later",
                retry_after_s=1.0,
            )
        self._waiting[seq_id] = _Sequence(seq_id, prompt_tokens, max_new_tokens, now)

    def cancel(self, seq_id: int) -> bool:
        """Drops a sequence: at once if it is queued, at the next plan if it is running.
        Returns whether it was known."""
        if self._waiting.pop(seq_id, None) is not None:
            return True
        if seq_id in self._running and seq_id not in self._cancelled:
            self._cancelled.append(seq_id)
            return True
        return False

    def plan(self, now: float) -> StepPlan:
        released = tuple(self._cancelled)
        for seq_id in released:
            self._running.pop(seq_id, None)
        self._cancelled.clear()
        decode = tuple(s.seq_id for s in self._running.values() if s.phase is Phase.DECODING)
        budget = self.prefill_tokens_per_step
        chunks: list[PrefillChunk] = []
        for seq in self._running.values():
            if seq.phase is Phase.PREFILLING and budget > 0:
                chunks.append(self._chunk(seq, budget))
                budget -= chunks[-1].end - chunks[-1].start
        admitted: list[Admitted] = []
        while self._waiting and budget > 0 and self._fits_next():
            _, seq = self._waiting.popitem(last=False)
            seq.phase = Phase.PREFILLING
            self._running[seq.seq_id] = seq
            admitted.append(Admitted(seq.seq_id, max(0.0, now - seq.submitted_at)))
            chunks.append(self._chunk(seq, budget))
            budget -= chunks[-1].end - chunks[-1].start
        return StepPlan(released, decode, tuple(chunks), tuple(admitted))

    def complete(self, plan: StepPlan, stopped: Collection[int] = ()) -> list[Finished]:
        """Records that ``plan`` ran: prompts advanced, one token more for each decoding
        sequence and each completed prompt. ``stopped`` are sequences the engine ended (end
        token or stop string). Returns every sequence that left, with why."""
        for chunk in plan.prefill:
            seq = self._running.get(chunk.seq_id)
            if seq is None:  # cancelled during the step
                continue
            seq.prefilled = chunk.end
            if chunk.last:
                seq.phase = Phase.DECODING
                seq.generated = 1
        for seq_id in plan.decode:
            if seq_id in self._running:
                self._running[seq_id].generated += 1
        finished: list[Finished] = []
        for seq in list(self._running.values()):
            if seq.seq_id in self._cancelled:
                continue
            if seq.seq_id in stopped:
                finished.append(Finished(seq.seq_id, FinishReason.STOP))
            elif seq.phase is Phase.DECODING and seq.generated >= seq.max_new_tokens:
                finished.append(Finished(seq.seq_id, FinishReason.LENGTH))
        for done in finished:
            del self._running[done.seq_id]
        return finished

    def fail(self, seq_ids: Collection[int]) -> list[Finished]:
        """The model raised on these sequences: they leave with ERROR; the rest go on."""
        out = []
        for seq_id in seq_ids:
            gone = self._running.pop(seq_id, None) or self._waiting.pop(seq_id, None)
            if gone is not None:
                out.append(Finished(seq_id, FinishReason.ERROR))
        return out

    # ---- views ----------------------------------------------------------------------------

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def reserved_bytes(self) -> int:
        """Worst-case cache bytes of the running set (see rule 4)."""
        return self._cost(list(self._running.values()))

    def room_for(self, prompt_tokens: int, max_new_tokens: int) -> bool:
        """Whether a sequence of this size submitted now would be admitted at the next plan
        (nothing queued ahead of it, a running slot and KV room free): what a node asks
        before it takes a generation a peer could run at once instead."""
        if self._waiting or len(self._running) >= self.max_running:
            return False
        head = _Sequence(-1, prompt_tokens, max_new_tokens, 0.0)
        return self._cost([*self._running.values(), head]) <= self.kv_cache_bytes

    def phase(self, seq_id: int) -> Phase | None:
        seq = self._running.get(seq_id) or self._waiting.get(seq_id)
        return None if seq is None else seq.phase

    def generated(self, seq_id: int) -> int:
        seq = self._running.get(seq_id)
        return 0 if seq is None else seq.generated

    # ---- rules ----------------------------------------------------------------------------

    def _chunk(self, seq: _Sequence, budget: int) -> PrefillChunk:
        end = min(seq.prompt_tokens, seq.prefilled + budget)
        return PrefillChunk(seq.seq_id, seq.prefilled, end, end == seq.prompt_tokens)

    def _cost(self, seqs: list[_Sequence]) -> int:
        if not seqs:
            return 0
        return len(seqs) * max(s.limit for s in seqs) * self.kv_bytes_per_token

    def _fits_next(self) -> bool:
        if len(self._running) >= self.max_running:
            return False
        head = next(iter(self._waiting.values()))
        return self._cost([*self._running.values(), head]) <= self.kv_cache_bytes
