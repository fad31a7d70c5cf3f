"""Loading a node's or client's TLS material, with errors that say which file is wrong."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from p2pagent.errors import ConfigError, InvalidArgument
from p2pagent.identity.certs import CA_CERT, cluster_of_ca, identity_of
from p2pagent.identity.spiffe import Identity


@dataclass(frozen=True)
class TLSMaterial:
    """PEM bytes for the CA, our certificate and key, and what they say about us."""

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes
    identity: Identity
    not_after: dt.datetime

    @property
    def cluster(self) -> str:
        return self.identity.cluster


@dataclass(frozen=True)
class TLSPaths:
    ca: Path
    cert: Path
    key: Path

    @classmethod
    def in_dir(cls, directory: Path, name: str) -> TLSPaths:
        return cls(directory / CA_CERT, directory / f"{name}.crt", directory / f"{name}.key")


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path}: {e.strerror}") from None


def load(paths: TLSPaths) -> TLSMaterial:
    """Reads and checks the files: parseable, key matches cert, cert signed by the CA, valid now."""
    ca_pem = _read(paths.ca, "CA certificate")
    cert_pem = _read(paths.cert, "certificate")
    key_pem = _read(paths.key, "private key")
    try:
        ca = x509.load_pem_x509_certificate(ca_pem)
    except ValueError:
        raise ConfigError(f"CA certificate {paths.ca} is not a PEM certificate") from None
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise ConfigError(f"certificate {paths.cert} is not a PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise ConfigError(f"private key {paths.key} is not an unencrypted PEM key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"private key {paths.key} is not an ECDSA key")
    if key.public_key().public_numbers() != cert.public_key().public_numbers():  # type: ignore[union-attr]
        raise ConfigError(f"private key {paths.key} does not belong to certificate {paths.cert}")
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise ConfigError(
            f"certificate {paths.cert} was not issued by the CA in {paths.ca}"
        ) from None
    now = dt.datetime.now(dt.UTC)
    if cert.not_valid_after_utc < now:
        raise ConfigError(
            f"certificate {paths.cert} expired on {cert.not_valid_after_utc:%Y-%m-%d}"
        )
    try:
        identity = identity_of(cert)
    except InvalidArgument as e:
        raise ConfigError(f"certificate {paths.cert}: {e}") from None
    cluster = cluster_of_ca(ca)
    if identity.cluster != cluster:
        raise ConfigError(
            f"certificate {paths.cert} is for cluster {identity.cluster!r} "
            f"but the CA is for {cluster!r}"
        )
    return TLSMaterial(ca_pem, cert_pem, key_pem, identity, cert.not_valid_after_utc)
