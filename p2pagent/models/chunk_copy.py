"""Copying a version's chunk files into its model file inside the kernel.

``os.copy_file_range`` moves the bytes from file to file without passing them through
Python (one copy in the page cache instead of a read into a buffer and a write out of it).
Only for chunk files that need no hashing: the caller says which it trusts (a file this
process wrote or checked lately and that is unchanged since), judged on the opened file, so
the bytes copied are those of the file judged.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path


def copy_trusted_chunks(
    sources: Sequence[tuple[Path, str, int]],
    fd: int,
    trusted: Callable[[str, os.stat_result], bool],
) -> bool:
    """Appends each ``(path, digest, length)`` chunk file to ``fd`` in order; False at the
    first one that is missing, untrusted or not ``length`` bytes long (``fd`` then holds a
    partial file for the caller to drop)."""
    for path, digest, length in sources:
        try:
            f = open(path, "rb", buffering=0)  # noqa: SIM115 (closed below)
        except FileNotFoundError:
            return False
        with f:
            st = os.fstat(f.fileno())
            if st.st_size != length or not trusted(digest, st):
                return False
            left = length
            while left:
                n = os.copy_file_range(f.fileno(), fd, left)
                if n == 0:
                    return False  # shorter than it was a moment ago
                left -= n
    return True
