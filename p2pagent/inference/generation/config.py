"""Settings of text generation (``[generation]``): KV cache budget, batch and queue bounds."""

from __future__ import annotations

from dataclasses import dataclass

from p2pagent.errors import ConfigError


@dataclass
class GenerationConfig:
    """Knobs of the continuous-batching scheduler of each decoder model."""

    #: Bytes of key/value cache one decoder model may hold across its running sequences. A
    #: sequence is admitted only when its worst case (prompt plus ``max_new_tokens``) fits
    #: next to the running ones; otherwise it waits in the queue.
    kv_cache_bytes: int = 1024**3
    #: Most sequences decoding together in one step of one model.
    max_running: int = 64
    #: Prompt tokens prefilled per step, across sequences: a long prompt is prefilled in
    #: chunks of at most this many tokens, so running sequences wait at most one chunk's
    #: time for their next token.
    prefill_tokens_per_step: int = 256
    #: Sequences waiting for admission per model; more is RESOURCE_EXHAUSTED.
    max_queued: int = 256

    def validate(self) -> GenerationConfig:
        for name in ("kv_cache_bytes", "max_running", "prefill_tokens_per_step", "max_queued"):
            value = getattr(self, name)
            if value < 1:
                raise ConfigError(f"generation.{name} must be at least 1, got {value}")
        return self
