"""The task journal's table and the process that writes it: ``<data_dir>/tasks.db`` (SQLite,
WAL, synchronous=FULL), written by a child process of the daemon, never by the daemon itself.

Why a process: a journal thread in the daemon costs more than the disk. Every Submit and every
result crossed to the thread and back, and each crossing is a GIL hand-off with the event loop
(measured, bench/RESULTS.md: the thread journal cost 0.6-0.8 ms of a 2.5 ms Submit+Wait pair,
SQLite itself under 0.1 ms). Here the daemon writes a frame to a pipe and reads an ack from
another, both on its own event loop; the fsync happens under another GIL.

Protocol, both directions a stream of msgpack arrays:

- daemon -> writer, one frame per write, committed in the order sent:
  ``["S", task_id, model, spec, submitted]`` (a task accepted: ``TaskSpec`` bytes),
  ``["F", task_id, result, finished]`` (its result: ``CompleteRequest`` bytes; right after
  its task's ``S`` in one group, the two are written as one row: :func:`whole_tasks`),
  ``["W", task_id, model, spec, submitted, result, finished]`` (a task journaled once it
  has finished, one row),
  ``["P", finished_before]`` (forget results delivered before that time),
  ``["D", [task_id, ...]]`` (forget unfinished tasks whose submission was refused because a
  previous writer died before confirming it: it may or may not have reached the table);
- writer -> daemon, one reply per group: ``[count, error]``. Every frame already in the pipe
  when the writer looks is one group, one transaction and one fsync (group commit, so a burst
  of submissions costs one flush); ``count`` frames, in order, are durable when ``error`` is
  None and none of them is when it is a message (a full disk: the writer rolls back and goes
  on with the next group).

The writer stops at the end of its input, after committing what it read: when the daemon
closes the pipe at shutdown, or dies (so a SIGKILLed daemon leaves no orphan). It ignores
SIGINT and SIGTERM, which a terminal or a service manager also sends to it, so that the
daemon decides when the journal closes.

This file runs as a script (``python -P journal_writer.py DB``) and imports only the standard
library and msgpack, so the writer starts in tens of milliseconds and shares no state with
the daemon.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgpack  # type: ignore[import-untyped]

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

#: One row as stored: (spec, submitted, finished or None, result or None).
RawRow = tuple[bytes, float, float | None, bytes | None]

READ_SIZE = 1 << 20


class JournalTable:
    """The task table of one origin. Blocking; one process writes it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)

    def commit(self, frames: Sequence[list[Any]]) -> None:
        """Applies ``frames`` in one transaction; durable (fsynced) when it returns."""
        frames = whole_tasks(frames)
        if not frames:
            return
        if len(frames) == 1:
            self._apply(frames[0])  # one statement is its own transaction
            return
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            for frame in frames:
                self._apply(frame)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _apply(self, frame: list[Any]) -> None:
        kind = frame[0]
        if kind == "W":
            _, task_id, model, spec, submitted, result, finished = frame
            self._db.execute(
                "INSERT OR REPLACE INTO tasks (task_id, model, spec, submitted, finished, result)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (task_id, model, spec, submitted, finished, result),
            )
        elif kind == "S":
            _, task_id, model, spec, submitted = frame
            self._db.execute(
                "INSERT OR REPLACE INTO tasks (task_id, model, spec, submitted)"
                " VALUES (?, ?, ?, ?)",
                (task_id, model, spec, submitted),
            )
        elif kind == "F":
            _, task_id, result, finished = frame
            self._db.execute(
                "UPDATE tasks SET finished = ?, result = ? WHERE task_id = ?",
                (finished, result, task_id),
            )
        elif kind == "D":
            # Submissions whose writes were never confirmed (the previous writer died): the
            # daemon refused them, so they must not come back at its next start.
            self._db.executemany(
                "DELETE FROM tasks WHERE task_id = ? AND finished IS NULL",
                [(task_id,) for task_id in frame[1]],
            )
        elif kind == "P":
            self._db.execute(
                "DELETE FROM tasks WHERE finished IS NOT NULL AND finished < ?", (frame[1],)
            )
        else:
            raise ValueError(f"unknown journal frame kind {kind!r}")

    def load(self) -> list[RawRow]:
        """Every task in the journal, oldest submission first."""
        rows = self._db.execute(
            "SELECT spec, submitted, finished, result FROM tasks ORDER BY submitted"
        ).fetchall()
        return [(spec, submitted, finished, result) for spec, submitted, finished, result in rows]

    def close(self) -> None:
        self._db.close()


def whole_tasks(frames: Sequence[list[Any]]) -> Sequence[list[Any]]:
    """``frames`` with each submission directly followed by its own task's result folded into
    one ``["W", task_id, model, spec, submitted, result, finished]`` (one INSERT instead of an
    INSERT and an UPDATE: a task run at once is journaled that way). Only adjacent pairs: the
    frames keep their order, so the table ends as it would have."""
    if len(frames) < 2:
        return frames
    out: list[list[Any]] = []
    i = 0
    while i < len(frames):
        frame = frames[i]
        after = frames[i + 1] if i + 1 < len(frames) else None
        if frame[0] == "S" and after is not None and after[0] == "F" and after[1] == frame[1]:
            out.append(["W", *frame[1:], after[2], after[3]])
            i += 2
        else:
            out.append(frame)
            i += 1
    return out


def serve(table: JournalTable, frames_in: int, replies_out: int) -> None:
    """Commits frames read from the file descriptor ``frames_in`` a group at a time and
    answers each group on ``replies_out``, until ``frames_in`` ends."""
    unpacker = msgpack.Unpacker(raw=False)
    while True:
        data = os.read(frames_in, READ_SIZE)
        if not data:
            return
        unpacker.feed(data)
        group = list(unpacker)
        if not group:
            continue  # a frame is still arriving
        error: str | None = None
        try:
            table.commit(group)
        except (sqlite3.Error, OSError, ValueError) as e:
            error = f"{type(e).__name__}: {e}"
        reply = memoryview(msgpack.packb([len(group), error]))
        while reply:
            reply = reply[os.write(replies_out, reply) :]


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: journal_writer.py DB (started by p2pagentd, not by hand)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    table = JournalTable(Path(argv[1]))
    try:
        serve(table, sys.stdin.fileno(), sys.stdout.fileno())
    except BrokenPipeError:
        pass  # the daemon is gone: nobody is left to answer
    finally:
        table.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
