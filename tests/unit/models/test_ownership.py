"""Who may delete a version or publish a new version of a model: its owner or an admin; a
refusal names the owner."""

from __future__ import annotations

import io

import pytest

from p2pagent.errors import PermissionDenied
from p2pagent.identity.spiffe import Identity, Role
from p2pagent.models.manifest import Manifest, build_manifest
from p2pagent.models.ownership import check_may_delete, check_may_publish

ALICE = Identity("test", Role.PUBLISHER, "alice")
BOB = Identity("test", Role.PUBLISHER, "bob")
ADMIN = Identity("test", Role.ADMIN, "root-admin")


def version(owner: str, name: str = "m") -> Manifest:
    return build_manifest(
        name, "safetensors", io.BytesIO(b"x" * 100), version=1, created_unix=1.0,
        chunk_size=4096, owner=owner,
    )  # fmt: skip


def test_an_owner_may_delete_its_own_versions() -> None:
    check_may_delete(ALICE, [version(ALICE.uri), version(ALICE.uri, "n")])


def test_another_publisher_is_refused_with_the_owner_named() -> None:
    with pytest.raises(PermissionDenied, match="belongs to spiffe://test/publisher/alice"):
        check_may_delete(BOB, [version(ALICE.uri)])
    # One foreign version among several refuses them all (nothing is deleted).
    with pytest.raises(PermissionDenied):
        check_may_delete(BOB, [version(BOB.uri), version(ALICE.uri)])


def test_a_version_without_an_owner_is_for_admins_only() -> None:
    with pytest.raises(PermissionDenied, match="no recorded owner"):
        check_may_delete(ALICE, [version("")])
    check_may_delete(ADMIN, [version(""), version(ALICE.uri)])


def test_only_the_owner_or_an_admin_publishes_new_versions_of_a_model() -> None:
    check_may_publish(ALICE, "m", [])  # a new name is anyone's
    check_may_publish(ALICE, "m", [version(ALICE.uri)])
    with pytest.raises(
        PermissionDenied, match="model 'm' belongs to spiffe://test/publisher/alice"
    ):
        check_may_publish(BOB, "m", [version(ALICE.uri)])
    with pytest.raises(PermissionDenied, match="no recorded owner"):
        check_may_publish(BOB, "m", [version("")])
    check_may_publish(ADMIN, "m", [version(ALICE.uri), version("")])
