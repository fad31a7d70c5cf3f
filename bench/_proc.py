"""What the benchmarks read about a process from /proc."""

from __future__ import annotations

import os
from pathlib import Path

#: Environment for daemons whose throughput a benchmark measures: the per-identity rate limits
#: (on by default: ``rate_limit``, ``tasks.submit_rate_per_identity``) would measure the
#: limiter instead of the daemon, since a benchmark's clients share one identity.
NO_RATE_LIMIT = {"P2PAGENT_RATE_LIMIT": "0", "P2PAGENT_TASKS__SUBMIT_RATE_PER_IDENTITY": "0"}


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
