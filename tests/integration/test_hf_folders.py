"""Hugging Face model folders through one real daemon: pushed as a model version (every file
listed in the manifest), then served as text in: sentence embeddings, sequence and token
classification, each against ``transformers`` run offline on the same folder; and every bad
input of the folder and of the texts refused naming the problem, with nothing published.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch

from p2pagent._proto import agent_pb2
from p2pagent.client import Client
from p2pagent.errors import FailedPrecondition, InvalidArgument
from p2pagent.inference.hf.model import pool
from p2pagent.testing import hf_folders
from p2pagent.testing.daemon import Daemon

TEXTS = [
    "Alice walked to Paris.",
    "the river near the big city",
    "bob ran",
    "Carol and Bob walked from London to Berlin with a red model of the new city.",
]


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("hf-folders")
    hf_folders.embedding_folder(d / "emb")
    hf_folders.classifier_folder(d / "cls")
    hf_folders.token_classifier_folder(d / "ner")
    return d


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, certs_dir: Path) -> Iterator[Daemon]:
    d = Daemon("n6", certs_dir, tmp_path_factory.mktemp("hf") / "n6")
    d.start()
    try:
        yield d
    finally:
        d.kill()


def _ids(folder: Path, texts: list[str]) -> list[list[int]]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    return [e.ids for e in tok.encode_batch(texts)]


def _reference(folder: Path, cls_name: str, texts: list[str]) -> list[torch.Tensor]:
    """Each text run alone through transformers (no padding at all)."""
    import transformers

    model = getattr(transformers, cls_name).from_pretrained(str(folder)).eval()
    out = []
    with torch.inference_mode():
        for ids in _ids(folder, texts):
            x = torch.tensor([ids])
            mask = torch.ones_like(x)
            result = model(input_ids=x, attention_mask=mask)
            if cls_name == "BertModel":
                emb = torch.nn.functional.normalize(pool(result[0], mask, "mean"), dim=1)
                out.append(emb[0])
            else:
                out.append(result.logits[0])
    return out


async def test_an_embedding_folder_is_published_and_embeds_as_transformers_does(
    node: Daemon, certs_dir: Path, folders: Path
) -> None:
    async with Client.from_certs(
        [node.address], certs_dir, identity="publisher", timeout_s=120
    ) as c:
        version = await c.publish(folders / "emb", "tiny-emb")
        assert version.format == "hf_folder"
        files = json.loads(version.metadata.arch_config)["files"]
        assert [f["path"] for f in files] == [
            "1_Pooling/config.json", "config.json", "model.safetensors", "modules.json",
            "sentence_bert_config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
        ]  # fmt: skip
        got = await c.embed("tiny-emb", TEXTS)
        status = await c.status()
    (batching,) = [b for b in status.batching if b.model == "tiny-emb"]
    real = sum(len(ids) for ids in _ids(folders / "emb", TEXTS))
    assert batching.rows == len(TEXTS) and batching.tokens == real
    assert batching.padded_tokens >= real and 0.0 <= batching.padding_ratio < 1.0
    want = _reference(folders / "emb", "BertModel", TEXTS)
    assert len(got) == len(TEXTS)
    for g, w in zip(got, want):
        assert torch.allclose(torch.tensor(g), w, atol=1e-5)


async def test_a_classifier_folder_scores_every_label_as_transformers_does(
    node: Daemon, certs_dir: Path, folders: Path
) -> None:
    async with Client.from_certs(
        [node.address], certs_dir, identity="publisher", timeout_s=120
    ) as c:
        await c.publish(folders / "cls", "tiny-cls")
        got = await c.classify("tiny-cls", TEXTS)
    want = _reference(folders / "cls", "BertForSequenceClassification", TEXTS)
    for scores, logits in zip(got, want):
        probs = torch.softmax(logits, dim=0)
        assert [label for label, _ in scores] == [
            hf_folders.CLASS_LABELS[i] for i in torch.argsort(probs, descending=True)
        ]
        for label, score in scores:
            assert abs(score - float(probs[hf_folders.CLASS_LABELS.index(label)])) < 1e-5


async def test_a_token_classifier_folder_tags_spans_with_their_offsets(
    node: Daemon, certs_dir: Path, folders: Path
) -> None:
    from tokenizers import Tokenizer

    from p2pagent.inference.hf.text import entities
    from p2pagent.inference.hf.tokenize import Encoded

    async with Client.from_certs(
        [node.address], certs_dir, identity="publisher", timeout_s=120
    ) as c:
        await c.publish(folders / "ner", "tiny-ner")
        got = await c.classify_tokens("tiny-ner", TEXTS)
    want = _reference(folders / "ner", "BertForTokenClassification", TEXTS)
    tok = Tokenizer.from_file(str(folders / "ner" / "tokenizer.json"))
    for text, found, logits in zip(TEXTS, got, want):
        e = tok.encode(text)
        special = tuple(map(bool, e.special_tokens_mask))
        enc = Encoded(tuple(e.ids), tuple(e.offsets), special, False)
        expected = entities(text, enc, hf_folders.TOKEN_LABELS, logits.tolist())
        assert [(x.label, x.start, x.end, x.text) for x in found] == [
            (x.label, x.start, x.end, x.text) for x in expected
        ]
        for x in found:
            assert text[x.start : x.end] == x.text


async def test_bad_texts_are_refused_naming_the_problem(
    node: Daemon, certs_dir: Path, folders: Path
) -> None:
    async with Client.from_certs(
        [node.address], certs_dir, identity="publisher", timeout_s=120
    ) as c:
        await c.publish(folders / "emb", "tiny-emb-2")
        stub = c._stub(node.address)  # the raw RPC: the client refuses these before sending
        cases = {
            "no texts": agent_pb2.EmbedRequest(model="tiny-emb-2"),
            "text 1 is empty": agent_pb2.EmbedRequest(model="tiny-emb-2", texts=["a", " "]),
            "takes at most 48": agent_pb2.EmbedRequest(
                model="tiny-emb-2", texts=["the river " * 40]
            ),
        }
        for words, request in cases.items():
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await stub.Embed(request, timeout=60)
            assert e.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert words in (e.value.details() or "")
        # Bytes that are not UTF-8 where a text goes (field 2), sent raw past protobuf.
        raw = c._channels[node.address].unary_unary("/p2pagent.v1.AgentService/Embed")
        model = b"tiny-emb-2"
        body = b"\x0a" + bytes([len(model)]) + model + b"\x12\x03\xff\xfeA"
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await raw(body, timeout=60)
        assert e.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "bad UTF-8" in (e.value.details() or "")
        long = await c.embed("tiny-emb-2", ["the river " * 40], truncate=True)
        assert len(long) == 1 and len(long[0]) == 32
        with pytest.raises(FailedPrecondition, match="call Embed"):
            await c.classify("tiny-emb-2", ["a text"])
        with pytest.raises(InvalidArgument, match="empty"):
            await c.embed("tiny-emb-2", [""])


def _bad(folders: Path, tmp: Path, name: str) -> Path:
    d = tmp / name
    shutil.copytree(folders / "emb", d)
    return d


async def test_bad_folders_are_refused_at_push_and_nothing_is_published(
    node: Daemon, certs_dir: Path, folders: Path, tmp_path: Path
) -> None:
    pickle = _bad(folders, tmp_path, "pickle")
    (pickle / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    unknown = _bad(folders, tmp_path, "unknown")
    cfg = json.loads((unknown / "config.json").read_text())
    (unknown / "config.json").write_text(json.dumps({**cfg, "architectures": ["NoSuchModel"]}))
    remote = _bad(folders, tmp_path, "remote")
    (remote / "config.json").write_text(json.dumps({**cfg, "auto_map": {"AutoModel": "x.Y"}}))
    no_pool = _bad(folders, tmp_path, "nopool")
    (no_pool / "modules.json").unlink()
    cases = {
        pickle: "pickle-based weight file",
        unknown: "NoSuchModel",
        remote: "auto_map",
        no_pool: "no sentence-transformers config",
    }
    async with Client.from_certs(
        [node.address], certs_dir, identity="publisher", timeout_s=120
    ) as c:
        for folder, words in cases.items():
            with pytest.raises(InvalidArgument, match=words):
                await c.publish(folder, f"bad-{folder.name}")
        assert [v.name for v in await c.models() if v.name.startswith("bad-")] == []


def _ctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "p2pagent.cli.ctl", *args],
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_the_cli_pushes_a_folder_and_prints_what_fits_its_task(
    node: Daemon, certs_dir: Path, folders: Path, tmp_path: Path
) -> None:
    conn = ["--target", node.address, "--certs", str(certs_dir), "--timeout", "120"]
    pub = [*conn, "--identity", "publisher"]
    r = _ctl("models", "push", str(folders / "emb"), "--name", "cli-emb", "--json", *pub)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["format"] == "hf_folder"
    r = _ctl("embed", "--model", "cli-emb", "--json", *conn, *TEXTS[:2])
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    want = _reference(folders / "emb", "BertModel", TEXTS[:2])
    for got, w in zip(doc["embeddings"], want):
        assert torch.allclose(torch.tensor(got), w, atol=1e-5)
    r = _ctl("embed", "--model", "cli-emb", *conn, "bob ran")
    assert r.returncode == 0 and "'bob ran' (4 tokens)" in r.stdout, r.stdout + r.stderr
    r = _ctl("classify", "--model", "cli-emb", *conn, "bob ran")
    assert r.returncode == 1 and "call Embed" in r.stderr and r.stderr.count("\n") == 1
    r = _ctl("models", "push", str(folders / "cls"), "--name", "cli-cls", *pub)
    assert r.returncode == 0, r.stderr
    r = _ctl("classify", "--model", "cli-cls", "--json", *conn, "bob ran", "the city")
    assert r.returncode == 0, r.stderr
    results = json.loads(r.stdout)["results"]
    assert [sorted(s["label"] for s in x) for x in results] == [sorted(hf_folders.CLASS_LABELS)] * 2
    # Token ids through Infer still work, several inputs from one .npz, every output saved.
    ids = _ids(folders / "emb", ["bob ran"])
    npz = tmp_path / "in.npz"
    np.savez(npz, input_ids=np.array(ids), attention_mask=np.ones((1, len(ids[0]))))
    r = _ctl("infer", "--model", "cli-emb", "--input", str(npz), *conn)
    assert r.returncode == 2 and "attention_mask" in r.stderr  # float mask: wrong dtype
    np.savez(npz, input_ids=np.array(ids), attention_mask=np.ones((1, len(ids[0])), np.int64))
    out = tmp_path / "out.npz"
    r = _ctl("infer", "--model", "cli-emb", "--input", str(npz), "--output", str(out), *conn)
    assert r.returncode == 0, r.stderr
    assert "L2 norm per row" in r.stdout and "argmax" not in r.stdout
    long = tmp_path / "long.npz"
    np.savez(
        long, input_ids=np.ones((1, 100), np.int64), attention_mask=np.ones((1, 100), np.int64)
    )
    r = _ctl("infer", "--model", "cli-emb", "--input", str(long), *conn)
    assert r.returncode == 2 and "takes at most 48 tokens per row, received 100" in r.stderr
    with np.load(out) as saved:
        assert saved.files == ["embedding"] and saved["embedding"].shape == (1, 32)


def test_no_bad_input_above_left_a_traceback_in_the_log(node: Daemon) -> None:
    # Runs last in this module: after every refusal above, the node logged none.
    log = node.log_path.read_text(errors="replace")
    assert "Traceback" not in log
    assert node.proc is not None and node.proc.poll() is None  # still running
