"""Model versions held here, made runnable by name in the inference engine's ``ModelCache``.

The models driver decides which versions this node holds; this module decides what the
inference engine sees of them:

- the newest complete version of each model is registered under the model's name
  (``make_loadable``, called after every pull and reconciliation; an older version never
  replaces a newer one);
- a pinned version (a manifest id, or a prefix of at least 8 hex digits, as ``models ls``
  shows) is registered as ``name@<manifest id>`` beside the newest (``ensure_loadable``),
  pulled first when this node does not hold it;
- a dropped version is unregistered under every name it had (``forget``).

Only verified bytes reach the loader: a version is registered with the file ``assemble``
materialises, which checks every chunk and the whole-file hash first. Names served from a
local file on this node (``reserved_names``) are left alone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from p2pagent.errors import InvalidArgument, NotFound
from p2pagent.inference.formats import ModelFormat
from p2pagent.inference.spec import ModelSpec
from p2pagent.models.manifest import Manifest
from p2pagent.models.registry import Entry

if TYPE_CHECKING:
    from p2pagent.inference.cache import ModelCache

log = logging.getLogger(__name__)

#: Shortest manifest-id prefix accepted as a pinned version.
MIN_VERSION_PREFIX = 8


def spec_of(manifest: Manifest) -> ModelSpec | None:
    """The inference spec in a manifest's metadata; None when it has none (not loadable)."""
    if not manifest.metadata:
        return None
    return ModelSpec.from_dict(manifest.metadata)


def serving_spec(name: str, fmt: ModelFormat, metadata: Mapping[str, Any]) -> ModelSpec:
    """The spec a node serves an upload with; InvalidArgument naming what is missing (a node
    refuses an upload it could not serve, and the client refuses it before sending it)."""
    if not metadata:
        raise InvalidArgument(
            f"model {name!r} has no metadata: a node needs its input and output ports "
            "(name, dtype, shape; and an architecture for safetensors) to serve it. Pass "
            "--metadata FILE (a ModelSpec JSON), or put <stem>.metadata.json beside the file"
        )
    spec = ModelSpec.from_dict(metadata)  # InvalidArgument naming the bad field
    if fmt is ModelFormat.SAFETENSORS and not spec.architecture:
        raise InvalidArgument(
            f"model {name!r}: safetensors weights need an architecture in the metadata "
            "(a name in the nodes' architecture registry, such as 'mlp'); a node runs no "
            "code from a safetensors file"
        )
    if fmt is ModelFormat.HF_FOLDER:
        task = spec.arch_config.get("task")
        if not spec.architecture or not isinstance(task, str) or "files" not in spec.arch_config:
            raise InvalidArgument(
                f"model {name!r}: a folder needs the metadata its config files give (an "
                "architecture, a task and the file list): push the folder with p2pagentctl "
                "models push DIR or Client.publish(DIR)"
            )
    return spec


def full_manifest_id(name: str, version: str, known: list[str]) -> str:
    """The manifest id a pinned ``version`` names among the ``known`` ids of ``name``: itself
    (a full id), or the one id it prefixes. InvalidArgument / NotFound saying what to give."""
    if len(version) == 64:
        return version
    if len(version) < MIN_VERSION_PREFIX or not all(c in "0123456789abcdef" for c in version):
        raise InvalidArgument(
            f"model version {version!r} is neither a manifest id nor a prefix of at least "
            f"{MIN_VERSION_PREFIX} lowercase hex digits; see p2pagentctl models ls"
        )
    ids = [i for i in known if i.startswith(version)]
    if len(ids) > 1:
        raise InvalidArgument(f"model version {version!r} of {name!r} is ambiguous; give more")
    if not ids:
        raise NotFound(
            f"model {name!r} has no version {version}; known: {[i[:12] for i in known] or 'none'}"
        )
    return ids[0]


class LoadableModels:
    """What of the versions held here the inference cache runs, and under which names."""

    def __init__(
        self,
        node: str,
        cache: ModelCache | None,
        *,
        reserved_names: Callable[[], set[str]],
        assemble: Callable[[Manifest], Awaitable[Path]],
        is_complete: Callable[[str], bool],
        versions: Callable[[str], list[Entry]],
        resolve: Callable[[str, str], Entry],
        pull: Callable[[Entry], Awaitable[Manifest]],
        warm: Callable[[ModelFormat, ModelSpec], None] | None = None,
    ) -> None:
        """``assemble(m)`` materialises a complete version's verified file; ``is_complete``
        says whether this node still holds a version complete; ``versions(name)`` lists the
        registry's versions of a model, ``resolve(name, id)`` finds one (the newest without
        an id), and ``pull(entry)`` makes this node hold it. ``warm(format, spec)`` hears of
        each newest version registered (the node starts its model worker ahead of the first
        request)."""
        self._node = node
        self._cache = cache
        self._reserved = reserved_names
        self._assemble = assemble
        self._is_complete = is_complete
        self._versions = versions
        self._resolve = resolve
        self._pull = pull
        self._warm = warm
        #: cache name -> version registered under it.
        self._loaded: dict[str, Manifest] = {}
        self._lock = asyncio.Lock()

    async def make_loadable(self, m: Manifest) -> None:
        """Registers the version in the inference cache under its name, if it is newer.

        Serialised: a caller returns only once the newest version it saw is registered (a
        PullModel answer means Infer by name works at once).
        """
        if self._cache is None or m.name in self._reserved():
            return
        async with self._lock:
            current = self._loaded.get(m.name)
            if current is not None and current.sort_key() >= m.sort_key():
                return
            try:
                spec = spec_of(m)
            except InvalidArgument as e:
                log.warning("models: %s has unusable metadata: %s", m.name, e)
                return
            if spec is None:
                return
            path = await self._assemble(m)
            if not self._is_complete(m.manifest_id):
                return  # dropped meanwhile
            self._cache.register(m.name, path, spec, m.format)
            self._loaded[m.name] = m
            log.info("models: %s (%s) is loadable here", m.name, m.manifest_id[:12])
            if self._warm is not None:
                self._warm(m.format, spec)

    async def ensure_loadable(self, name: str, version: str = "") -> str:
        """For Infer and tasks: the name the inference cache runs ``name`` under, pulling the
        version first when this node does not hold it.

        No ``version``: the newest version, under its own name (a name served from a local
        file, or unknown here, is left for the engine to run or refuse). A pinned ``version``
        runs as ``name@<manifest id>`` beside the newest.
        """
        if not version:
            if self._cache is None or self._cache.serves(name):
                return name
            try:
                entry = self._resolve(name, "")
            except (NotFound, InvalidArgument):
                return name  # let the engine say the model is unknown
            await self._pull(entry)
            return name
        entry, spec = self.pinned(name, version)
        key = f"{name}@{entry.manifest_id}"
        if self._cache is None or self._cache.serves(key):
            return key
        m = await self._pull(entry)
        path = await self._assemble(m)
        self._cache.register(key, path, spec, m.format)
        self._loaded[key] = m  # unregistered with the version when it is dropped
        return key

    def pinned(self, name: str, version: str) -> tuple[Entry, ModelSpec]:
        """The registry's entry of ``name`` at the pinned ``version`` and the spec it is served
        with, without pulling it (the door checks a task against it before journaling it):
        InvalidArgument / NotFound saying what is wrong."""
        if name in self._reserved():
            raise InvalidArgument(
                f"model {name!r} is served from a local file on {self._node}; it has no "
                "versions to pin (leave the version empty)"
            )
        known = [e.manifest_id for e in self._versions(name)]
        entry = self._resolve(name, full_manifest_id(name, version, known))
        spec = spec_of(entry.manifest)
        if spec is None:
            raise InvalidArgument(f"model {name!r} version {version} has no input/output metadata")
        return entry, spec

    def forget(self, manifest_id: str) -> None:
        """Unregisters a dropped version under every name it runs as."""
        if self._cache is None:
            return
        for name, loaded in list(self._loaded.items()):
            if loaded.manifest_id == manifest_id:
                self._cache.unregister(name)
                del self._loaded[name]
