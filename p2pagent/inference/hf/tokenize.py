"""Text to token ids with a folder's own ``tokenizer.json`` (the ``tokenizers`` library), and
the refusals of text a node will not run: an empty list, an empty text, a text longer than
the model's maximum (unless the request asks for truncation).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from p2pagent.errors import InvalidArgument

#: Most texts in one request.
MAX_TEXTS = 1024
#: Longest text accepted, characters (a text far past any model's maximum is refused before
#: it is tokenized).
MAX_CHARS = 200_000


@dataclass(frozen=True)
class Encoded:
    """One text's tokens: ids (special tokens included) and each token's character span."""

    ids: tuple[int, ...]
    offsets: tuple[tuple[int, int], ...]
    special: tuple[bool, ...]
    truncated: bool


def check_texts(model: str, texts: Sequence[str]) -> None:
    if not texts:
        raise InvalidArgument(f"no texts for model {model!r}: give at least one text")
    if len(texts) > MAX_TEXTS:
        raise InvalidArgument(f"{len(texts)} texts in one request; at most {MAX_TEXTS}")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise InvalidArgument(f"text {i} is not a string")
        if not t.strip():
            raise InvalidArgument(f"text {i} is empty: every text needs some words")
        if len(t) > MAX_CHARS:
            raise InvalidArgument(f"text {i} is {len(t)} characters; at most {MAX_CHARS}")
        try:
            t.encode("utf-8")
        except UnicodeEncodeError as e:
            raise InvalidArgument(f"text {i} is not valid UTF-8 text: {e.reason}") from None


class TextTokenizer:
    """A folder's tokenizer, with the model's maximum length (special tokens included)."""

    def __init__(self, path: Path, max_length: int) -> None:
        from tokenizers import Tokenizer

        try:
            self._plain = Tokenizer.from_file(str(path))
            self._cut = Tokenizer.from_file(str(path))
        except Exception as e:  # the library raises plain Exceptions for a bad file
            raise InvalidArgument(f"the folder's tokenizer.json does not load: {e}") from None
        self._plain.no_truncation()
        self._plain.no_padding()
        self._cut.no_padding()
        self._cut.enable_truncation(max_length)
        self.max_length = max_length

    def encode(self, model: str, texts: Sequence[str], *, truncate: bool) -> list[Encoded]:
        """Each text's tokens; InvalidArgument for a text over the maximum without
        ``truncate``."""
        check_texts(model, texts)
        tok = self._cut if truncate else self._plain
        out: list[Encoded] = []
        for i, enc in enumerate(tok.encode_batch(list(texts))):
            if len(enc.ids) > self.max_length:
                raise InvalidArgument(
                    f"text {i} is {len(enc.ids)} tokens; model {model!r} takes at most "
                    f"{self.max_length}: shorten it, or ask for truncation (truncate=true, "
                    "--truncate)"
                )
            out.append(
                Encoded(
                    tuple(enc.ids),
                    tuple(enc.offsets),
                    tuple(bool(s) for s in enc.special_tokens_mask),
                    bool(enc.overflowing),
                )
            )
        return out
