"""Mutual-TLS credentials. There is no plaintext mode, not even for development."""

from __future__ import annotations

from collections.abc import Callable

import grpc

from p2pagent.identity.certs import node_dns_name
from p2pagent.identity.material import TLSMaterial


def server_credentials(current: Callable[[], TLSMaterial]) -> grpc.ServerCredentials:
    """Server credentials that require a client certificate from our CA.

    Built on gRPC's dynamic credentials: the fetcher is asked again on new handshakes, so
    reloading ``current()`` (SIGHUP) rotates certificates without a restart.
    """
    first = current()
    served = {"cert": first.cert_pem}

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        material = current()
        if material.cert_pem == served["cert"]:
            return None  # unchanged: gRPC keeps the current configuration
        served["cert"] = material.cert_pem
        return _config(material)

    return grpc.dynamic_ssl_server_credentials(
        _config(first),
        fetch,  # type: ignore[arg-type]  # gRPC documents None as "keep the current config"
        require_client_authentication=True,
    )


def _config(material: TLSMaterial) -> grpc.ServerCertificateConfiguration:
    return grpc.ssl_server_certificate_configuration(
        [(material.key_pem, material.cert_pem)], root_certificates=material.ca_pem
    )


def channel_credentials(material: TLSMaterial) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=material.ca_pem,
        private_key=material.key_pem,
        certificate_chain=material.cert_pem,
    )


def target_name(cluster: str) -> str:
    """The name every node certificate carries; clients verify it instead of the host name."""
    return node_dns_name(cluster)
