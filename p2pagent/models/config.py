"""Settings of the model-sharing capability: chunking, store, transfer, replication.

One dataclass, nested in the node Config as ``[models]``. Every knob is documented where it is
declared; the pure cores (transfer planner, token bucket, replication policy) read only the
fields they need.
"""

from __future__ import annotations

from dataclasses import dataclass

from p2pagent.errors import ConfigError

#: Smallest and largest chunk accepted, bytes. The floor keeps per-chunk overhead (a hash in the
#: manifest, a file, a stream message) small next to the data; the ceiling keeps one chunk well
#: inside the default 64 MiB gRPC message limit and bounds the memory one in-flight chunk pins.
MIN_CHUNK_SIZE = 4 * 1024
MAX_CHUNK_SIZE = 16 * 1024 * 1024
DEFAULT_CHUNK_SIZE = 1024 * 1024


@dataclass
class ModelsConfig:
    """Knobs of the chunk store, the pull planner, upload rate and replication."""

    # ---- chunking and store ----------------------------------------------------------------
    #: Chunk size for uploads that do not choose one, bytes.
    chunk_size: int = DEFAULT_CHUNK_SIZE
    #: Re-hash a chunk read from disk before serving it. Costs about 1 ms per MiB and catches
    #: bit rot before a peer does (which would blacklist us for its whole pull).
    verify_on_read: bool = True
    #: ...except for a chunk this process wrote or hashed less than this many seconds ago in
    #: a version file unchanged since (same inode, size, mtime): a publisher serving its fresh
    #: upload, a swarm serving each chunk several times. 0 = hash on every read.
    reverify_after_s: float = 600.0
    #: fsync files and directories on write. Off only for throwaway test stores: without it a
    #: power cut can leave a renamed chunk with missing data.
    fsync: bool = True
    #: Write pulled chunks and uploads past the page cache (O_DIRECT, see ``unbuffered``)
    #: where the file system allows it and the chunk size is a multiple of the page size:
    #: copying them into new page-cache pages was the largest CPU cost of a pull, and as much
    #: as one of an upload's two hashes. Off: everything is written buffered.
    direct_writes: bool = True

    #: Keep MiB-sized chunk buffers on the heap instead of a fresh mmap each (glibc
    #: ``mallopt``, process-wide, see ``alloc``), fitted to the largest chunk size the node
    #: publishes, pulls or holds (and so serves): about a third less CPU per served byte.
    tune_malloc: bool = True

    # ---- pulling (transfer planner) ----------------------------------------------------------
    #: Chunks outstanding per holder. Enough to keep a link busy across one round trip
    #: (depth * chunk_size >= bandwidth * RTT), small enough that one slow holder cannot
    #: hoard the work: two calls of ``batch_chunks``.
    pipeline_depth: int = 32
    #: Chunks per FetchChunks call: fewer calls than one per chunk, while a lost call only
    #: re-queues a few. Each call costs both sides a fixed amount (about a millisecond of
    #: CPU on the holder): at 4 chunks a call that was 0.25 CPU s per GiB served.
    batch_chunks: int = 16
    #: Chunks outstanding across all holders of one pull; bounds the memory a pull pins.
    max_inflight_chunks: int = 64
    #: A pull with nothing in flight waits this long for fellow pullers to fetch their share
    #: of a complete holder's chunks (and advertise them) before asking that holder itself:
    #: shorter duplicates the publisher's upload, longer lets a slow fellow delay the pull.
    fellow_wait_s: float = 2.0
    #: Chunks a pull writes before fsyncing them together (in the background, while the
    #: transfer goes on); the version is sealed (all synced) before it is advertised.
    sync_batch_chunks: int = 16
    #: A holder with outstanding chunks that delivers nothing for this long counts as failed.
    #: Progress-based, not a deadline on the whole file: multi-GB pulls never time out while
    #: data flows.
    stall_timeout_s: float = 30.0
    #: Back-off before retrying a failed holder: base * 2**(failures-1), capped.
    holder_backoff_s: float = 1.0
    holder_backoff_max_s: float = 30.0
    #: Consecutive failures after which a holder is given up for the rest of a pull.
    max_holder_failures: int = 5
    #: Endgame: once every missing chunk is in flight, also ask idle holders for them, up to
    #: this many copies in flight per chunk, so one slow holder does not set the finish time.
    #: 1 disables it.
    endgame_copies: int = 2

    # ---- serving -------------------------------------------------------------------------------
    #: Upload bandwidth cap for serving chunks to peers, bytes per second; 0 = unlimited.
    upload_rate_bytes_per_s: float = 0.0
    #: Burst allowed above the cap, bytes (at least one chunk, or a chunk could never go out
    #: without debt).
    upload_burst_bytes: int = 8 * 1024 * 1024

    # ---- publish check -----------------------------------------------------------------------
    #: Wall-clock seconds an upload's check (load the file and run its example inputs, in a
    #: child process) may take before the upload is refused; also the child's CPU-time limit.
    check_timeout_s: float = 120.0
    #: Fence the checking child like the model worker before it loads a TorchScript or
    #: torch.export upload (Landlock, no capabilities, another uid where one can run Python),
    #: so the upload's code cannot read the node's key while it is checked.
    confine_check: bool = True
    #: Address space the checking child may use besides 3x the file size, bytes (torch's
    #: CPU build alone maps about 0.7 GiB; CUDA builds map several GiB more).
    check_memory_bytes: int = 8 * 1024**3
    #: Upload checks one node runs at once; later uploads wait their turn (so many pushes at
    #: once cost at most this many children's CPU and memory).
    check_concurrency: int = 2
    # ---- replication ---------------------------------------------------------------------------
    #: Newest versions of each model kept replicated; older ones may be dropped once the
    #: newest is fully replicated.
    keep_versions: int = 1

    def validate(self) -> ModelsConfig:
        if not MIN_CHUNK_SIZE <= self.chunk_size <= MAX_CHUNK_SIZE:
            raise ConfigError(
                f"models.chunk_size must be {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE} bytes, "
                f"got {self.chunk_size}"
            )
        positive: dict[str, float] = {
            "pipeline_depth": self.pipeline_depth,
            "batch_chunks": self.batch_chunks,
            "max_inflight_chunks": self.max_inflight_chunks,
            "sync_batch_chunks": self.sync_batch_chunks,
            "fellow_wait_s": self.fellow_wait_s,
            "stall_timeout_s": self.stall_timeout_s,
            "holder_backoff_s": self.holder_backoff_s,
            "max_holder_failures": self.max_holder_failures,
            "endgame_copies": self.endgame_copies,
            "upload_burst_bytes": self.upload_burst_bytes,
            "keep_versions": self.keep_versions,
            "check_timeout_s": self.check_timeout_s,
            "check_memory_bytes": self.check_memory_bytes,
            "check_concurrency": self.check_concurrency,
        }
        for name, value in positive.items():
            if value <= 0:
                raise ConfigError(f"models.{name} must be > 0, got {value}")
        if self.reverify_after_s < 0:
            raise ConfigError("models.reverify_after_s must be >= 0 (0 = hash every read)")
        if self.upload_rate_bytes_per_s < 0:
            raise ConfigError("models.upload_rate_bytes_per_s must be >= 0 (0 = unlimited)")
        if self.holder_backoff_max_s < self.holder_backoff_s:
            raise ConfigError("models.holder_backoff_max_s must be >= models.holder_backoff_s")
        return self
