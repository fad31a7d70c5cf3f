"""The text side of a loaded folder: its tokenizer and what its outputs mean (task, labels),
plus turning outputs into answers (classifier scores, token-classification entities)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from p2pagent.inference.hf.folder import TOKEN_CLASSIFICATION, listed_files
from p2pagent.inference.hf.tokenize import Encoded, TextTokenizer

if TYPE_CHECKING:
    from p2pagent.inference.ragged import RaggedInputs
    from p2pagent.inference.spec import ModelSpec


@dataclass(frozen=True)
class Entity:
    """A span of the text a token classifier tagged: label, mean score, character offsets."""

    label: str
    score: float
    start: int
    end: int
    text: str


@dataclass(frozen=True)
class TextSide:
    task: str
    labels: tuple[str, ...]
    tokenizer: TextTokenizer

    @staticmethod
    def of_folder(folder: Path, arch_config: Mapping[str, Any]) -> TextSide:
        return TextSide(
            str(arch_config["task"]),
            tuple(str(x) for x in arch_config.get("labels", ())),
            TextTokenizer(folder / "tokenizer.json", int(arch_config["max_length"])),
        )


@dataclass(frozen=True)
class ServedFolder:
    """A published folder on the node that serves it: the folder unpacked beside its pack
    (every file checked against the manifest's list), how its token ids are padded, and its
    text side. Made in the daemon whether the model itself runs there or in the worker."""

    folder: Path
    ragged: RaggedInputs
    text: TextSide

    @staticmethod
    def of_pack(pack_path: Path, spec: ModelSpec) -> ServedFolder:
        from p2pagent.inference.hf import pack
        from p2pagent.inference.ragged import RaggedInputs

        folder = pack.materialise(
            pack_path, pack.folder_of(pack_path), listed_files(spec.arch_config)
        )
        pad = int(spec.arch_config.get("pad_token_id", 0))
        per_token = frozenset(p.name for p in spec.outputs if len(p.shape) == 3)
        return ServedFolder(
            folder, RaggedInputs((pad, 0), per_token), TextSide.of_folder(folder, spec.arch_config)
        )


def softmax(row: Sequence[float]) -> list[float]:
    top = max(row)
    exps = [math.exp(x - top) for x in row]
    total = sum(exps)
    return [e / total for e in exps]


def label_scores(labels: Sequence[str], logits: Sequence[float]) -> list[tuple[str, float]]:
    """(label, probability) best first, as transformers' text-classification pipeline with
    ``top_k=None`` gives them (softmax over the labels)."""
    probs = softmax(logits) if len(logits) > 1 else [1.0 / (1.0 + math.exp(-logits[0]))]
    return sorted(zip(labels, probs), key=lambda p: -p[1])


def entities(
    text: str, enc: Encoded, labels: Sequence[str], logits: Sequence[Sequence[float]]
) -> list[Entity]:
    """Adjacent tokens of one entity type joined into spans (``B-X``/``I-X`` read as X, a
    ``B-`` starting a new span), ``O`` and special tokens dropped: transformers'
    token-classification pipeline with ``aggregation_strategy="simple"``."""
    out: list[Entity] = []
    current: tuple[str, list[float], int, int] | None = None

    def close() -> None:
        if current is not None:
            label, scores, start, end = current
            out.append(Entity(label, sum(scores) / len(scores), start, end, text[start:end]))

    for special, (start, end), row in zip(enc.special, enc.offsets, logits):
        if special or start == end:
            continue
        probs = softmax(row)
        best = max(range(len(probs)), key=probs.__getitem__)
        tag = labels[best]
        if tag == "O":
            close()
            current = None
            continue
        prefix, _, kind = tag.partition("-") if "-" in tag else ("", "", tag)
        if current is not None and current[0] == kind and prefix != "B":
            current = (kind, [*current[1], probs[best]], current[2], end)
        else:
            close()
            current = (kind, [probs[best]], start, end)
    close()
    return out


def is_token_task(task: str) -> bool:
    return task == TOKEN_CLASSIFICATION
