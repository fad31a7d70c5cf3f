"""Keeps gRPC's C core from writing its own log lines on a CLI user's terminal.

The core writes straight to file descriptor 2 (``I1207 04:50:48 ssl_transport_security.cc]
Handshake failed ...``) before the CLI's one-line error that says the same in words. It reads
``GRPC_VERBOSITY`` once, when it loads, so this module must be imported before ``grpc`` is:
first thing in the CLIs' modules. A user who sets ``GRPC_VERBOSITY`` (to debug) keeps it.
The daemon does not import this: it routes those lines into its log (``native_log``).
"""

import os

os.environ.setdefault("GRPC_VERBOSITY", "NONE")
