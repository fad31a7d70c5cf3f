"""Tiny Hugging Face model folders with random weights, built in code (no downloads): a
sentence-embedding BERT (sentence-transformers layout: modules.json, mean pooling,
normalisation), a sequence classifier and a token classifier. Seconds to build, a few
hundred KB each: for unit and integration tests of publishing, serving and batching.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: Words of the tiny vocabulary (lower case; anything else is [UNK] or word pieces of it).
WORDS = tuple(
    " ".join(
        (
            "the a an of to and in is was for on with as by at from it this that be are were has",
            "have had not but or which one two three new first last city river paris london berlin",
            "alice bob carol model node agent text token sentence word good bad great terrible",
            "happy sad runs ran walks walked near far big small red blue green",
        )
    ).split(" ")
)
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
PIECES = [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"] + list("abcdefghijklmnopqrstuvwxyz.,!?'")
TOKEN_LABELS = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")
CLASS_LABELS = ("negative", "neutral", "positive")


def _vocab() -> list[str]:
    return [*SPECIAL, *dict.fromkeys([*WORDS, *PIECES])]


def _bert_config(**extra: Any) -> Any:
    from transformers import BertConfig

    return BertConfig(
        vocab_size=len(_vocab()), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64, pad_token_id=0, **extra,
    )  # fmt: skip


def write_tokenizer(folder: Path, max_length: int = 64) -> None:
    """A BERT WordPiece tokenizer over ``WORDS`` (tokenizer.json, vocab.txt and configs)."""
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece

    vocab = {t: i for i, t in enumerate(_vocab())}
    tok = Tokenizer(WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tok.decoder = decoders.WordPiece()
    tok.save(str(folder / "tokenizer.json"))
    (folder / "vocab.txt").write_text("\n".join(_vocab()) + "\n")
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "do_lower_case": True,
                "model_max_length": max_length,
                "tokenizer_class": "BertTokenizer",
            }
        )
    )


def _save(model: object, folder: Path, seed: int) -> Path:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))  # type: ignore[attr-defined]
    write_tokenizer(folder)
    return folder


def embedding_folder(folder: Path, *, seed: int = 0, pooling: str = "mean") -> Path:
    """A sentence-transformers folder: BertModel, ``pooling`` pooling, normalised."""
    import torch
    from transformers import BertModel

    torch.manual_seed(seed)
    model = BertModel(_bert_config(), add_pooling_layer=False).eval()  # type: ignore[no-untyped-call]
    _save(model, folder, seed)
    st = "sentence_transformers.models."
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": st + "Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": st + "Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": st + "Normalize"},
    ]
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    flags = {
        "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean",
        "pooling_mode_max_tokens": pooling == "max",
        "pooling_mode_mean_sqrt_len_tokens": pooling == "mean_sqrt_len",
    }
    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": 32, **flags})
    )
    (folder / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": 48, "do_lower_case": False})
    )
    return folder


def classifier_folder(folder: Path, *, seed: int = 1) -> Path:
    """BertForSequenceClassification over ``CLASS_LABELS``."""
    import torch
    from transformers import BertForSequenceClassification

    torch.manual_seed(seed)
    labels = dict(enumerate(CLASS_LABELS))
    config = _bert_config(id2label=labels, label2id={v: k for k, v in labels.items()})
    model: Any = BertForSequenceClassification(config)
    return _save(model.eval(), folder, seed)


def token_classifier_folder(folder: Path, *, seed: int = 2) -> Path:
    """BertForTokenClassification over ``TOKEN_LABELS`` (BIO tags of persons and places)."""
    import torch
    from transformers import BertForTokenClassification

    torch.manual_seed(seed)
    labels = dict(enumerate(TOKEN_LABELS))
    config = _bert_config(id2label=labels, label2id={v: k for k, v in labels.items()})
    model: Any = BertForTokenClassification(config)
    return _save(model.eval(), folder, seed)
