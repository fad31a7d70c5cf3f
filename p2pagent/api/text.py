"""Text RPCs of the ``Agent`` service: ``Embed``, ``Classify`` and ``ClassifyTokens`` on a
Hugging Face model folder. Thin: check the texts, make the model loadable here (pulling a
published folder first), tokenize with the folder's own tokenizer, run each text as one
request of the inference engine (so texts of different lengths share ragged batches with
every other caller's), shape the answer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import grpc

from p2pagent._proto import agent_pb2
from p2pagent.api.tasks import TasksNode, model_sources
from p2pagent.errors import FailedPrecondition, InvalidArgument
from p2pagent.inference.hf.folder import CLASSIFICATION, EMBEDDING, TOKEN_CLASSIFICATION
from p2pagent.inference.hf.tokenize import check_texts
from p2pagent.tasks import admission

if TYPE_CHECKING:
    import torch

    from p2pagent.inference.engine import InferenceEngine
    from p2pagent.inference.formats import LoadedModel
    from p2pagent.inference.hf.tokenize import Encoded

Ctx = grpc.aio.ServicerContext[Any, Any]

#: Which RPC serves which task, for the message that names the right one.
_RPC_OF_TASK = {
    EMBEDDING: "Embed",
    CLASSIFICATION: "Classify",
    TOKEN_CLASSIFICATION: "ClassifyTokens",
}


class TextNode(TasksNode, Protocol):
    """What the text handlers need of the node: the task door's view of models, its
    engine and its name."""

    @property
    def name(self) -> str: ...

    @property
    def engine(self) -> InferenceEngine: ...


async def run_texts(
    node: TextNode,
    model: str,
    version: str,
    texts: Sequence[str],
    truncate: bool,
    task: str,
    time_remaining: float | None,
) -> tuple[LoadedModel, list[Encoded], list[torch.Tensor]]:
    """Tokenizes ``texts`` for ``model`` and runs each; returns the model, the encodings and
    each text's first output (one row)."""
    from p2pagent.inference import dtypes
    from p2pagent.inference.tensors import HostTensor

    if not model:
        raise InvalidArgument("the request names no model: give the model folder's name")
    admission.check_model(model, model_sources(node))
    check_texts(model, texts)
    deadline = None if time_remaining is None else time.monotonic() + time_remaining
    name = model
    name = await node.models.ensure_loadable(model, version)
    cache = node.engine.cache
    loaded = cache.resident_model(name) or await cache.get(name)
    side = loaded.text
    if side is None:
        raise FailedPrecondition(
            f"model {model!r} takes tensors, not text: call Infer (text calls serve Hugging "
            "Face model folders pushed with p2pagentctl models push DIR)"
        )
    if side.task != task:
        raise FailedPrecondition(
            f"model {model!r} is a {side.task} model: call {_RPC_OF_TASK[side.task]}, not "
            f"{_RPC_OF_TASK[task]}"
        )
    encoded = side.tokenizer.encode(model, texts, truncate=truncate)
    int64 = dtypes.BY_NAME["int64"]

    async def one(enc: Encoded) -> torch.Tensor:
        import numpy as np

        ids = np.asarray([enc.ids], dtype=np.int64)
        inputs = [HostTensor(int64, ids), HostTensor(int64, np.ones_like(ids))]
        outputs = await node.engine.infer(name, inputs, deadline)
        return next(iter(outputs.values()))[0]

    results = await asyncio.gather(*(one(e) for e in encoded))
    return loaded, encoded, list(results)


class TextAgentApi:
    _text_node: TextNode

    async def Embed(self, request: agent_pb2.EmbedRequest, context: Ctx) -> agent_pb2.EmbedResponse:
        _, encoded, rows = await run_texts(
            self._text_node, request.model, request.model_version, list(request.texts),
            request.truncate, EMBEDDING, context.time_remaining(),
        )  # fmt: skip
        return agent_pb2.EmbedResponse(
            embeddings=[agent_pb2.Vector(values=r.tolist()) for r in rows],
            tokens=[len(e.ids) for e in encoded],
            executor=self._text_node.name,
        )

    async def Classify(
        self, request: agent_pb2.ClassifyRequest, context: Ctx
    ) -> agent_pb2.ClassifyResponse:
        from p2pagent.inference.hf.text import label_scores

        loaded, _, rows = await run_texts(
            self._text_node, request.model, request.model_version, list(request.texts),
            request.truncate, CLASSIFICATION, context.time_remaining(),
        )  # fmt: skip
        assert loaded.text is not None
        labels = loaded.text.labels
        results = []
        for r in rows:
            scores = label_scores(labels, r.tolist())
            results.append(
                agent_pb2.TextScores(
                    scores=[agent_pb2.LabelScore(label=k, score=v) for k, v in scores]
                )
            )
        return agent_pb2.ClassifyResponse(results=results, executor=self._text_node.name)

    async def ClassifyTokens(
        self, request: agent_pb2.ClassifyTokensRequest, context: Ctx
    ) -> agent_pb2.ClassifyTokensResponse:
        from p2pagent.inference.hf.text import entities

        texts = list(request.texts)
        loaded, encoded, rows = await run_texts(
            self._text_node, request.model, request.model_version, texts, request.truncate,
            TOKEN_CLASSIFICATION, context.time_remaining(),
        )  # fmt: skip
        assert loaded.text is not None
        labels = loaded.text.labels
        results = []
        for text, enc, r in zip(texts, encoded, rows):
            found = entities(text, enc, labels, r.tolist())
            results.append(
                agent_pb2.TextEntities(
                    entities=[
                        agent_pb2.Entity(
                            label=e.label, score=e.score, start=e.start, end=e.end, text=e.text
                        )
                        for e in found
                    ]
                )
            )
        return agent_pb2.ClassifyTokensResponse(results=results, executor=self._text_node.name)
