"""Making and loading the cluster CA and the certificates it issues (ECDSA P-256).

Files in a certificate directory:

- ``ca.crt`` / ``ca.key``: the cluster CA; its URI SAN ``spiffe://<cluster>`` names the cluster.
- ``<name>.crt`` / ``<name>.key``: one per node or client.

Private keys are written with mode 0600. Node certificates also carry the DNS SAN
``node.<cluster>.p2pagent``: nodes dial each other by address but verify that name, so the
mesh works wherever its hosts move (pods, namespaces) while still proving "a node of this
cluster" through the CA; ``--host`` SANs are added for stock tools that check host names.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from p2pagent.errors import AlreadyExists, ConfigError, InvalidArgument
from p2pagent.identity.spiffe import Identity, Role, check_name, parse

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
CA_DAYS = 3650
LEAF_DAYS = 365


def node_dns_name(cluster: str) -> str:
    """The DNS SAN every node certificate carries and every node dials."""
    return f"node.{cluster}.p2pagent"


@dataclass(frozen=True)
class IssuedFiles:
    cert: Path
    key: Path
    identity: Identity


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _write_private(path: Path, data: bytes) -> None:
    # Create with 0600 from the start so the key is never readable by others, not even briefly.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.chmod(path, 0o600)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def init_ca(directory: Path, cluster: str, *, force: bool = False, days: int = CA_DAYS) -> Path:
    """Creates the cluster CA in ``directory``; refuses to overwrite one unless ``force``."""
    check_name(cluster, "cluster name")
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / CA_CERT, directory / CA_KEY
    if (cert_path.exists() or key_path.exists()) and not force:
        raise AlreadyExists(
            f"a CA already exists in {directory}; pass --force to replace it "
            "(every certificate it issued stops working)"
        )
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "p2pagent"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"p2pagent CA {cluster}"),
        ]
    )
    now = _utcnow()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"spiffe://{cluster}")]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_private(key_path, _key_pem(key))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path


def load_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey, str]:
    """Loads the CA certificate, its key and the cluster name from ``directory``."""
    cert_path, key_path = directory / CA_CERT, directory / CA_KEY
    if not cert_path.exists() or not key_path.exists():
        raise ConfigError(
            f"no CA in {directory}: run `p2pagentctl certs init --dir {directory} --cluster NAME`"
        )
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{key_path} is not an ECDSA key")
    return cert, key, cluster_of_ca(cert)


def cluster_of_ca(cert: x509.Certificate) -> str:
    """The cluster name a CA certificate was made for (from its ``spiffe://<cluster>`` SAN)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise ConfigError(
            "the CA certificate has no spiffe:// SAN; was it made by p2pagent?"
        ) from None
    for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
        if uri.startswith("spiffe://"):
            return check_name(uri[len("spiffe://") :].rstrip("/"), "cluster name")
    raise ConfigError("the CA certificate has no spiffe:// SAN; was it made by p2pagent?")


def _host_san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not host or any(c.isspace() for c in host) or "/" in host:
        raise InvalidArgument(f"invalid --host {host!r}: give a DNS name or an IP address")
    return x509.DNSName(host)


def issue(
    directory: Path,
    name: str,
    role: Role,
    hosts: list[str] | tuple[str, ...] = (),
    *,
    days: int = LEAF_DAYS,
    force: bool = False,
    not_before: dt.datetime | None = None,
) -> IssuedFiles:
    """Issues ``<name>.crt``/``<name>.key`` in ``directory``, signed by its CA."""
    check_name(name)
    ca_cert, ca_key, cluster = load_ca(directory)
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    if name == "ca":
        raise InvalidArgument("'ca' is reserved for the cluster CA; choose another name")
    if cert_path.exists() and not force:
        raise AlreadyExists(f"{cert_path} exists; pass --force to replace it")
    identity = Identity(cluster, role, name)
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(identity.uri)]
    if role is Role.NODE:
        sans.append(x509.DNSName(node_dns_name(cluster)))
    sans.extend(_host_san(h) for h in hosts)
    key = ec.generate_private_key(ec.SECP256R1())
    start = not_before or (_utcnow() - dt.timedelta(minutes=5))
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if role is Role.NODE:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "p2pagent"),
                    x509.NameAttribute(NameOID.COMMON_NAME, name),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write_private(key_path, _key_pem(key))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return IssuedFiles(cert_path, key_path, identity)


def identity_of(cert: x509.Certificate) -> Identity:
    """The SPIFFE identity in a certificate's URI SAN."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise InvalidArgument("certificate has no subject alternative names") from None
    uris = list(san.get_values_for_type(x509.UniformResourceIdentifier))
    spiffe = [u for u in uris if u.startswith("spiffe://")]
    if len(spiffe) != 1:
        raise InvalidArgument("certificate must carry exactly one spiffe:// URI SAN")
    return parse(spiffe[0])
