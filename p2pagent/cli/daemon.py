"""``p2pagentd``: runs one node.

Configuration: ``--config FILE`` (TOML) < ``P2PAGENT_*`` environment < flags. A bad
configuration prints one line naming the problem and exits with status 2. SIGTERM/SIGINT stop
gracefully (exit 0); SIGHUP reloads certificates, and so does a change of the certificate
files (``cert_check_interval``). With ``NOTIFY_SOCKET`` set (systemd ``Type=notify``) it
sends ``READY=1`` once serving and ``STOPPING=1`` when told to stop.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence
from typing import Any

from p2pagent import __version__
from p2pagent.cli.args import OneLineErrorParser
from p2pagent.cli.cert_reload import CertificateReloader, stamps
from p2pagent.cli.malloc_tuning import tune as tune_malloc
from p2pagent.config import Config, load
from p2pagent.errors import P2PAgentError
from p2pagent.logs import setup as setup_logging

log = logging.getLogger("p2pagentd")

EXIT_CONFIG = 2
EXIT_CRASH = 1


def parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(
        prog="p2pagentd",
        description="Run a p2pagent node. Settings: --config FILE < P2PAGENT_* env < flags.",
    )
    p.add_argument("--version", action="version", version=f"p2pagentd {__version__}")
    p.add_argument("--config", metavar="FILE", help="TOML configuration file")
    p.add_argument("--name", help="unique node name (default: host name)")
    p.add_argument("--listen", metavar="HOST:PORT", help="address to bind (default 127.0.0.1:7400)")
    p.add_argument("--advertise", metavar="HOST:PORT", help="address peers dial (default: listen)")
    p.add_argument("--seeds", metavar="A,B,...", help="comma-separated addresses to join through")
    p.add_argument("--certs", metavar="DIR", help="directory with ca.crt, NAME.crt, NAME.key")
    p.add_argument("--ca", metavar="FILE", help="CA certificate (overrides --certs)")
    p.add_argument("--cert", metavar="FILE", help="node certificate (overrides --certs)")
    p.add_argument("--key", metavar="FILE", help="node private key (overrides --certs)")
    p.add_argument("--data", metavar="DIR", help="data directory (default ./p2pagent-data/NAME)")
    p.add_argument("--metrics", metavar="HOST:PORT", help="serve Prometheus metrics here")
    p.add_argument(
        "--http-listen",
        metavar="HOST:PORT",
        help="serve the OpenAI-compatible API here over HTTPS with mutual TLS (openai.listen)",
    )
    p.add_argument("--device", help="inference device: auto, cpu or cuda:N")
    p.add_argument(
        "--placement", help="tasks.placement: work_stealing, least_loaded, round_robin or local"
    )
    p.add_argument(
        "--serve", action="append", metavar="NAME=PATH", help="serve a local model (repeatable)"
    )
    p.add_argument("--tag", action="append", metavar="K=V", help="member tag (repeatable)")
    p.add_argument("--log-level", help="debug, info, warning or error")
    p.add_argument("--log-format", choices=("text", "json"), help="log line format")
    p.add_argument(
        "--rate-limit", type=float, metavar="RPS", help="public API requests/s per client"
    )
    p.add_argument("--grace-period", type=float, metavar="S", help="shutdown grace seconds")
    return p


def flags_of(args: argparse.Namespace) -> dict[str, Any]:
    skip = ("config", "tag", "placement", "http_listen")
    flags = {k: v for k, v in vars(args).items() if k not in skip and v is not None}
    if args.placement is not None:
        flags["tasks"] = {"placement": args.placement}
    if args.http_listen is not None:
        flags["openai"] = {"listen": args.http_listen}
    if args.tag:
        tags: dict[str, str] = {}
        for item in args.tag:
            if "=" not in item:
                raise P2PAgentError(f"--tag {item!r} must look like KEY=VALUE")
            k, v = item.split("=", 1)
            tags[k] = v
        flags["tags"] = tags
    return flags


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # plain asyncio where uvloop is missing
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def _notify_systemd(state: str) -> None:
    """sd_notify without libsystemd: one datagram to $NOTIFY_SOCKET (Type=notify units)."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(path)
            s.sendall(state.encode())
    except OSError as e:
        log.warning("cannot notify systemd: %s", e)


async def serve(config: Config) -> None:
    from p2pagent.node import Node  # imported late: torch and grpc load slowly

    files_as_loaded = stamps(config.tls_paths())
    node = Node(config)
    await node.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    certs = CertificateReloader(node)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, certs.reload)
    watch = None
    if config.cert_check_interval > 0:
        watch = loop.create_task(certs.watch(config.cert_check_interval, files_as_loaded))
    _notify_systemd("READY=1")
    await stop.wait()
    _notify_systemd("STOPPING=1")
    if watch is not None:
        watch.cancel()
        await asyncio.gather(watch, return_exceptions=True)
    await certs.close()
    await node.stop()


def main(argv: Sequence[str] | None = None) -> int:
    tune_malloc()  # before gRPC starts its threads (each would get an arena of its own)
    args = parser().parse_args(argv)
    try:
        config = load(args.config, os.environ, flags_of(args))
    except P2PAgentError as e:
        print(f"p2pagentd: error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(config.name, config.log_level, config.log_format, native=True)
    try:
        with asyncio.Runner(loop_factory=_new_loop) as runner:
            runner.run(serve(config))
    except P2PAgentError as e:
        print(f"p2pagentd: error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 0
    except Exception:
        # A bug, not a configuration problem: keep the traceback, but as a log record that
        # carries the node name (one JSON object with --log-format json), not raw stderr.
        log.critical("p2pagentd stopped on an unexpected error; please report it", exc_info=True)
        return EXIT_CRASH
    return 0


if __name__ == "__main__":
    sys.exit(main())
