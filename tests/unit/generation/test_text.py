"""Incremental text with stop strings, on a fake tokenizer (one character per token, and a
two-token character to show partial UTF-8 is held)."""

from __future__ import annotations

from p2pagent.inference.generation.text import TextStream

# Tokens 0-255: that byte; the stream decodes bytes as UTF-8 like a byte-level BPE does.


def decode(ids: list[int]) -> str:
    return bytes(ids).decode("utf-8", errors="replace")


def feed(stream: TextStream, text: str) -> list[str]:
    return [stream.push(b) for b in text.encode()]


def test_deltas_add_up_and_partial_characters_wait() -> None:
    stream = TextStream(decode)
    deltas = feed(stream, "aé b")
    assert deltas == ["a", "", "é", " ", "b"]  # é is two bytes: nothing after the first
    assert stream.flush() == ""


def test_stop_string_is_never_emitted_even_in_part() -> None:
    stream = TextStream(decode, stop=("END",))
    deltas = feed(stream, "abEN")
    assert "".join(deltas) == "ab"  # "EN" may begin "END": held back
    assert stream.push(ord("D")) == "" and stream.stopped
    assert stream.flush() == ""


def test_held_text_is_released_when_it_is_not_a_stop() -> None:
    stream = TextStream(decode, stop=("END",))
    deltas = feed(stream, "abENx")
    assert "".join(deltas) == "abENx" and not stream.stopped


def test_text_before_the_stop_in_the_same_token_is_kept() -> None:
    stream = TextStream(lambda ids: "".join(chr(i) for i in ids), stop=("\n\n",))
    out = stream.push(ord("a")) + stream.push(ord("\n")) + stream.push(ord("\n"))
    assert out == "a" and stream.stopped


def test_flush_returns_held_text_at_length() -> None:
    stream = TextStream(decode, stop=("xyz",))
    assert "".join(feed(stream, "abxy")) == "ab"
    assert stream.flush() == "xy"
