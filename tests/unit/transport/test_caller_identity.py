"""The caller's identity as the guard reads it on every call: the SPIFFE URI among the
certificate's subject alternative names, parsed once per distinct set of names."""

from __future__ import annotations

from typing import Any

import pytest

from p2pagent import errors
from p2pagent.identity.spiffe import Identity, Role
from p2pagent.transport import guard
from p2pagent.transport.guard import caller_identity


class Context:
    """What ``caller_identity`` reads of a grpc.aio ServicerContext."""

    def __init__(self, *names: bytes) -> None:
        self.names = list(names) or None  # grpc answers None for a peer without identities

    def peer_identities(self) -> list[bytes] | None:
        return self.names


def ctx(*names: bytes) -> Any:
    return Context(*names)


def test_the_spiffe_name_among_the_certificates_names_is_the_identity() -> None:
    found = caller_identity(ctx(b"node.c1.p2pagent", b"spiffe://c1/node/n7"))
    assert found == Identity("c1", Role.NODE, "n7")


@pytest.mark.parametrize(
    ("names", "says"),
    [
        ((), "no valid spiffe:// identity"),
        ((b"node.c1.p2pagent",), "no valid spiffe:// identity"),
        ((b"spiffe://c1/root/n7",), "unknown role 'root'.*client, publisher|node, admin"),
        ((b"spiffe://c1/node/../etc",), "identity is refused: SPIFFE identity must be"),
    ],
    ids=["no names", "no spiffe name", "unknown role", "bad name"],
)
def test_a_certificate_without_a_valid_spiffe_name_is_refused(
    names: tuple[bytes, ...], says: str
) -> None:
    with pytest.raises(errors.PermissionDenied, match=says):
        caller_identity(ctx(*names))
    with pytest.raises(errors.PermissionDenied):  # and again: refusals are not remembered
        caller_identity(ctx(*names))


def test_each_set_of_names_is_parsed_once_and_the_memory_is_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    parses: list[str] = []
    real_parse = guard.parse

    def counting(uri: str) -> Identity:
        parses.append(uri)
        return real_parse(uri)

    monkeypatch.setattr(guard, "parse", counting)
    monkeypatch.setattr(guard, "MAX_CACHED_IDENTITIES", 3)
    monkeypatch.setattr(guard, "_parsed", {})
    a = [caller_identity(ctx(b"spiffe://c1/client/alice")) for _ in range(5)]
    assert parses == ["spiffe://c1/client/alice"] and a[0] == a[-1]
    for name in ["b", "c", "d", "e"]:
        caller_identity(ctx(f"spiffe://c1/client/{name}".encode()))
    assert len(guard._parsed) <= 3
    # A different certificate is never answered from another one's entry.
    assert caller_identity(ctx(b"spiffe://c2/node/alice")) == Identity("c2", Role.NODE, "alice")
