"""The node-to-node ``Peer`` service: thin handlers that hand payloads to each capability's
driver. Only node identities get here (see transport.guard).

Every Peer request is size-checked before it is decoded (``request_limits``, enforced by the
guard on the raw bytes): decoding is what costs memory, up to ~70 times the size for msgpack
of small nested arrays, so even a compromised node cannot make this one decode more than its
method's bound. The payload decoders check again, on answers as well as requests."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import grpc

from p2pagent._proto import peer_pb2_grpc
from p2pagent.api.generation import GenerationNode, GenerationPeerApi
from p2pagent.api.membership import MembershipNode, MembershipPeerApi
from p2pagent.api.models import ModelsNode, ModelsPeerApi
from p2pagent.api.state import StateNode, StatePeerApi
from p2pagent.api.tasks import TasksNode, TasksPeerApi
from p2pagent.api.training import TrainingNode, TrainingPeerApi
from p2pagent.membership.codec import MAX_GOSSIP_BYTES, MAX_PUSH_PULL_BYTES
from p2pagent.state.codec import RECEIVE_SLACK_BYTES
from p2pagent.tasks import admission
from p2pagent.tasks.admission import request_limit, result_limit
from p2pagent.tasks.wire import MAX_REPORT_BYTES
from p2pagent.training.wire import CHUNK_BYTES, HEADER_BYTES
from p2pagent.transport.wirescan import count_field

if TYPE_CHECKING:
    from p2pagent.config import Config


class PeerNode(
    MembershipNode, StateNode, ModelsNode, TasksNode, TrainingNode, GenerationNode, Protocol
):
    """What the Peer service needs of the node: each capability's part."""


Ctx = grpc.aio.ServicerContext[Any, Any]

PEER = "/p2pagent.v1.PeerService/"
AGENT = "/p2pagent.v1.AgentService/"
#: Room for an Envelope's own fields around its payload.
ENVELOPE_BYTES = 64
#: A FetchChunks or Steal request: ids, a few thousand chunk indices or model names.
SMALL_REQUEST_BYTES = 256 * 1024
#: A relayed Generate: its prompt (text, ids or chat), a few times any model's context in
#: bytes; the peer's engine refuses a prompt longer than the context anyway.
RELAY_REQUEST_BYTES = 8 * 1024 * 1024


def request_limits(config: Config, state_message_bytes: int) -> dict[str, tuple[int, str]]:
    """Method -> (most bytes of its request, the setting or bound that says so), for every
    Peer method and the public calls that carry task inputs. ``state_message_bytes``: the
    node's effective ``state.max_message_bytes``. Methods not listed get the transport's
    ``max_message_bytes``."""
    tasks = (request_limit(config.tasks), "tasks.max_payload_bytes")
    return {
        PEER + "Gossip": (MAX_GOSSIP_BYTES + ENVELOPE_BYTES, "membership.codec.MAX_GOSSIP_BYTES"),
        PEER + "PushPull": (
            MAX_PUSH_PULL_BYTES + ENVELOPE_BYTES,
            "membership.codec.MAX_PUSH_PULL_BYTES",
        ),
        PEER + "Replicate": (
            state_message_bytes + RECEIVE_SLACK_BYTES + ENVELOPE_BYTES,
            "state.max_message_bytes",
        ),
        PEER + "Load": (MAX_REPORT_BYTES + ENVELOPE_BYTES, "tasks.wire.MAX_REPORT_BYTES"),
        PEER + "FetchChunks": (SMALL_REQUEST_BYTES, "api.peer.SMALL_REQUEST_BYTES"),
        PEER + "Steal": (SMALL_REQUEST_BYTES, "api.peer.SMALL_REQUEST_BYTES"),
        PEER + "GenerationLoad": (SMALL_REQUEST_BYTES, "api.peer.SMALL_REQUEST_BYTES"),
        PEER + "GenerateRelay": (RELAY_REQUEST_BYTES, "api.peer.RELAY_REQUEST_BYTES"),
        PEER + "Assign": tasks,
        PEER + "Complete": (result_limit(config.tasks), "tasks.max_result_bytes"),
        AGENT + "Submit": tasks,
        AGENT + "SubmitAndWait": tasks,
        AGENT + "Infer": tasks,
        AGENT + "InferStream": tasks,
        AGENT + "SubmitStream": tasks,
        PEER + "AverageParts": (CHUNK_BYTES + HEADER_BYTES, "training.wire.CHUNK_BYTES"),
        AGENT + "Average": (CHUNK_BYTES + HEADER_BYTES, "training.wire.CHUNK_BYTES"),
    }


#: Field numbers of the repeated tensors of the requests that carry them (agent.proto
#: SubmitRequest/InferRequest.inputs, peer.proto CompleteRequest.outputs).
_INPUTS_FIELD = 2
_OUTPUTS_FIELD = 5


def request_scans() -> dict[str, Callable[[bytes], str | None]]:
    """Method -> a check of its raw request before decoding: the count of its tensors, read
    from the bytes (``transport.wirescan``), so a request of many tiny tensors is refused
    before a protobuf object is made for each."""

    def count(field: int, bound: int, what: str) -> Callable[[bytes], str | None]:
        def scan(data: bytes) -> str | None:
            if len(data) < 2 * (bound + 1):
                return None  # each field takes two bytes or more: no room for more than bound
            return admission.too_many_tensors(count_field(data, field, bound), bound, what)

        return scan

    inputs = count(_INPUTS_FIELD, admission.MAX_INPUT_TENSORS, "input")
    return {
        AGENT + "Submit": inputs,
        AGENT + "SubmitAndWait": inputs,
        AGENT + "Infer": inputs,
        # The stream requests keep the unary ones' field numbers: the same scan reads them.
        AGENT + "InferStream": inputs,
        AGENT + "SubmitStream": inputs,
        PEER + "Complete": count(_OUTPUTS_FIELD, admission.MAX_OUTPUT_TENSORS, "output"),
    }


#: Field number of the request id in the messages of each multiplexed stream (agent.proto
#: InferStreamRequest, SubmitStreamRequest): the guard answers a refused message under it.
MULTIPLEXED_ID_FIELDS = {AGENT + "InferStream": 5, AGENT + "SubmitStream": 6}


class PeerService(
    MembershipPeerApi,
    StatePeerApi,
    ModelsPeerApi,
    TasksPeerApi,
    TrainingPeerApi,
    GenerationPeerApi,
    peer_pb2_grpc.PeerServiceServicer,
):
    """Each capability's handlers live in ``api/<capability>.py``; this class joins them."""

    def __init__(self, node: PeerNode) -> None:
        self._membership_node = self._state_node = self._models_node = self._tasks_node = node
        self._training_node = self._generation_node = node
