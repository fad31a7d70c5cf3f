"""Argument parsing whose usage errors are one line, like every other error of the CLIs.

argparse prints the whole usage block before the error; on a terminal full of output that
buries the one thing the user needs. This parser prints ``PROG: error: MESSAGE (see PROG
--help)`` and exits with status 2, the same status argparse uses.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from typing import NoReturn

EXIT_USAGE = 2


class OneLineErrorParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        sys.exit(EXIT_USAGE)


INT32 = (-(2**31), 2**31 - 1)
UINT32_MAX = 2**32 - 1
INT64 = (-(2**63), 2**63 - 1)
UINT64_MAX = 2**64 - 1


def int_in(low: int, high: int) -> Callable[[str], int]:
    """An argparse ``type``: an integer from ``low`` to ``high``, else a usage error that
    names the range (the wire's integer fields would refuse it later with a bare
    "Value out of range")."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is out of range: use {low}..{high}")
        return value

    parse.__name__ = "integer"  # argparse names the type in some messages
    return parse


def seconds(*, zero: bool) -> Callable[[str], float]:
    """An argparse ``type``: a finite number of seconds, above 0 (or from 0 with ``zero``)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
        if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
            bound = ">= 0" if zero else "> 0"
            raise argparse.ArgumentTypeError(f"{text} seconds: use a finite number {bound}")
        return value

    parse.__name__ = "seconds"
    return parse
