"""Runs ``p2pagentd`` and, once it serves, writes the modules it has imported to a file.

For the start-up import test: a node that serves no model should import only what it needs
(numpy, torch, transformers and the OpenAI door's web stack load on first use), because an
idle mesh of many daemons pays every module on every start. The file, named by
``P2PAGENT_MODULES_OUT``, gets one JSON object: ``modules`` (sorted ``sys.modules`` at the
moment the daemon reports READY, as systemd would see it) and ``cpu_s`` (the process's CPU
seconds until then).

Run as ``python -m p2pagent.testing.startup_modules <p2pagentd arguments>``
(``Daemon(..., module="p2pagent.testing.startup_modules")``).
"""

from __future__ import annotations

import json
import os
import resource
import sys
from pathlib import Path

from p2pagent.cli import daemon

OUT = "P2PAGENT_MODULES_OUT"


def _report(out: Path) -> None:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    report = {"modules": sorted(sys.modules), "cpu_s": usage.ru_utime + usage.ru_stime}
    out.write_text(json.dumps(report))


def main() -> int:
    out = Path(os.environ[OUT])
    notify = daemon._notify_systemd

    def notify_and_report(state: str) -> None:
        if state == "READY=1":
            _report(out)
        notify(state)

    # serve() looks the function up in its module at the moment it is ready.
    daemon._notify_systemd = notify_and_report
    return daemon.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
