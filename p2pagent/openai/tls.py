"""HTTPS with mutual TLS for the door, and the caller's identity from its certificate.

The server context carries the node's own certificate and trusts only the cluster CA, and
it requires a client certificate: the handshake itself refuses a caller without one from our
CA, as the gRPC server does. uvicorn does not put the peer certificate into the ASGI scope,
so ``PeerCertProtocol`` (uvicorn's h11 protocol, one method longer) copies it into the
connection's ``state`` when the connection is made, after the handshake, and every request
on that connection finds it in ``scope["state"]``. Its SPIFFE URI is the caller's identity,
checked like a gRPC caller's (``Guard.admit``).
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from typing import Any

from cryptography import x509
from uvicorn.protocols.http.h11_impl import H11Protocol

from p2pagent import errors
from p2pagent.identity.certs import identity_of
from p2pagent.identity.material import TLSPaths
from p2pagent.identity.spiffe import Identity
from p2pagent.openai.errors import Unauthenticated
from p2pagent.openai.gate import SERVER_LOAD

#: Key of the peer certificate (DER bytes) in a connection's ASGI ``state``.
PEER_CERT = "p2pagent.peer_cert"


def server_context(paths: TLSPaths) -> ssl.SSLContext:
    """TLS 1.2+ server context: the node's certificate, the cluster CA, client certificates
    required. ``reload`` re-reads the files into the same context (new handshakes)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.set_alpn_protocols(["http/1.1"])
    reload(ctx, paths)
    return ctx


def reload(ctx: ssl.SSLContext, paths: TLSPaths) -> None:
    ctx.load_cert_chain(str(paths.cert), str(paths.key))
    ctx.load_verify_locations(cafile=str(paths.ca))


def client_context(paths: TLSPaths) -> ssl.SSLContext:
    """What an HTTP client of the door uses (tests, docs' examples): trust the cluster CA and
    present ``paths``' certificate.

    The host name is not checked: node certificates name the cluster
    (``node.<cluster>.p2pagent``), not the address dialled, and only node certificates from this CA
    carry the server-auth usage, which OpenSSL checks for the server's certificate."""
    ctx = ssl.create_default_context(cafile=str(paths.ca))
    ctx.check_hostname = False
    ctx.load_cert_chain(str(paths.cert), str(paths.key))
    return ctx


class PeerCertProtocol(H11Protocol):
    """uvicorn's h11 protocol that hands the verified client certificate to the app."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        ssl_object = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        # Per connection: the state dict copied into each request's scope.
        # And uvicorn's live counts of connections and requests, for the door's own limit
        # (gate.py), which answers in OpenAI's error shape where uvicorn's would not.
        self.app_state = {**self.app_state, PEER_CERT: der, SERVER_LOAD: self.server_state}
        super().connection_made(transport)


#: Most distinct certificates whose identity parse is remembered (cleared past this).
MAX_CACHED = 4096
_identities: dict[bytes, Identity] = {}


def caller_identity(state: dict[str, Any]) -> Identity:
    """The SPIFFE identity of the verified client certificate of a request's connection."""
    der = state.get(PEER_CERT)
    if not der:
        raise Unauthenticated(
            "no client certificate: call with a certificate from the cluster CA "
            "(p2pagentctl certs issue --name NAME --role client)"
        )
    key = hashlib.sha256(der).digest()
    known = _identities.get(key)
    if known is not None:
        return known
    try:
        ident = identity_of(x509.load_der_x509_certificate(der))
    except (ValueError, errors.InvalidArgument) as e:
        raise errors.PermissionDenied(
            f"the client certificate's identity is refused: {e}; issue a certificate with "
            "`p2pagentctl certs issue --role ROLE`"
        ) from None
    if len(_identities) >= MAX_CACHED:
        _identities.clear()
    _identities[key] = ident
    return ident


def certificate_expiry(state: dict[str, Any]) -> float | None:
    der = state.get(PEER_CERT)
    if not der:
        return None
    return x509.load_der_x509_certificate(der).not_valid_after_utc.timestamp()
