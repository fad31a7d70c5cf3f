"""The origin's durable task journal: ``<data_dir>/tasks.db`` (SQLite, WAL, synchronous=FULL).

A task is written here before ``Submit`` answers with its id, and its result before it is
shown to any ``Wait`` caller or acknowledged to the executor. After a crash the daemon reads
the journal back: unfinished tasks are queued again (with a new attempt, so whatever an older
attempt still produces counts as a duplicate, never a second result), finished ones are
served to ``Wait`` until ``done_retention_s`` has passed.

Writes come in batches (``commit``): the driver gathers every write made while the previous
batch was being synced and commits them in one transaction with one fsync (group commit), so
a burst of submissions costs one disk flush, not one each. Blocking; the driver runs it on
one dedicated thread.

Rows hold protobuf bytes (``TaskSpec`` for the task, ``CompleteRequest`` for its result),
never pickles.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from p2pagent._proto import peer_pb2

SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    task_id    TEXT PRIMARY KEY,
    model      TEXT NOT NULL,
    spec       BLOB NOT NULL,
    submitted  REAL NOT NULL,
    finished   REAL,
    result     BLOB
);
CREATE INDEX IF NOT EXISTS tasks_finished ON tasks (finished);
"""


@dataclass(frozen=True)
class Submitted:
    spec: peer_pb2.TaskSpec
    submitted: float


@dataclass(frozen=True)
class Finished:
    task_id: str
    result: peer_pb2.CompleteRequest
    finished: float


Write = Submitted | Finished


@dataclass(frozen=True)
class JournalRow:
    spec: peer_pb2.TaskSpec
    submitted: float
    finished: float | None
    result: peer_pb2.CompleteRequest | None


class Journal:
    """The task table of one origin."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        # One thread at a time (the driver's journal thread), but it is not the creating one.
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)

    def commit(self, writes: Sequence[Write]) -> None:
        """Applies ``writes`` in one transaction; durable (fsynced) when it returns."""
        if not writes:
            return
        db = self._db
        if len(writes) == 1:
            # One statement is its own transaction: one trip into SQLite (each trip gives up
            # the GIL and must win it back from the event loop thread).
            self._apply(writes[0])
            return
        db.execute("BEGIN IMMEDIATE")
        try:
            for w in writes:
                self._apply(w)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _apply(self, w: Write) -> None:
        if isinstance(w, Submitted):
            self._db.execute(
                "INSERT OR REPLACE INTO tasks (task_id, model, spec, submitted)"
                " VALUES (?, ?, ?, ?)",
                (w.spec.task_id, w.spec.model, w.spec.SerializeToString(), w.submitted),
            )
        else:
            self._db.execute(
                "UPDATE tasks SET finished = ?, result = ? WHERE task_id = ?",
                (w.finished, w.result.SerializeToString(), w.task_id),
            )

    def load(self) -> list[JournalRow]:
        """Every task in the journal, oldest submission first."""
        rows = self._db.execute(
            "SELECT spec, submitted, finished, result FROM tasks ORDER BY submitted"
        ).fetchall()
        out: list[JournalRow] = []
        for spec_b, submitted, finished, result_b in rows:
            spec = peer_pb2.TaskSpec.FromString(spec_b)
            result = peer_pb2.CompleteRequest.FromString(result_b) if result_b else None
            out.append(JournalRow(spec, submitted, finished, result))
        return out

    def purge(self, finished_before: float) -> int:
        """Forgets tasks finished before the given time; returns how many."""
        cur = self._db.execute(
            "DELETE FROM tasks WHERE finished IS NOT NULL AND finished < ?", (finished_before,)
        )
        return cur.rowcount

    def close(self) -> None:
        self._db.close()
