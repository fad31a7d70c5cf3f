"""The model registry's layout in the replicated state (pure: keys and decoding only).

Everything lives in the reserved namespace ``_models`` (public writes to it are refused):

- ``<name>/<manifest_id>``: LWW register holding the version's canonical manifest. Content
  addressed, so two writers of one key always write the same bytes. Deleting the key deletes
  the version cluster-wide: every node that sees the delete drops its local copy.
- ``<name>/<manifest_id>/holders``: add-wins set of the names of the nodes holding the version
  *complete*. A node adds itself once every chunk is on disk and verified, and removes itself
  when it drops the version (or finds at start that it no longer has it).
- ``<name>/<manifest_id>/partial/<node>``: LWW register, the chunks ``node`` holds while it
  pulls the version (``bitmap``), rewritten as they arrive and deleted once it is a complete
  holder, so pullers fetch from each other (the swarm) rather than all from the publisher.
  Only written by ``node``; readers ignore it when ``node`` is not alive.

Names cannot contain ``/`` (``manifest.check_model_name``), so a key splits unambiguously and a
scan with prefix ``<name>/`` sees exactly one model.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from p2pagent.errors import InvalidArgument, P2PAgentError
from p2pagent.models.manifest import Manifest

NS = "_models"
HOLDERS = "holders"
PARTIAL = "partial"

_ID = re.compile(r"^[0-9a-f]{64}$")


def version_key(name: str, manifest_id: str) -> str:
    return f"{name}/{manifest_id}"


def holders_key(name: str, manifest_id: str) -> str:
    return f"{name}/{manifest_id}/{HOLDERS}"


def partial_prefix(name: str, manifest_id: str) -> str:
    return f"{name}/{manifest_id}/{PARTIAL}/"


def partial_key(name: str, manifest_id: str, node: str) -> str:
    return partial_prefix(name, manifest_id) + node


def parse_partial_key(key: str) -> tuple[str, str, str] | None:
    """``(name, manifest_id, node)`` of a partial-holdings key; None for any other key."""
    parts = key.split("/")
    if len(parts) == 4 and _ID.match(parts[1]) and parts[2] == PARTIAL and parts[3]:
        return parts[0], parts[1], parts[3]
    return None


@dataclass(frozen=True)
class RegistryKey:
    name: str
    manifest_id: str
    holders: bool


def parse_key(key: str) -> RegistryKey | None:
    """The parts of a registry key; None for keys this version does not know (skipped)."""
    parts = key.split("/")
    if len(parts) == 2 and _ID.match(parts[1]):
        return RegistryKey(parts[0], parts[1], False)
    if len(parts) == 3 and _ID.match(parts[1]) and parts[2] == HOLDERS:
        return RegistryKey(parts[0], parts[1], True)
    return None


@dataclass(frozen=True)
class Entry:
    """One version as the registry shows it."""

    manifest: Manifest
    holders: frozenset[str]

    @property
    def manifest_id(self) -> str:
        return self.manifest.manifest_id


def check_manifest_id(manifest_id: str) -> str:
    if not _ID.match(manifest_id):
        raise InvalidArgument(
            f"model version {manifest_id!r} is not a manifest id (64 lowercase hex digits); "
            "see p2pagentctl models ls"
        )
    return manifest_id


class ManifestCache:
    """Decoded manifests by id: a registry snapshot re-reads only new ones.

    Manifests are immutable and checked against their id, so a decoded one stays valid.
    Values that fail to decode (a newer schema, a peer's bad write) are skipped.
    """

    def __init__(self) -> None:
        self._by_id: dict[str, Manifest] = {}
        self._bad: set[str] = set()

    def decode(self, manifest_id: str, data: bytes) -> Manifest | None:
        m = self._by_id.get(manifest_id)
        if m is not None or manifest_id in self._bad:
            return m
        try:
            m = Manifest.decode(data, expected_id=manifest_id)
        except P2PAgentError:
            self._bad.add(manifest_id)
            return None
        self._by_id[manifest_id] = m
        return m


def build_entries(
    manifests: Mapping[str, tuple[str, bytes]],
    holders: Mapping[str, Iterable[bytes]],
    cache: ManifestCache,
) -> list[Entry]:
    """Entries from scanned values: ``manifests`` id -> (name, bytes), ``holders`` id -> set.

    A version whose manifest key is absent (deleted) is not listed, whatever its holders set
    still says; a manifest whose name disagrees with its key is skipped.
    """
    out = []
    for mid, (name, data) in manifests.items():
        m = cache.decode(mid, data)
        if m is None or m.name != name:
            continue
        nodes = frozenset(h.decode("utf-8", "replace") for h in holders.get(mid, ()))
        out.append(Entry(m, nodes))
    out.sort(key=lambda e: (e.manifest.name, e.manifest.sort_key()))
    return out
