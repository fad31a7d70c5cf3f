"""Who may delete a model version: its owner, or an admin (pure).

A version's owner is the SPIFFE URI of the identity that published it, recorded in its
manifest (so every node reads the same owner, and it cannot change without changing the
version's id). The guard's authorization table decides which roles may call DeleteModel at
all; this is the per-version rule on top of it.
"""

from __future__ import annotations

from collections.abc import Iterable

from p2pagent.errors import PermissionDenied
from p2pagent.identity.spiffe import Identity, Role
from p2pagent.models.manifest import Manifest


def check_may_delete(caller: Identity, versions: Iterable[Manifest]) -> None:
    """Refuses (PermissionDenied naming the owner) when ``caller`` may not delete every one of
    ``versions``; nothing is deleted then. An admin may delete any version; anyone else only
    the versions it published (a version without a recorded owner: admins only)."""
    if caller.role is Role.ADMIN:
        return
    for m in versions:
        if m.owner != caller.uri:
            owner = m.owner or "no recorded owner (published before owners were recorded)"
            raise PermissionDenied(
                f"model {m.name!r} version {m.manifest_id[:12]} belongs to {owner}; "
                f"{caller.uri} may delete only the models it published (an admin may delete any)"
            )
