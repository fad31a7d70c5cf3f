"""SPIFFE identities: ``spiffe://<cluster>/<role>/<name>``.

The identity lives in the certificate's URI SAN. Its role decides which services a caller may
use: nodes may call ``Peer`` and ``Agent``; clients may call ``Agent`` only.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from enum import Enum

from p2pagent.errors import InvalidArgument

# Names become file names and URI path segments: keep them boring.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


class Role(Enum):
    """What an identity may do; the guard's authorization table maps each method to roles."""

    NODE = "node"
    ADMIN = "admin"
    PUBLISHER = "publisher"
    CLIENT = "client"


@dataclass(frozen=True)
class Identity:
    cluster: str
    role: Role
    name: str

    @functools.cached_property
    def uri(self) -> str:
        # Cached: the guard keeps one Identity per certificate, and every call reads its uri
        # several times (authorization, open streams, quotas).
        return f"spiffe://{self.cluster}/{self.role.value}/{self.name}"

    def __str__(self) -> str:
        return self.uri


def check_name(name: str, what: str = "name") -> str:
    """Returns ``name`` if it is a valid node, client or cluster name, else raises."""
    if not _NAME.match(name) or ".." in name:
        raise InvalidArgument(
            f"invalid {what} {name!r}: use 1-63 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def parse(uri: str) -> Identity:
    """Parses ``spiffe://cluster/role/name``; raises InvalidArgument for anything else."""
    prefix = "spiffe://"
    if not uri.startswith(prefix):
        raise InvalidArgument(f"not a SPIFFE identity: {uri!r}")
    parts = uri[len(prefix) :].split("/")
    if len(parts) != 3:
        raise InvalidArgument(f"SPIFFE identity must be spiffe://<cluster>/<role>/<name>: {uri!r}")
    cluster, role, name = parts
    try:
        role_enum = Role(role)
    except ValueError:
        raise InvalidArgument(
            f"unknown role {role!r} in {uri!r}: expected one of " + ", ".join(r.value for r in Role)
        ) from None
    return Identity(check_name(cluster, "cluster"), role_enum, check_name(name))
