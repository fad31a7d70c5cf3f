"""A pull's chunk writes (``landing``): every outcome delivered once, on the loop, several per
hand-off while the loop is busy; corrupt chunks written nowhere; a cancelled write reported
as an error rather than lost, so ``idle`` never hangs."""

from __future__ import annotations

import asyncio
import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from p2pagent.errors import Unavailable
from p2pagent.models.config import ModelsConfig
from p2pagent.models.landing import Landed, Landing
from p2pagent.models.manifest import build_manifest
from p2pagent.models.store import ChunkStore

from .conftest import CHUNK, blob

N = 24
DATA = blob(CHUNK * N, seed=5)
M = build_manifest("m", "safetensors", io.BytesIO(DATA), version=1, created_unix=0.0,
                   chunk_size=CHUNK)  # fmt: skip


def piece(i: int) -> bytes:
    return DATA[i * CHUNK : (i + 1) * CHUNK]


def store_at(tmp_path: Path) -> ChunkStore:
    store = ChunkStore(tmp_path, ModelsConfig(chunk_size=CHUNK, fsync=False))
    store.begin_pull(M)
    return store


async def test_every_chunk_is_delivered_once_on_the_loop_in_batches(tmp_path: Path) -> None:
    store = store_at(tmp_path)
    batches: list[list[Landed]] = []
    threads: set[int] = set()

    def deliver(batch: list[Landed]) -> None:
        threads.add(threading.get_ident())
        batches.append(batch)

    with ThreadPoolExecutor(4) as pool:
        landing = Landing(store, M.manifest_id, pool, deliver)
        for i in range(N):
            bad = i % 5 == 0
            landing.submit("n1", [(i, b"x" + piece(i)[1:] if bad else memoryview(piece(i)))])
        assert landing.outstanding == N
        time.sleep(0.2)  # noqa: ASYNC251  # the loop is busy: the writes finish, one hand-off waits
        await landing.idle()
    landed = [x for b in batches for x in b]
    assert sorted(x.index for x in landed) == list(range(N))
    assert threads == {threading.get_ident()}
    assert len(batches) < N  # several outcomes per hand-off
    assert {x.index for x in landed if not x.ok} == set(range(0, N, 5))
    assert all(x.error is None and x.size == CHUNK and x.node == "n1" for x in landed)
    # Only what verified was written.
    assert store.present(M.manifest_id) == {i for i in range(N) if i % 5}


async def test_a_cancelled_write_is_an_error_and_idle_still_returns(tmp_path: Path) -> None:
    store = store_at(tmp_path)
    landed: list[Landed] = []
    gate = threading.Event()
    pool = ThreadPoolExecutor(1)
    pool.submit(gate.wait)  # holds the only thread: the writes queue behind it
    landing = Landing(store, M.manifest_id, pool, landed.extend)
    landing.submit("n1", [(0, piece(0)), (1, piece(1))])
    landing.submit("n1", [(2, piece(2))])
    pool.shutdown(wait=False, cancel_futures=True)
    gate.set()
    await asyncio.wait_for(landing.idle(), 10)
    landing.submit("n1", [(3, piece(3))])  # after shutdown: refused at once, reported the same way
    await asyncio.wait_for(landing.idle(), 10)
    assert sorted(x.index for x in landed) == [0, 1, 2, 3]
    assert all(isinstance(x.error, Unavailable) for x in landed)
    assert store.present(M.manifest_id) == set()


async def test_a_group_is_one_job_and_one_failed_write_spoils_only_its_chunk(
    tmp_path: Path,
) -> None:
    store = store_at(tmp_path)
    landed: list[Landed] = []
    jobs = 0
    real_submit = ThreadPoolExecutor.submit

    class Counting(ThreadPoolExecutor):
        def submit(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            nonlocal jobs
            jobs += 1
            return real_submit(self, *args, **kwargs)

    real_write = store.write_chunk

    def write_chunk(mid: str, index: int, data: memoryview | bytes, **kw: bool) -> bool:
        if index == 2:
            raise OSError(28, "No space left on device")
        return real_write(mid, index, data, **kw)

    store.write_chunk = write_chunk  # type: ignore[method-assign]
    with Counting(2) as pool:
        landing = Landing(store, M.manifest_id, pool, landed.extend)
        landing.submit("n1", [(i, memoryview(piece(i))) for i in range(4)])
        landing.submit("n2", [(i, piece(i)) for i in range(4, 8)])
        await asyncio.wait_for(landing.idle(), 10)
    assert jobs == 2
    assert sorted(x.index for x in landed) == list(range(8))
    by_index = {x.index: x for x in landed}
    assert isinstance(by_index[2].error, OSError)
    assert all(x.error is None and x.ok for i, x in by_index.items() if i != 2)
    assert {x.node for x in landed if x.index >= 4} == {"n2"}
    assert store.present(M.manifest_id) == set(range(8)) - {2}
