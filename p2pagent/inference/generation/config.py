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

    #: Take generations that peers place here when they have no room (and say so with the
    #: member tag ``generation``: ``off`` when false). Off: this node runs only the
    #: generations its own clients send.
    accept_relayed: bool = True
    #: Peers a node asks for their load when its own engine has no room for a sequence
    #: (power of two choices at 2); 0: never place a sequence on a peer.
    placement_probes: int = 2
    #: Seconds a node waits for a peer's answer about its load; a peer slower than this is
    #: left out of the choice.
    probe_timeout_s: float = 2.0
    #: Seconds a sequence of a published model waits in this node's queue before the node
    #: asks peers again whether one has room to start it now (placement happens on arrival;
    #: a peer that became idle since takes it then). Never after the sequence was admitted,
    #: so never after its first token. 0: a waiting sequence stays here.
    move_waiting_after_s: float = 1.0
    #: Longest pause between two such attempts of one model while no peer has room (the
    #: pause starts at ``move_waiting_after_s`` and doubles after each attempt that moved
    #: nothing).
    move_max_gap_s: float = 8.0
    #: Seconds an engine may stay loaded without a sequence before it is unloaded (its
    #: weights freed; the next request loads it again); 0: never for idleness. An engine of
    #: an older version is unloaded as soon as a newer one is loaded and its last sequence
    #: ends.
    unload_idle_s: float = 600.0
    #: Bytes of model weights the loaded engines may hold together; beyond it the least
    #: recently used idle engines are unloaded. 0: no limit.
    loaded_bytes: int = 0

    def validate(self) -> GenerationConfig:
        for name in ("kv_cache_bytes", "max_running", "prefill_tokens_per_step", "max_queued"):
            value = getattr(self, name)
            if value < 1:
                raise ConfigError(f"generation.{name} must be at least 1, got {value}")
        for name in ("placement_probes", "unload_idle_s", "loaded_bytes", "move_waiting_after_s"):
            value = getattr(self, name)
            if value < 0:
                raise ConfigError(f"generation.{name} must be 0 or more, got {value}")
        if self.probe_timeout_s <= 0:
            raise ConfigError(
                f"generation.probe_timeout_s must be more than 0, got {self.probe_timeout_s}"
            )
        if self.move_max_gap_s < self.move_waiting_after_s:
            raise ConfigError(
                f"generation.move_max_gap_s ({self.move_max_gap_s}) must be at least "
                f"generation.move_waiting_after_s ({self.move_waiting_after_s})"
            )
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
