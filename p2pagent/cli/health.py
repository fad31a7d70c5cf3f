"""``python -m p2pagent.cli.health``: exit 0 when the local node answers SERVING.

For container HEALTHCHECKs and Kubernetes exec probes, which cannot present a client
certificate themselves. Reads the same settings as the daemon (``P2PAGENT_*``, flags), so the
daemon's name and advertised address must come from the environment or the config file, not
from daemon flags this check cannot see. It dials the node's own listen address (loopback
when that is a wildcard): a local check should not depend on DNS or on the network.

``--live`` asks less: that the node answers at all (SERVING or NOT_SERVING), which is what a
liveness probe should ask. A node still loading its state or draining for a stop is alive but
not ready; restarting it for that would only start the load again.

Exit status: 0 healthy, 1 anything else, a bad flag or configuration included (Docker gives
HEALTHCHECK commands only these two; 2 is reserved there).
"""

from __future__ import annotations

import p2pagent.cli.grpc_quiet  # noqa: F401  (first: before anything loads grpc)

# isort: split
import argparse
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from p2pagent.cli.args import seconds
from p2pagent.config import Config, load, parse_address
from p2pagent.errors import P2PAgentError
from p2pagent.identity import material as tls
from p2pagent.transport.channels import channel_options


def local_target(cfg: Config) -> str:
    """The address to check this node through from the same host."""
    host, port = parse_address(cfg.listen, "listen address")
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


UNHEALTHY = 1


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"unhealthy: {self.prog}: {message}\n")
        sys.exit(UNHEALTHY)


def main(argv: Sequence[str] | None = None) -> int:
    p = _Parser(prog="p2pagent-health")
    p.add_argument("--config", metavar="FILE")
    p.add_argument("--name")
    p.add_argument("--certs")
    p.add_argument("--target", help="default: the advertised address")
    p.add_argument("--service", default="", help="health service name (default: overall)")
    p.add_argument("--timeout", type=seconds(zero=False), default=3.0)
    p.add_argument(
        "--live", action="store_true", help="healthy when the node answers at all (liveness)"
    )
    args = p.parse_args(argv)
    try:
        flags = {k: v for k, v in (("name", args.name), ("certs", args.certs)) if v}
        cfg = load(args.config, os.environ, flags)
        material = tls.load(cfg.tls_paths())
        target = args.target or local_target(cfg)
    except P2PAgentError as e:
        print(f"unhealthy: {e}", file=sys.stderr)
        return UNHEALTHY
    creds = grpc.ssl_channel_credentials(material.ca_pem, material.key_pem, material.cert_pem)
    with grpc.secure_channel(
        target, creds, options=channel_options(material.cluster, 4 << 20)
    ) as ch:
        try:
            resp = health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
            )
        except grpc.RpcError as e:
            print(f"unhealthy: {e.code().name}: {e.details()}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
    print(status)
    if args.live:
        return 0  # it answered: its event loop and server are alive
    return 0 if resp.status == health_pb2.HealthCheckResponse.SERVING else UNHEALTHY


if __name__ == "__main__":
    sys.exit(main())
