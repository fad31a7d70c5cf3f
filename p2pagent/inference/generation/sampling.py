"""Sampling parameters, their checks, and the per-sequence sampler.

Temperature 0 is greedy (argmax). Otherwise logits are divided by the temperature, cut to
the ``top_k`` most likely tokens and then to the smallest set whose probability reaches
``top_p``, and one token is drawn with the sequence's own seeded ``torch.Generator``: the
same seed gives the same tokens whatever else runs in the batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from p2pagent.errors import InvalidArgument

MAX_STOP_STRINGS, MAX_STOP_CHARS = 16, 256


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 64
    #: 0 = greedy.
    temperature: float = 0.0
    #: Nucleus mass in (0, 1]; 1 keeps every token.
    top_p: float = 1.0
    #: Most likely tokens kept; 0 keeps every token.
    top_k: int = 0
    #: Seed of this sequence's sampler; None lets the engine draw one.
    seed: int | None = None
    #: Generation ends before the first of these appears in the text (not included).
    stop: tuple[str, ...] = ()

    def validate(self, prompt_tokens: int, context: int) -> SamplingParams:
        """Raises InvalidArgument naming the first bad value."""
        if prompt_tokens < 1:
            raise InvalidArgument("the prompt is empty: send at least one token")
        if prompt_tokens >= context:
            raise InvalidArgument(
                f"the prompt is {prompt_tokens} tokens; the model's context is {context}: "
                "shorten the prompt"
            )
        if self.max_new_tokens < 1:
            raise InvalidArgument(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if prompt_tokens + self.max_new_tokens > context:
            raise InvalidArgument(
                f"max_new_tokens {self.max_new_tokens} plus the {prompt_tokens}-token prompt "
                f"is beyond the model's context of {context}: ask for at most "
                f"{context - prompt_tokens} new tokens"
            )
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise InvalidArgument(f"temperature must be >= 0, got {self.temperature}")
        if not (math.isfinite(self.top_p) and 0 < self.top_p <= 1):
            raise InvalidArgument(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise InvalidArgument(f"top_k must be >= 0 (0 keeps every token), got {self.top_k}")
        if len(self.stop) > MAX_STOP_STRINGS:
            raise InvalidArgument(f"at most {MAX_STOP_STRINGS} stop strings, got {len(self.stop)}")
        for s in self.stop:
            if not s or len(s) > MAX_STOP_CHARS:
                raise InvalidArgument(f"a stop string must have 1 to {MAX_STOP_CHARS} characters")
        return self


class Sampler:
    """Picks the next token of one sequence from its logits row."""

    def __init__(self, params: SamplingParams, seed: int, device: torch.device) -> None:
        self.params = params
        self._generator: torch.Generator | None = None
        if params.temperature > 0:
            self._generator = torch.Generator(device=device)
            self._generator.manual_seed(seed)

    @property
    def greedy(self) -> bool:
        return self._generator is None

    def pick(self, logits: torch.Tensor) -> int:
        """``logits``: shape (vocab,), float."""
        if self._generator is None:
            return int(torch.argmax(logits).item())
        p = self.params
        scores = logits.float() / p.temperature
        if 0 < p.top_k < scores.numel():
            kth = torch.topk(scores, p.top_k).values[-1]
            scores = scores.masked_fill(scores < kth, -math.inf)
        if p.top_p < 1:
            ordered, order = torch.sort(scores, descending=True)
            cumulative = torch.softmax(ordered, dim=-1).cumsum(dim=-1)
            # Drop a token when the ones before it already reach top_p (the first stays).
            drop = (cumulative - torch.softmax(ordered, dim=-1)) >= p.top_p
            scores = scores.scatter(0, order[drop], -math.inf)
        probs = torch.softmax(scores, dim=-1)
        return int(torch.multinomial(probs, 1, generator=self._generator).item())
