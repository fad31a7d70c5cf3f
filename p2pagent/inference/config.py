"""Settings of the inference capability: batching, queue bounds, threads and model cache.

One dataclass, nested in the node Config as ``[inference]``. Every knob is documented where
it is declared. ``0`` in the "auto" fields is resolved by the engine once the device is known.
"""

from __future__ import annotations

from dataclasses import dataclass

from p2pagent.errors import ConfigError

#: Smallest ``worker_memory_bytes`` accepted: torch and transformers alone take ~450 MiB.
MIN_WORKER_MEMORY = 768 << 20
#: What ``worker_memory_bytes`` auto adds to the cache budget on a CPU device.
WORKER_MEMORY_HEADROOM = 2 << 30


@dataclass
class InferenceConfig:
    """Knobs of the batching policy, the engine and the model cache."""

    # ---- batching ------------------------------------------------------------------------
    #: Most rows (batch-dimension entries) in one forward pass. A single request with more
    #: rows than this still runs, alone.
    max_batch_size: int = 32
    #: Longest a partial batch is held for the callers of the batch that just finished to
    #: send again (Triton's ``max_queue_delay``). Held only where they come back quickly
    #: compared with the model's fixed cost per batch (see inference/refill.py); otherwise an
    #: idle device never waits, so a lone request pays no added latency.
    max_queue_delay_s: float = 0.010
    #: Batches handed to the device at once: 1 = one running; 2 = one running and one being
    #: staged (concatenated, pinned and copied) behind it. 0 = auto: 2 on CUDA, where the
    #: host-to-device copy can overlap compute, else 1.
    pipeline_depth: int = 0
    #: Batches handed to the model worker (isolated models) at once: 2 = a next batch at
    #: least half full waits in the worker's socket while one runs, so the worker goes on to
    #: it without sleeping; 1 = one at a time. 0 = auto: 2 (on a CPU too: with batches that
    #: settle, the second slot costs no throughput there and a lone caller's p50 is 1-7 %
    #: lower: bench/inference_isolation.py, RESULTS.md "Session 18").
    worker_pipeline_depth: int = 0
    #: Requests queued (not yet running) across all models; more is ResourceExhausted.
    max_queued: int = 1024
    #: EWMA weight of the newest service-time-per-row sample.
    ewma_alpha: float = 0.2
    #: Ragged batching (token ids of Hugging Face folders): most token slots (rows x padded
    #: length) in one forward pass, since a transformer's cost follows tokens. A single
    #: request with more still runs, alone.
    max_batch_tokens: int = 8192
    #: Ragged batching: the most of a batch's token slots that may be padding. A request
    #: that would pass it waits for a later batch (never the oldest one: it always goes),
    #: so requests of similar lengths share batches. 1 = no bound. On a CPU a padded slot
    #: costs what a real token costs (bench/encoders.py: 0.3 was slower than 0.1).
    max_padding_ratio: float = 0.1
    #: Ragged batching on: token ids of any length share a batch. Off: only requests of
    #: exactly the same length do (the behaviour before ragged batching; for comparisons).
    ragged_batching: bool = True
    #: Ragged batching: sequences are padded to the batch's longest, rounded up to a
    #: multiple of this (fewer distinct shapes for compiled and GPU kernels, more padding).
    #: 0 or 1 = the longest itself.
    length_bucket: int = 0

    # ---- tensors -------------------------------------------------------------------------
    #: Largest element count of one tensor accepted from the wire (before allocating).
    max_tensor_elements: int = 1 << 26

    # ---- threads -------------------------------------------------------------------------
    #: torch intra-op threads for the whole process. 0 = auto: on CPU, all cores but one
    #: (the event loop needs one to keep feeding the device); on CUDA, 1 is plenty.
    intra_op_threads: int = 0

    # ---- model cache ---------------------------------------------------------------------
    #: Bytes of parameters and buffers kept resident; least recently used models are
    #: unloaded past it.
    cache_budget_bytes: int = 4 * 1024**3

    # ---- model isolation -----------------------------------------------------------------
    #: Load and run TorchScript and torch.export models (which carry code) in a separate
    #: worker process that cannot read the node's key, certificates or data folder
    #: (Landlock where the kernel has it, another uid where the daemon runs as root, no
    #: capabilities, no new privileges; tensors pass through shared memory). Hugging Face
    #: folders run there too, under ``worker_memory_bytes`` (their tokenizer stays in the
    #: daemon). safetensors weights of the in-repo architectures run in the daemon either
    #: way: their architecture is ours, not the file's. Off runs every model in the daemon
    #: (only for models you wrote yourself).
    isolate_code_models: bool = True
    #: uid the model worker switches to when the daemon runs as root. -1 = auto: 65534
    #: (nobody) where that uid can reach the Python installation, else uid 0 with every
    #: capability dropped (Landlock then keeps the key out of reach). The node logs which
    #: at start.
    worker_uid: int = -1
    #: Longest the model worker may take to load a model or run one batch; past it the
    #: worker is stopped, the batch fails with UNAVAILABLE and a new worker starts.
    worker_timeout_s: float = 300.0
    #: Memory the model worker may use, bytes: its data segment (heap and private memory,
    #: where tensors live; RLIMIT_DATA), not shared regions or mapped libraries. A model
    #: folder that would not fit is refused with RESOURCE_EXHAUSTED naming this knob, and a
    #: batch that runs out fails alone; the worker goes on serving its other models.
    #: 0 = auto: ``cache_budget_bytes`` plus 2 GiB (torch, transformers and a batch's
    #: activations beside the weights) on a CPU device, no limit on CUDA (the driver's own
    #: host allocations count against it). -1 = no limit.
    worker_memory_bytes: int = 0

    def validate(self) -> InferenceConfig:
        positive = {
            "max_batch_size": self.max_batch_size,
            "max_queued": self.max_queued,
            "max_tensor_elements": self.max_tensor_elements,
            "cache_budget_bytes": self.cache_budget_bytes,
            "max_batch_tokens": self.max_batch_tokens,
        }
        for name, value in positive.items():
            if value < 1:
                raise ConfigError(f"inference.{name} must be at least 1, got {value}")
        if self.max_queue_delay_s < 0:
            raise ConfigError(
                f"inference.max_queue_delay_s must be >= 0, got {self.max_queue_delay_s}"
            )
        if self.pipeline_depth < 0 or self.pipeline_depth > 4:
            raise ConfigError(
                f"inference.pipeline_depth must be 0 (auto) to 4, got {self.pipeline_depth}"
            )
        if self.worker_pipeline_depth not in (0, 1, 2):
            raise ConfigError(
                "inference.worker_pipeline_depth must be 0 (auto), 1 or 2 (the worker's input "
                f"slots), got {self.worker_pipeline_depth}"
            )
        if self.intra_op_threads < 0:
            raise ConfigError(
                f"inference.intra_op_threads must be >= 0 (0 = auto), got {self.intra_op_threads}"
            )
        if self.worker_uid < -1:
            raise ConfigError(
                f"inference.worker_uid must be a uid or -1 (auto), got {self.worker_uid}"
            )
        if self.worker_memory_bytes < -1:
            raise ConfigError(
                "inference.worker_memory_bytes must be bytes, 0 (auto) or -1 (no limit), got "
                f"{self.worker_memory_bytes}"
            )
        if 0 < self.worker_memory_bytes < MIN_WORKER_MEMORY:
            raise ConfigError(
                f"inference.worker_memory_bytes is {self.worker_memory_bytes}: the worker "
                f"needs at least {MIN_WORKER_MEMORY >> 20} MiB to import torch"
            )
        if self.worker_timeout_s <= 0:
            raise ConfigError(
                f"inference.worker_timeout_s must be > 0, got {self.worker_timeout_s}"
            )
        if not 0 < self.max_padding_ratio <= 1:
            raise ConfigError(
                f"inference.max_padding_ratio must be in (0, 1], got {self.max_padding_ratio}"
            )
        if self.length_bucket < 0:
            raise ConfigError(f"inference.length_bucket must be >= 0, got {self.length_bucket}")
        if not 0 < self.ewma_alpha <= 1:
            raise ConfigError(f"inference.ewma_alpha must be in (0, 1], got {self.ewma_alpha}")
        return self
