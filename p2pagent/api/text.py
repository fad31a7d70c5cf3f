"""Text RPCs of the ``Agent`` service: ``Embed``, ``Classify`` and ``ClassifyTokens`` on a
Hugging Face model folder. Thin: check the texts, make the model loadable here (pulling a
published folder first), tokenize with the folder's own tokenizer, run each text's token ids
as one task through the scheduler, as ``Infer`` does (queued with every other caller's, costed
by its tokens, stolen by an idle peer serving the folder when this node is the busy one;
texts of different lengths share ragged batches wherever they run), shape the answer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import grpc

from p2pagent._proto import agent_pb2, common_pb2
from p2pagent.api.tasks import TasksNode, model_sources
from p2pagent.errors import FailedPrecondition, Internal, InvalidArgument
from p2pagent.inference.hf.folder import CLASSIFICATION, EMBEDDING, TOKEN_CLASSIFICATION
from p2pagent.inference.hf.tokenize import check_texts
from p2pagent.tasks import admission
from p2pagent.tasks.wire import error_from_code
from p2pagent.transport.guard import caller_identity

if TYPE_CHECKING:
    import torch

    from p2pagent.inference.engine import InferenceEngine
    from p2pagent.inference.formats import LoadedModel
    from p2pagent.inference.hf.tokenize import Encoded
    from p2pagent.inference.tensors import HostTensor

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


@dataclass(frozen=True)
class TextRun:
    """Texts run: the model (its text side), each text's tokens, each text's first output
    (one row) and the nodes that ran them (in the order they first appear)."""

    loaded: LoadedModel
    encoded: list[Encoded]
    rows: list[torch.Tensor]
    executors: list[str]

    @property
    def executor(self) -> str:
        """The node that ran the texts; several joined by commas when they were spread."""
        return ",".join(self.executors)


async def run_texts(
    node: TextNode,
    model: str,
    version: str,
    texts: Sequence[str],
    truncate: bool,
    task: str,
    time_remaining: float | None,
    *,
    owner: str = "",
) -> tuple[LoadedModel, list[Encoded], list[torch.Tensor]]:
    """Tokenizes ``texts`` for ``model`` and runs each; returns the model, the encodings and
    each text's first output (one row). ``run_text_tasks`` also says where they ran."""
    run = await run_text_tasks(
        node, model, version, texts, truncate, task, time_remaining, owner=owner
    )
    return run.loaded, run.encoded, run.rows


async def run_text_tasks(
    node: TextNode,
    model: str,
    version: str,
    texts: Sequence[str],
    truncate: bool,
    task: str,
    time_remaining: float | None,
    *,
    owner: str = "",
) -> TextRun:
    """Tokenizes ``texts`` for ``model`` and runs each text as a task (``owner``: the
    caller's identity, for its quotas)."""
    from p2pagent.inference.tensors import from_proto

    if not model:
        raise InvalidArgument("the request names no model: give the model folder's name")
    admission.check_model(model, model_sources(node))
    check_texts(model, texts)
    deadline = None if time_remaining is None else time.monotonic() + time_remaining
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
    names = [p.name for p in loaded.spec.inputs]
    max_elements = node.config.inference.max_tensor_elements

    async def one(enc: Encoded) -> tuple[torch.Tensor, str]:
        request, inputs = token_task(model, version, names, enc.ids)
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        result = await node.tasks.run_inline(request, inputs, left, owner)
        if not result.ok:
            raise error_from_code(result.error_code, result.error_message)
        if not result.outputs:
            raise Internal(f"model {model!r} answered a text with no outputs")
        return from_proto(result.outputs[0], max_elements)[0], result.executor

    results = await asyncio.gather(*(one(e) for e in encoded))
    executors = list(dict.fromkeys(executor for _, executor in results))
    return TextRun(loaded, encoded, [row for row, _ in results], executors)


def token_task(
    model: str, version: str, names: Sequence[str], ids: Sequence[int]
) -> tuple[agent_pb2.InferRequest, dict[str, HostTensor]]:
    """One text's token ids (and its all-ones mask) as an Infer task: the request the
    scheduler carries (and a thief receives) and its inputs, decoded, by port name."""
    import numpy as np

    from p2pagent.inference import dtypes
    from p2pagent.inference.tensors import HostTensor

    int64 = dtypes.BY_NAME["int64"]
    array = np.asarray([ids], dtype="<i8")
    values = {names[0]: array, names[1]: np.ones_like(array)}
    request = agent_pb2.InferRequest(
        model=model,
        model_version=version,
        inputs=[
            common_pb2.Tensor(
                name=n, dtype=common_pb2.DTYPE_INT64, shape=list(a.shape), data=a.tobytes()
            )
            for n, a in values.items()
        ],
    )
    return request, {n: HostTensor(int64, a) for n, a in values.items()}


class TextAgentApi:
    _text_node: TextNode

    async def Embed(self, request: agent_pb2.EmbedRequest, context: Ctx) -> agent_pb2.EmbedResponse:
        run = await run_text_tasks(
            self._text_node, request.model, request.model_version, list(request.texts),
            request.truncate, EMBEDDING, context.time_remaining(),
            owner=caller_identity(context).uri,
        )  # fmt: skip
        return agent_pb2.EmbedResponse(
            embeddings=[agent_pb2.Vector(values=r.tolist()) for r in run.rows],
            tokens=[len(e.ids) for e in run.encoded],
            executor=run.executor,
        )

    async def Classify(
        self, request: agent_pb2.ClassifyRequest, context: Ctx
    ) -> agent_pb2.ClassifyResponse:
        from p2pagent.inference.hf.text import label_scores

        run = await run_text_tasks(
            self._text_node, request.model, request.model_version, list(request.texts),
            request.truncate, CLASSIFICATION, context.time_remaining(),
            owner=caller_identity(context).uri,
        )  # fmt: skip
        assert run.loaded.text is not None
        labels = run.loaded.text.labels
        results = []
        for r in run.rows:
            scores = label_scores(labels, r.tolist())
            results.append(
                agent_pb2.TextScores(
                    scores=[agent_pb2.LabelScore(label=k, score=v) for k, v in scores]
                )
            )
        return agent_pb2.ClassifyResponse(results=results, executor=run.executor)

    async def ClassifyTokens(
        self, request: agent_pb2.ClassifyTokensRequest, context: Ctx
    ) -> agent_pb2.ClassifyTokensResponse:
        from p2pagent.inference.hf.text import entities

        texts = list(request.texts)
        run = await run_text_tasks(
            self._text_node, request.model, request.model_version, texts, request.truncate,
            TOKEN_CLASSIFICATION, context.time_remaining(), owner=caller_identity(context).uri,
        )  # fmt: skip
        assert run.loaded.text is not None
        labels = run.loaded.text.labels
        results = []
        for text, enc, r in zip(texts, run.encoded, run.rows):
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
        return agent_pb2.ClassifyTokensResponse(results=results, executor=run.executor)
