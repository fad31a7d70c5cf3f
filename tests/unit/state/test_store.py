"""SQLite persistence: round trips, epochs, durability across SIGKILL, and refusing damage."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import msgpack
import pytest

from p2pagent.errors import FailedPrecondition, RemoteProtocolError
from p2pagent.state.codec import decode_message
from p2pagent.state.replica import Replica
from p2pagent.state.store import StateStore


def _write_some(r: Replica) -> None:
    r.put_lww("ns", "k", b"v", 10.0)
    r.put_mv("ns", "m", b"1")
    r.increment("ns", "c", 7)
    r.set_add("ns", "s", [b"x", b"y"])
    r.put_lww("other", "gone", b"g", 11.0)
    r.delete("other", "gone")


def test_round_trip_restores_the_same_state(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.db")
    r = Replica("a", **{k: v for k, v in store.load("a").replica_args().items() if k != "node_id"})
    _write_some(r)
    store.save(r.take_persist(), durable=True)
    store.mark_clean()
    store.close()

    store = StateStore(tmp_path / "state.db")
    loaded = store.load("a")
    back = Replica(**loaded.replica_args())
    assert back.state_digest() == r.state_digest()
    assert back.state.context == r.state.context
    assert back.origin == r.origin == "a"  # clean stop: same epoch, counter continues
    assert back.put_lww("ns", "k", b"w", 12.0).seq == r.changes.last_seq + 1
    assert [row[1] for row in store.key_rows()] == ["c", "k", "m", "s"]  # no row for "gone"
    # Recent changes came back for watchers.
    changes, complete = back.changes_since(0, "ns")
    assert complete and [c.key for c in changes][:2] == ["k", "m"]
    store.close()


def test_unclean_restart_takes_a_new_epoch(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.db")
    r = Replica(**store.load("a").replica_args())
    r.put_lww("ns", "k", b"v", 10.0)
    store.save(r.take_persist(), durable=False)
    store.close()  # no mark_clean: as after a crash
    store = StateStore(tmp_path / "state.db")
    again = Replica(**store.load("a").replica_args())
    assert again.origin == "a/1"
    assert again.get("ns", "k").values == (b"v",)
    again.put_lww("ns", "k", b"w", 11.0)
    assert set(again.digest().context) == {"a", "a/1"}
    store.close()


def test_database_of_another_node_is_refused(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.db")
    store.load("a")
    with pytest.raises(FailedPrecondition, match="belongs to node 'a'"):
        store.load("b")
    store.close()


def test_malformed_delta_touches_neither_replica_nor_database(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.db")
    r = Replica(**store.load("a").replica_args())
    _write_some(r)
    store.save(r.take_persist(), durable=True)
    rows = store.key_rows()
    digest = r.state_digest()
    bad = msgpack.packb([1, "d", "b", [[None, {"b": [1, 1]}, [["ns", "k", 4, ["b", 1, 5]]]]]])
    with pytest.raises(RemoteProtocolError):
        r.apply(decode_message(bad), 1.0)
    batch = r.take_persist()
    assert batch.empty
    store.save(batch, durable=True)
    assert store.key_rows() == rows and r.state_digest() == digest
    store.close()


_CHILD = textwrap.dedent(
    """
    import sys
    from p2pagent.state.replica import Replica
    from p2pagent.state.store import StateStore
    store = StateStore(sys.argv[1])
    r = Replica(**store.load("a").replica_args())
    i = 0
    while True:
        r.put_lww("ns", f"k{i}", b"v%d" % i, 100.0 + i)
        store.save(r.take_persist(), durable=True)
        print(i, flush=True)   # acknowledged only after the durable save returned
        i += 1
    """
)


def test_durable_writes_survive_sigkill(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(db)], stdout=subprocess.PIPE, text=True, env=env
    )
    assert child.stdout is not None
    acked = [int(child.stdout.readline()) for _ in range(40)]
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    child.stdout.close()
    store = StateStore(db)
    r = Replica(**store.load("a").replica_args())
    for i in acked:
        assert r.get("ns", f"k{i}").values == (b"v%d" % i,)
    assert r.origin == "a/1"  # it did not stop cleanly
    store.close()
