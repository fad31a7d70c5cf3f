"""What a Hugging Face model folder is, read from its own config files: the check a folder
passes before it is published, and the metadata (task, ports, maximum length, labels,
pooling) a node serves it with.

Refused, each with InvalidArgument naming the problem and what to do:

- weights in any format but safetensors (``pytorch_model.bin`` and the other pickle-based
  files: loading them would unpickle; ``.h5``/``.msgpack``/``.onnx``: not loaded here);
- Python files, or ``auto_map`` in a config (code from the folder, ``trust_remote_code``):
  a node runs only the architectures the installed ``transformers`` ships;
- a ``config.json`` that is missing, not JSON, or names no architecture, several, or one
  ``transformers`` does not know;
- no ``tokenizer.json`` (a node tokenizes with the ``tokenizers`` library);
- a base model (``BertModel``...) without a sentence-transformers pooling config: a node
  would not know how to make one vector of a sentence;
- an architecture of another task than the four served (sentence embeddings, sequence
  classification, token classification, and text generation for causal language models:
  ``GPT2LMHeadModel``, ``LlamaForCausalLM``... served by ``Generate``, not ``Infer``).

Imports ``transformers``' architecture tables (which import torch): a few seconds, paid by
the publisher's CLI and the node's publish check, not by a node that only replicates.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from p2pagent.errors import InvalidArgument
from p2pagent.inference.hf.pack import PackedFile, files_from_doc

EMBEDDING = "embedding"
CLASSIFICATION = "classification"
TOKEN_CLASSIFICATION = "token_classification"
GENERATION = "generation"
TASKS = (EMBEDDING, CLASSIFICATION, TOKEN_CLASSIFICATION, GENERATION)
#: Pooling modes of sentence-transformers' Pooling config, by its flag names.
POOLING_FLAGS = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
}
#: sentence-transformers modules a folder may chain (in this order).
_ST_TRANSFORMER = "sentence_transformers.models.Transformer"
_ST_POOLING = "sentence_transformers.models.Pooling"
_ST_NORMALIZE = "sentence_transformers.models.Normalize"
#: Weight files that are pickles (loading one would unpickle it).
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy")
#: Weight files of other frameworks, never loaded here.
FOREIGN_SUFFIXES = (".h5", ".msgpack", ".onnx", ".gguf", ".tflite", ".ot")
#: A tokenizer's "no limit" (transformers writes a huge int for it).
_NO_LIMIT = 1_000_000


def _json(root: Path, rel: str, *, required: bool) -> dict[str, Any] | None:
    path = root / rel
    if not path.is_file():
        if required:
            raise InvalidArgument(f"the folder has no {rel}: a Hugging Face model folder needs it")
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise InvalidArgument(f"the folder's {rel} is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise InvalidArgument(f"the folder's {rel} must be a JSON object")
    return doc


def known_architectures() -> dict[str, str]:
    """Architecture class name -> the task a node serves it for (from transformers' tables)."""
    from transformers.models.auto import modeling_auto as auto

    out: dict[str, str] = {}
    tables: Sequence[tuple[Mapping[str, Any], str]] = (
        (auto.MODEL_MAPPING_NAMES, EMBEDDING),
        (auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES, CLASSIFICATION),
        (auto.MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES, TOKEN_CLASSIFICATION),
        (auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, GENERATION),
    )
    for table, task in tables:
        for names in table.values():
            for name in (names,) if isinstance(names, str) else names:
                out.setdefault(name, task)
    return out


def _check_files(paths: Sequence[str]) -> None:
    for p in paths:
        low = p.lower()
        if low.endswith(PICKLE_SUFFIXES):
            raise InvalidArgument(
                f"the folder holds {p}, a pickle-based weight file: a node never unpickles. "
                "Save the weights as safetensors (model.save_pretrained(dir, "
                "safe_serialization=True)) and leave the .bin out"
            )
        if low.endswith(FOREIGN_SUFFIXES):
            raise InvalidArgument(
                f"the folder holds {p}: only safetensors weights are served; leave it out"
            )
        if low.endswith(".py"):
            raise InvalidArgument(
                f"the folder holds Python code ({p}): nodes run only the architectures "
                "transformers ships, never code from a folder; leave it out"
            )
    if not any(p.endswith(".safetensors") and "/" not in p for p in paths):
        raise InvalidArgument(
            "the folder has no safetensors weights (model.safetensors, or shards with "
            "model.safetensors.index.json): save the model with safe_serialization=True"
        )
    if "tokenizer.json" not in paths:
        raise InvalidArgument(
            "the folder has no tokenizer.json: nodes tokenize with the tokenizers library; "
            "save a fast tokenizer (AutoTokenizer.from_pretrained(..., use_fast=True)"
            ".save_pretrained(dir))"
        )


def _no_code(name: str, doc: Mapping[str, Any] | None) -> None:
    if doc is not None and ("auto_map" in doc or doc.get("trust_remote_code")):
        raise InvalidArgument(
            f"the folder's {name} asks for code from the folder (auto_map / "
            "trust_remote_code): nodes run only the architectures transformers ships, "
            "loaded with trust_remote_code=False"
        )


def _embedding_head(root: Path) -> tuple[str, bool]:
    """(pooling mode, normalise) from the sentence-transformers modules of the folder."""
    modules = root / "modules.json"
    if not modules.is_file():
        raise InvalidArgument(
            "the folder holds a base model but no sentence-transformers config "
            "(modules.json with a Pooling module): a node would not know how to pool tokens "
            "into a sentence embedding. Save it with sentence-transformers, or publish a "
            "classifier"
        )
    try:
        chain = json.loads(modules.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise InvalidArgument(f"the folder's modules.json is not valid JSON: {e}") from None
    if not isinstance(chain, list) or not all(isinstance(m, dict) for m in chain):
        raise InvalidArgument("the folder's modules.json must be a list of objects")
    types = [str(m.get("type", "")) for m in chain]
    allowed = (
        [_ST_TRANSFORMER, _ST_POOLING],
        [_ST_TRANSFORMER, _ST_POOLING, _ST_NORMALIZE],
    )
    if types not in allowed:
        raise InvalidArgument(
            f"the folder's sentence-transformers modules are {types}; nodes serve Transformer, "
            "Pooling and optionally Normalize, in that order"
        )
    if chain[0].get("path", "") != "":
        raise InvalidArgument("the folder's Transformer module must be the folder itself")
    pooling_dir = str(chain[1].get("path", ""))
    doc = _json(root, f"{pooling_dir}/config.json" if pooling_dir else "config.json", required=True)
    assert doc is not None
    modes = [mode for flag, mode in POOLING_FLAGS.items() if doc.get(flag)]
    others = [
        k for k, v in doc.items() if k.startswith("pooling_mode") and v and k not in POOLING_FLAGS
    ]
    if len(modes) != 1 or others:
        raise InvalidArgument(
            f"the folder's pooling config turns on {modes + others or 'no mode'}; nodes serve "
            f"exactly one of {sorted(POOLING_FLAGS)}"
        )
    return modes[0], len(types) == 3


def _max_length(root: Path, config: Mapping[str, Any]) -> int:
    limits: list[int] = []
    st = _json(root, "sentence_bert_config.json", required=False)
    if st is not None and isinstance(st.get("max_seq_length"), int):
        limits.append(st["max_seq_length"])
    tok = _json(root, "tokenizer_config.json", required=False)
    if tok is not None:
        _no_code("tokenizer_config.json", tok)
        value = tok.get("model_max_length")
        if isinstance(value, int) and 0 < value < _NO_LIMIT:
            limits.append(value)
    # GPT-2's config names its context n_positions (n_ctx in old folders).
    positions = next(
        (config[k] for k in ("max_position_embeddings", "n_positions", "n_ctx") if k in config),
        None,
    )
    if isinstance(positions, int) and positions > 0:
        # RoBERTa-style models offset positions by the padding index.
        offset = int(config.get("pad_token_id") or 0) + 1 if config.get("model_type") in (
            "roberta", "xlm-roberta", "camembert"
        ) else 0  # fmt: skip
        limits.append(positions - offset)
    if not limits:
        raise InvalidArgument(
            "the folder's configs name no maximum length (max_seq_length, model_max_length "
            "or max_position_embeddings)"
        )
    return min(limits)


def _labels(config: Mapping[str, Any]) -> list[str]:
    raw = config.get("id2label")
    if not isinstance(raw, Mapping) or not raw:
        raise InvalidArgument("the folder's config.json has no id2label: a classifier needs labels")
    try:
        by_id = {int(k): str(v) for k, v in raw.items()}
    except ValueError:
        raise InvalidArgument("the folder's id2label keys must be integers") from None
    if sorted(by_id) != list(range(len(by_id))):
        raise InvalidArgument("the folder's id2label must number labels 0..N-1")
    return [by_id[i] for i in range(len(by_id))]


def folder_metadata(root: Path, files: Sequence[PackedFile]) -> dict[str, Any]:
    """The ModelSpec (as JSON) a node serves the folder with; InvalidArgument naming what is
    missing or refused."""
    _check_files([f.path for f in files])
    config = _json(root, "config.json", required=True)
    assert config is not None
    _no_code("config.json", config)
    archs = config.get("architectures")
    if not isinstance(archs, list) or len(archs) != 1 or not isinstance(archs[0], str):
        raise InvalidArgument(
            f"the folder's config.json must name exactly one architecture, got {archs!r}"
        )
    arch = archs[0]
    task = known_architectures().get(arch)
    if task is None:
        raise InvalidArgument(
            f"architecture {arch!r} of the folder's config.json is not one the installed "
            "transformers knows for embeddings, sequence or token classification, or "
            "text generation (a causal LM)"
        )
    ids = {"dtype": "int64", "shape": [-1, -1]}
    arch_config: dict[str, Any] = {
        "task": task,
        "max_length": _max_length(root, config),
        "pad_token_id": int(config.get("pad_token_id") or 0),
        "files": [f.to_dict() for f in files],
    }
    if task == GENERATION:
        vocab = config.get("vocab_size")
        if not isinstance(vocab, int) or vocab <= 0:
            raise InvalidArgument("the folder's config.json has no vocab_size")
        # The chat template (tokenizer_config.json) travels with the folder. The ports say
        # what one forward pass gives (Infer returns the raw next-token logits); Generate is
        # how it is meant to run, and its publish check runs a short generation.
        return {
            "inputs": [{"name": "input_ids", **ids}, {"name": "attention_mask", **ids}],
            "outputs": [{"name": "logits", "dtype": "float32", "shape": [-1, -1, vocab]}],
            "architecture": arch,
            "arch_config": arch_config,
        }
    if task == EMBEDDING:
        pooling, normalize = _embedding_head(root)
        width = config.get("hidden_size")
        if not isinstance(width, int) or width <= 0:
            raise InvalidArgument("the folder's config.json has no hidden_size")
        arch_config.update(pooling=pooling, normalize=normalize)
        outputs = [{"name": "embedding", "dtype": "float32", "shape": [-1, width]}]
    else:
        labels = _labels(config)
        arch_config["labels"] = labels
        shape = [-1, len(labels)] if task == CLASSIFICATION else [-1, -1, len(labels)]
        outputs = [{"name": "logits", "dtype": "float32", "shape": shape}]
    return {
        "inputs": [{"name": "input_ids", **ids}, {"name": "attention_mask", **ids}],
        "outputs": outputs,
        "architecture": arch,
        "arch_config": arch_config,
    }


def listed_files(arch_config: Mapping[str, Any]) -> tuple[PackedFile, ...]:
    """The file list a folder version's metadata names."""
    return files_from_doc(arch_config.get("files"))
