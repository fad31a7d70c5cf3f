"""A folder published to a node starts its model worker at once, not at the first request:
the worker imports torch and the folder's transformers code while nobody waits, so the first
Embed after a publish does not pay those imports (they could pass a client's 10 s deadline on
a loaded machine). One worker, however many folders and versions."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from p2pagent.client import Client
from p2pagent.testing import hf_folders
from p2pagent.testing.daemon import Daemon

READY = "model worker ready for BertModel models"


async def _until_logged(node: Daemon, text: str, count: int = 1) -> None:
    deadline = time.monotonic() + 120
    while node.log_path.read_text().count(text) < count:
        assert time.monotonic() < deadline, f"no {text!r} in 120 s:\n{node.log_tail()}"
        await asyncio.sleep(0.05)


async def test_a_published_folder_starts_the_worker_before_its_first_request(
    tmp_path: Path, certs_dir: Path
) -> None:
    emb = hf_folders.embedding_folder(tmp_path / "emb")
    other = hf_folders.embedding_folder(tmp_path / "other", seed=5, pooling="cls")
    node = Daemon("n3", certs_dir, tmp_path / "n3").start()
    try:
        assert not node.worker_pids()  # nothing it could run yet
        async with Client.from_certs(
            [node.address], certs_dir, identity="publisher", timeout_s=300
        ) as client:
            await client.publish(emb, "emb")
            # No request yet: the worker runs and has imported the folder's model code.
            await _until_logged(node, READY)
            (pid,) = node.worker_pids()
            # Another version of the same architecture: the same worker, nothing asked again.
            await client.publish(other, "emb")
            await _until_logged(node, "is loadable here", 2)
            vectors = await client.embed("emb", ["the agents share one folder", "hello"])
            assert len(vectors) == 2 and all(len(v) == 32 for v in vectors)
            assert node.worker_pids() == [pid]  # the warm worker ran it: none was started for it
            log = node.log_path.read_text()
            assert log.count("model worker started") == 1 and log.count(READY) == 1, log
        assert node.running
        assert "Traceback" not in node.log_path.read_text()
    finally:
        node.kill()
