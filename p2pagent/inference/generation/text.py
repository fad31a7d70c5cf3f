"""Incremental detokenization with stop strings: token ids in, text deltas out.

Byte-level tokens may end inside a UTF-8 character, so a delta is emitted only once the
decoded text no longer ends in a replacement character (the prefix/read offsets of TGI's
streaming decoder). Text that could be the start of a stop string is held back until it
is clear that it is not, so a stop string never reaches the caller even in part.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence


class TextStream:
    def __init__(self, decode: Callable[[list[int]], str], stop: Sequence[str] = ()) -> None:
        self._decode = decode
        self._stop = tuple(stop)
        self._ids: list[int] = []
        self._prefix = 0  # tokens before this are decoded into ``_text`` for good
        self._read = 0
        self._text = ""  # all text decoded so far
        self._emitted = 0  # characters of ``_text`` handed out
        self.stopped = False

    def push(self, token_id: int) -> str:
        """Adds one token; returns the new text to emit (may be empty). After a stop string
        appears, ``stopped`` is True and the text before it is the last delta."""
        self._ids.append(token_id)
        prefix_text = self._decode(self._ids[self._prefix : self._read])
        new_text = self._decode(self._ids[self._prefix :])
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            self._text += new_text[len(prefix_text) :]
            self._prefix, self._read = self._read, len(self._ids)
        return self._release()

    def flush(self) -> str:
        """The text held back, at the end of generation (no stop string came)."""
        if self.stopped:
            return ""
        out = self._text[self._emitted :]
        self._emitted = len(self._text)
        return out

    def _release(self) -> str:
        if self.stopped:
            return ""
        for stop in self._stop:
            # A stop string can only complete in the not-yet-emitted tail (and whatever of
            # it was held back before).
            at = self._text.find(stop, max(0, self._emitted - len(stop) + 1))
            if at >= 0:
                self.stopped = True
                out = self._text[self._emitted : at]
                self._emitted = at
                return out
        hold = max((_overlap(self._text, s) for s in self._stop), default=0)
        end = max(self._emitted, len(self._text) - hold)
        out = self._text[self._emitted : end]
        self._emitted = end
        return out


def _overlap(text: str, stop: str) -> int:
    """Length of the longest end of ``text`` that is a start of ``stop``."""
    for n in range(min(len(text), len(stop) - 1), 0, -1):
        if text.endswith(stop[:n]):
            return n
    return 0
