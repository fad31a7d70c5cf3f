"""Settings of text generation (``[generation]``): KV cache budget, batch and queue bounds."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from p2pagent.errors import ConfigError, InvalidArgument
from p2pagent.identity.spiffe import check_name


@dataclass
class GenerationConfig:
    """Decoder folders served and the knobs of each one's continuous-batching scheduler."""

    #: Hugging Face decoder folders this node generates with, as NAME=DIR (GPT-2, Llama and
    #: other causal LMs transformers knows; safetensors only, no custom code). Each is
    #: checked at start and loaded on its first request.
    folders: list[str] = field(default_factory=list)

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
        self.folder_paths()
        return self

    def folder_paths(self) -> dict[str, Path]:
        """``folders`` as name -> directory; ConfigError naming a malformed entry."""
        out: dict[str, Path] = {}
        for entry in self.folders:
            name, sep, path = entry.partition("=")
            if not sep or not path:
                raise ConfigError(f"generation.folders entry {entry!r} must look like NAME=DIR")
            try:
                check_name(name, "model name")
            except InvalidArgument as e:
                raise ConfigError(f"generation.folders entry {entry!r}: {e}") from None
            if name in out:
                raise ConfigError(f"generation.folders names {name!r} twice")
            out[name] = Path(path)
        return out
