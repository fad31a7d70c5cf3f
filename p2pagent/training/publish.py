"""Train, then serve: the averaged parameters of a run published as a safetensors version of
a named model every K rounds, through the local daemon's ``PublishModel``, so ``Infer`` on
any node serves the mesh's latest model.

Without a leader, one member publishes: the first name of its round's group (every member of
the group computes the same). Versions of a name belong to the identity that published the
first one (``models.ownership``), so the run's first publisher keeps publishing while it is
alive; if another member takes over, its publish is refused until an admin publishes over it.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from p2pagent._proto import agent_pb2, agent_pb2_grpc
from p2pagent.errors import InvalidArgument
from p2pagent.models.upload import UPLOAD_PIECE, upload_header


@dataclass(frozen=True)
class PublishPlan:
    """Publish ``model`` every ``every`` rounds with ``metadata`` (a ModelSpec dict naming a
    registry architecture, e.g. ``architectures.get("mlp").spec(cfg).to_dict()``)."""

    model: str
    every: int
    metadata: Mapping[str, Any]
    replicas: str = "all"

    def __post_init__(self) -> None:
        if self.every < 1:
            raise InvalidArgument("publish every must be at least 1 round")
        if not self.metadata.get("architecture"):
            raise InvalidArgument(
                "published training versions are safetensors: the metadata needs an "
                "architecture from the nodes' registry (such as 'mlp')"
            )


def is_publisher(node: str, group: tuple[str, ...]) -> bool:
    return bool(group) and node == min(group)


def due(plan: PublishPlan, round_no: int) -> bool:
    return (round_no + 1) % plan.every == 0


def write_version(
    folder: Path, params: Mapping[str, npt.NDArray[np.generic]], metadata: Mapping[str, Any]
) -> tuple[Path, Path]:
    """The safetensors file and its metadata JSON beside it."""
    import torch

    from p2pagent.inference import safetensors_io

    weights = folder / "model.safetensors"
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in params.items()}
    safetensors_io.save(tensors, weights, {"architecture": str(metadata["architecture"])})
    meta = folder / "model.metadata.json"
    meta.write_text(json.dumps(dict(metadata), sort_keys=True) + "\n")
    return weights, meta


def _requests(
    path: Path, header: agent_pb2.PublishModelRequest.Header
) -> Iterator[agent_pb2.PublishModelRequest]:
    yield agent_pb2.PublishModelRequest(header=header)
    with path.open("rb") as f:
        while piece := f.read(UPLOAD_PIECE):
            yield agent_pb2.PublishModelRequest(data=piece)


def publish(
    stub: agent_pb2_grpc.AgentServiceStub,
    plan: PublishPlan,
    params: Mapping[str, npt.NDArray[np.generic]],
    timeout: float = 600.0,
) -> agent_pb2.ModelVersion:
    """Publishes ``params`` as a new version of ``plan.model``."""
    with tempfile.TemporaryDirectory(prefix="p2pagent-train-") as tmp:
        weights, meta = write_version(Path(tmp), params, plan.metadata)
        header = upload_header(
            weights, plan.model, format="safetensors", replicas=plan.replicas, metadata=meta
        )
        reply: agent_pb2.PublishModelResponse = stub.PublishModel(
            _requests(weights, header), timeout=timeout
        )
        return reply.version
