"""Argument parsing whose usage errors are one line, like every other error of the CLIs.

argparse prints the whole usage block before the error; on a terminal full of output that
buries the one thing the user needs. This parser prints ``PROG: error: MESSAGE (see PROG
--help)`` and exits with status 2, the same status argparse uses.
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

EXIT_USAGE = 2


class OneLineErrorParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        sys.exit(EXIT_USAGE)
