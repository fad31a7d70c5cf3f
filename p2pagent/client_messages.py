"""Requests the Python client builds and answers it decodes: tensors to and from their wire
form, texts checked as a node checks them, task results raised as our errors."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, TypeVar

from p2pagent._proto import agent_pb2, common_pb2
from p2pagent.errors import InvalidArgument

if TYPE_CHECKING:
    import torch

#: Largest tensor (elements) the client decodes from an answer.
MAX_OUTPUT_ELEMENTS = 1 << 28


def checked_texts(texts: Sequence[str]) -> list[str]:
    """``texts`` checked as a node checks them, before they are sent."""
    from p2pagent.inference.hf.tokenize import check_texts

    if isinstance(texts, str):
        raise InvalidArgument("texts must be a list of strings, not one string")
    check_texts("the model", texts)
    return list(texts)


def encode_inputs(inputs: Mapping[str, torch.Tensor]) -> list[common_pb2.Tensor]:
    from p2pagent.inference import tensors

    if not isinstance(inputs, Mapping):
        raise InvalidArgument("inputs: give a mapping of input name to tensor")
    return [tensors.to_proto(name, t) for name, t in inputs.items()]


def decode_outputs(outputs: Sequence[common_pb2.Tensor]) -> dict[str, torch.Tensor]:
    from p2pagent.inference import tensors

    decoded = tensors.many_from_proto(outputs, MAX_OUTPUT_ELEMENTS)
    if isinstance(decoded, dict):
        return decoded
    return {str(i): t for i, t in enumerate(decoded)}


def task_result(event: agent_pb2.TaskEvent) -> dict[str, torch.Tensor]:
    if event.kind == agent_pb2.TaskEvent.KIND_FAILED:
        from p2pagent.tasks.wire import error_from_code

        raise error_from_code(event.error_code, f"task {event.task_id}: {event.error_message}")
    return decode_outputs(event.outputs)


def infer_stream_request(
    model: str, inputs: list[common_pb2.Tensor], version: str, timeout_s: float
) -> Callable[[int], agent_pb2.InferStreamRequest]:
    """The InferStream message of one call, given the request id its stream assigns."""

    def build(request_id: int) -> agent_pb2.InferStreamRequest:
        return agent_pb2.InferStreamRequest(
            request_id=request_id,
            model=model,
            inputs=inputs,
            model_version=version,
            timeout_s=timeout_s,
        )

    return build


def infer_stream_cancel(request_id: int) -> agent_pb2.InferStreamRequest:
    return agent_pb2.InferStreamRequest(request_id=request_id, cancel=True)


def submit_stream_request(
    request: agent_pb2.SubmitRequest,
) -> Callable[[int], agent_pb2.SubmitStreamRequest]:
    """The SubmitStream message of a built SubmitRequest, given its stream's request id."""

    def build(request_id: int) -> agent_pb2.SubmitStreamRequest:
        return agent_pb2.SubmitStreamRequest(
            request_id=request_id,
            model=request.model,
            inputs=request.inputs,
            priority=request.priority,
            deadline_s=request.deadline_s,
            model_version=request.model_version,
        )

    return build


def submit_stream_cancel(request_id: int) -> agent_pb2.SubmitStreamRequest:
    return agent_pb2.SubmitStreamRequest(request_id=request_id, cancel=True)


def submit_request(
    model: str, inputs: Mapping[str, torch.Tensor], priority: int, deadline_s: float, version: str
) -> agent_pb2.SubmitRequest:
    return agent_pb2.SubmitRequest(
        model=model,
        inputs=encode_inputs(inputs),
        priority=priority,
        deadline_s=deadline_s,
        model_version=version,
    )


SetRequest = TypeVar("SetRequest", agent_pb2.SetAddRequest, agent_pb2.SetRemoveRequest)


def write_options(durable: bool) -> agent_pb2.WriteOptions:
    return agent_pb2.WriteOptions(durable=durable)


def set_request(
    kind: type[SetRequest], namespace: str, key: str, elements: Sequence[bytes], durable: bool
) -> SetRequest:
    """A SetAddRequest or SetRemoveRequest (the same fields)."""
    return kind(
        namespace=namespace, key=key, elements=list(elements), options=write_options(durable)
    )
