"""Who may delete a model version or publish a new version of a model: its owner, or an
admin (pure).

A version's owner is the SPIFFE URI of the identity that published it, recorded in its
manifest (so every node reads the same owner, and it cannot change without changing the
version's id). A model name belongs to the owners of its versions: another publisher may
not add a newer version under it (calls by name run the newest, so that would take the
model over). The guard's authorization table decides which roles may call PublishModel and
DeleteModel at all; these are the per-model rules on top of it. Both read this node's view
of the registry: two publishers pushing one new name to two nodes at the same moment can
both succeed (each then owns its own version).
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


def check_may_publish(caller: Identity, name: str, versions: Iterable[Manifest]) -> None:
    """Refuses (PermissionDenied naming the owner) a new version of ``name`` by ``caller``
    when a published version belongs to someone else; an admin may publish over anyone."""
    if caller.role is Role.ADMIN:
        return
    for m in versions:
        if m.owner != caller.uri:
            owner = m.owner or "no recorded owner (published before owners were recorded)"
            raise PermissionDenied(
                f"model {name!r} belongs to {owner}; {caller.uri} may publish new versions only "
                "of its own models: choose another name (or an admin may publish it)"
            )
