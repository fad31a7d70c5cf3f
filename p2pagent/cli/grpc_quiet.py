"""Keeps gRPC's C core from writing its own log lines on a CLI user's terminal.

The core writes straight to file descriptor 2 (``I1207 04:50:48 ssl_transport_security.cc]
Handshake failed ...``) before the CLI's one-line error that says the same in words. It reads
``GRPC_VERBOSITY`` once, when it loads, so this module must be imported before ``grpc`` is:
first thing in the CLIs' modules. A user who sets ``GRPC_VERBOSITY`` (to debug) keeps it.
The daemon does not import this: it routes those lines into its log (``native_log``). The
variable would also reach processes this one starts; ``QUIETED`` marks it as ours, so a
harness that imports the CLI in-process and then starts daemons can leave it out for them.
"""

import os

#: Set beside ``GRPC_VERBOSITY`` when this module (not the user) chose it.
QUIETED = "P2PAGENT_GRPC_QUIETED"

if "GRPC_VERBOSITY" not in os.environ:
    os.environ["GRPC_VERBOSITY"] = "NONE"
    os.environ[QUIETED] = "1"
