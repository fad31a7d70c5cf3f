from __future__ import annotations

import datetime as dt
import ipaddress
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509

from p2pagent.errors import AlreadyExists, ConfigError, InvalidArgument
from p2pagent.identity import certs, material, spiffe
from p2pagent.identity.spiffe import Role


def _mode(p: Path) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def test_init_ca_writes_p256_ca_with_private_key_0600(tmp_path: Path) -> None:
    path = certs.init_ca(tmp_path, "alpha")
    ca = x509.load_pem_x509_certificate(path.read_bytes())
    assert ca.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert certs.cluster_of_ca(ca) == "alpha"
    assert _mode(tmp_path / "ca.key") == 0o600


def test_init_ca_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    certs.init_ca(tmp_path, "alpha")
    before = (tmp_path / "ca.crt").read_bytes()
    with pytest.raises(AlreadyExists, match="--force"):
        certs.init_ca(tmp_path, "alpha")
    assert (tmp_path / "ca.crt").read_bytes() == before
    certs.init_ca(tmp_path, "beta", force=True)
    assert (tmp_path / "ca.crt").read_bytes() != before


@pytest.mark.parametrize("role", [Role.NODE, Role.CLIENT])
def test_issue_puts_spiffe_identity_and_host_sans(tmp_path: Path, role: Role) -> None:
    certs.init_ca(tmp_path, "alpha")
    issued = certs.issue(tmp_path, "worker-1", role, ["10.0.0.7", "w1.example"])
    cert = x509.load_pem_x509_certificate(issued.cert.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        f"spiffe://alpha/{role.value}/worker-1"
    ]
    assert ipaddress.ip_address("10.0.0.7") in san.get_values_for_type(x509.IPAddress)
    dns = san.get_values_for_type(x509.DNSName)
    assert "w1.example" in dns
    assert ("node.alpha.p2pagent" in dns) == (role is Role.NODE)
    assert _mode(issued.key) == 0o600
    assert certs.identity_of(cert) == spiffe.Identity("alpha", role, "worker-1")
    loaded = material.load(material.TLSPaths.in_dir(tmp_path, "worker-1"))
    assert loaded.identity.uri == f"spiffe://alpha/{role.value}/worker-1"


def test_issue_without_ca_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="certs init"):
        certs.issue(tmp_path, "n1", Role.NODE)


@pytest.mark.parametrize("name", ["", "../x", "a/b", "a b", "-x", "x" * 64, "a..b"])
def test_bad_names_are_refused(tmp_path: Path, name: str) -> None:
    certs.init_ca(tmp_path, "alpha")
    with pytest.raises(InvalidArgument):
        certs.issue(tmp_path, name, Role.NODE)


def test_spiffe_parse_rejects_other_uris() -> None:
    for role in Role:
        assert spiffe.parse(f"spiffe://c/{role.value}/n1").role is role
    for bad in [
        "http://c/node/n1",
        "spiffe://c/root/n1",
        "spiffe://c/node",
        "spiffe://c/node/a/b",
    ]:
        with pytest.raises(InvalidArgument):
            spiffe.parse(bad)


def test_load_reports_each_broken_file(tmp_path: Path) -> None:
    certs.init_ca(tmp_path / "a", "alpha")
    certs.issue(tmp_path / "a", "n1", Role.NODE)
    certs.issue(tmp_path / "a", "n2", Role.NODE)
    certs.init_ca(tmp_path / "b", "alpha")
    good = material.TLSPaths.in_dir(tmp_path / "a", "n1")

    with pytest.raises(ConfigError, match="does not exist"):
        material.load(material.TLSPaths(good.ca, tmp_path / "nope.crt", good.key))
    with pytest.raises(ConfigError, match="does not belong"):
        material.load(material.TLSPaths(good.ca, good.cert, tmp_path / "a" / "n2.key"))
    with pytest.raises(ConfigError, match="not issued by the CA"):
        material.load(material.TLSPaths(tmp_path / "b" / "ca.crt", good.cert, good.key))
    garbage = tmp_path / "garbage.key"
    garbage.write_text("not a key")
    with pytest.raises(ConfigError, match="not an unencrypted PEM key"):
        material.load(material.TLSPaths(good.ca, good.cert, garbage))
    unreadable = tmp_path / "dir.key"
    unreadable.mkdir()
    with pytest.raises(ConfigError, match="cannot read private key"):
        material.load(material.TLSPaths(good.ca, good.cert, unreadable))


def test_expired_certificate_is_refused_at_load(tmp_path: Path) -> None:
    certs.init_ca(tmp_path, "alpha")
    start = dt.datetime.now(dt.UTC) - dt.timedelta(days=10)
    certs.issue(tmp_path, "old", Role.CLIENT, days=1, not_before=start)
    with pytest.raises(ConfigError, match="expired"):
        material.load(material.TLSPaths.in_dir(tmp_path, "old"))


def test_the_cli_issues_each_of_the_four_roles_and_refuses_any_other(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from p2pagent.cli.ctl import main

    assert main(["certs", "init", "--dir", str(tmp_path), "--cluster", "alpha"]) == 0
    for role in ("node", "admin", "publisher", "client"):
        assert main(["certs", "issue", "--dir", str(tmp_path), "--name", f"x-{role}",
                     "--role", role]) == 0  # fmt: skip
        cert = x509.load_pem_x509_certificate((tmp_path / f"x-{role}.crt").read_bytes())
        assert certs.identity_of(cert).role is Role(role)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["certs", "issue", "--dir", str(tmp_path), "--name", "x-root", "--role", "root"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'root'" in err and "publisher" in err
    assert not (tmp_path / "x-root.crt").exists()
