"""The committed stubs must match proto/: regenerate with `make proto` when this fails."""

from __future__ import annotations

from p2pagent._proto import generate


def test_committed_stubs_match_the_proto_files() -> None:
    stale = [
        name
        for name, text in generate.render().items()
        if (generate.OUT_DIR / name).read_text() != text
    ]
    assert not stale, f"stale generated stubs {stale}: run `make proto` and commit the result"
