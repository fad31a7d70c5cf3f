"""SQLite persistence of a replica (stdlib ``sqlite3``, WAL mode). Synchronous by design: the
asyncio driver calls it from a worker thread; a lock serialises callers.

What is stored, all written in one transaction per :meth:`StateStore.save`:

- ``keys(ns, key, state)``: each key's live dots, msgpack-encoded (``codec.encode_key_state``);
- ``meta``: node id, restart epoch, the replica's own dot counter, HLC, the whole causal
  context (with retired origins) and the last change sequence number;
- ``changes(seq, ns, key, deleted)``: the change log, trimmed to the latest ``keep_changes``
  rows, so Watch sequence numbers continue across restarts and the ring can be refilled.

Durability: ``save(batch, durable=True)`` commits with ``PRAGMA synchronous=FULL``, so the WAL
is fsynced before it returns and the write survives SIGKILL or power loss. ``durable=False``
commits with ``synchronous=NORMAL`` (no fsync; safe against process crashes, may lose the
latest batches on power loss), which is what a driver batching non-durable writes wants.

Epochs: the context is only valid with the dots it names, and non-durable batches may be lost.
So :meth:`load` starts a new restart epoch (a new dot origin, see ``replica.origin_name``)
unless the previous run ended with :meth:`mark_clean`; dots of the lost run can then never be
reissued with different content.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from p2pagent.errors import FailedPrecondition, Internal, RemoteProtocolError, Unavailable
from p2pagent.state.codec import decode_context, decode_key_state
from p2pagent.state.crdt import DotMap
from p2pagent.state.replica import PersistBatch

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS keys (
    ns TEXT NOT NULL, key TEXT NOT NULL, state BLOB NOT NULL, PRIMARY KEY (ns, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS changes (
    seq INTEGER PRIMARY KEY, ns TEXT NOT NULL, key TEXT NOT NULL, deleted INTEGER NOT NULL
);
"""


@dataclass
class StoredState:
    """What :meth:`StateStore.load` read back; pass it to ``Replica(**stored.replica_args())``."""

    node_id: str
    epoch: int
    state: DotMap
    counter: int
    hlc: int
    change_seq: int
    recent_changes: list[tuple[int, str, str]]

    def replica_args(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "epoch": self.epoch,
            "state": self.state,
            "counter": self.counter,
            "hlc": self.hlc,
            "change_seq": self.change_seq,
            "recent_changes": self.recent_changes,
        }


class StateStore:
    def __init__(self, path: str | Path, keep_changes: int = 100_000) -> None:
        self.path = Path(path)
        self.keep_changes = keep_changes
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(
                str(self.path), isolation_level=None, check_same_thread=False
            )
            mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise FailedPrecondition(f"cannot put {self.path} in WAL mode (got {mode})")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as e:
            raise FailedPrecondition(f"cannot open state database {self.path}: {e}") from e
        version = self._meta("schema_version")
        if version is None:
            self._put_meta({"schema_version": SCHEMA_VERSION})
        elif version != SCHEMA_VERSION:
            raise FailedPrecondition(
                f"state database {self.path} has schema {version}; this build reads "
                f"{SCHEMA_VERSION}. Use a matching p2pagentd or a fresh data directory"
            )

    # ---- reading --------------------------------------------------------------------------

    def load(self, node_id: str, recent: int = 10_000) -> StoredState:
        """Reads the replica back, starting a new epoch unless the last run ended cleanly."""
        with self._lock:
            owner = self._meta("node_id")
            if owner is not None and owner != node_id:
                raise FailedPrecondition(
                    f"state database {self.path} belongs to node {owner!r}, not {node_id!r}; "
                    "point --data at this node's own directory"
                )
            state = DotMap()
            try:
                ctx = self._meta("context")
                if ctx is not None:
                    state.context = decode_context(ctx)
                for ns, key, blob in self._db.execute("SELECT ns, key, state FROM keys"):
                    ks = decode_key_state(blob)
                    for kind, dots in ks.groups():
                        for dot, payload in dots.items():
                            state.add_dot(ns, key, kind, dot, payload)
            except RemoteProtocolError as e:
                raise Internal(f"state database {self.path} is damaged: {e}") from e
            state.reshaped.clear()
            epoch = int(self._meta("epoch") or 0)
            counter = int(self._meta("counter") or 0)
            used = counter > 0 or state.key_count() > 0
            if used and self._meta("clean") != 1:
                # The last run may have issued dots it never persisted: take a fresh origin.
                epoch, counter = epoch + 1, 0
            self._put_meta({"node_id": node_id, "epoch": epoch, "counter": counter, "clean": 0})
            rows = self._db.execute(
                "SELECT seq, ns, key FROM changes ORDER BY seq DESC LIMIT ?", (recent,)
            ).fetchall()
            return StoredState(
                node_id,
                epoch,
                state,
                counter,
                int(self._meta("hlc") or 0),
                int(self._meta("change_seq") or 0),
                [(int(s), str(n), str(k)) for s, n, k in reversed(rows)],
            )

    def _meta(self, name: str) -> Any:
        row = self._db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return None if row is None else row[0]

    def _put_meta(self, values: dict[str, Any]) -> None:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany(
                "INSERT INTO meta (name, value) VALUES (?, ?) "
                "ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                values.items(),
            )
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    # ---- writing --------------------------------------------------------------------------

    def save(self, batch: PersistBatch, durable: bool) -> None:
        """Writes one batch atomically; with ``durable`` it is on disk when this returns."""
        with self._lock:
            try:
                self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    self._write(batch)
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as e:
                raise Unavailable(f"cannot write state database {self.path}: {e}") from e

    def _write(self, batch: PersistBatch) -> None:
        upserts = [(ns, key, blob) for ns, key, blob in batch.keys if blob is not None]
        deletes = [(ns, key) for ns, key, blob in batch.keys if blob is None]
        self._db.executemany(
            "INSERT INTO keys (ns, key, state) VALUES (?, ?, ?) "
            "ON CONFLICT(ns, key) DO UPDATE SET state = excluded.state",
            upserts,
        )
        self._db.executemany("DELETE FROM keys WHERE ns = ? AND key = ?", deletes)
        meta: dict[str, Any] = {
            "context": batch.context,
            "counter": batch.origin_counter,
            "hlc": batch.hlc,
        }
        if batch.changes:
            meta["change_seq"] = batch.changes[-1][0]
            self._db.executemany(
                "INSERT OR REPLACE INTO changes (seq, ns, key, deleted) VALUES (?, ?, ?, ?)",
                batch.changes,
            )
            self._db.execute(
                "DELETE FROM changes WHERE seq <= ?", (batch.changes[-1][0] - self.keep_changes,)
            )
        self._db.executemany(
            "INSERT INTO meta (name, value) VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = excluded.value",
            meta.items(),
        )

    def mark_clean(self) -> None:
        """Records a clean stop (call after saving the final batch): the next load keeps the
        epoch instead of starting a new one."""
        with self._lock:
            self._db.execute("PRAGMA synchronous=FULL")
            self._put_meta({"clean": 1})

    def key_rows(self) -> Iterable[tuple[str, str, bytes]]:
        """Every stored key (for checks and tools)."""
        with self._lock:
            return list(self._db.execute("SELECT ns, key, state FROM keys ORDER BY ns, key"))

    def close(self) -> None:
        with self._lock:
            self._db.close()
