from p2pagent._proto import agent_pb2 as _agent_pb2
from p2pagent._proto import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FetchChunksRequest(_message.Message):
    __slots__ = ("manifest_id", "indices")
    MANIFEST_ID_FIELD_NUMBER: _ClassVar[int]
    INDICES_FIELD_NUMBER: _ClassVar[int]
    manifest_id: str
    indices: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, manifest_id: _Optional[str] = ..., indices: _Optional[_Iterable[int]] = ...) -> None: ...

class FetchChunksResponse(_message.Message):
    __slots__ = ("index", "data")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    index: int
    data: bytes
    def __init__(self, index: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class TaskSpec(_message.Message):
    __slots__ = ("task_id", "origin", "model", "inputs", "priority", "deadline_unix", "est_cost_s", "attempt", "model_version")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_UNIX_FIELD_NUMBER: _ClassVar[int]
    EST_COST_S_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    origin: str
    model: str
    inputs: _containers.RepeatedCompositeFieldContainer[_common_pb2.Tensor]
    priority: int
    deadline_unix: float
    est_cost_s: float
    attempt: int
    model_version: str
    def __init__(self, task_id: _Optional[str] = ..., origin: _Optional[str] = ..., model: _Optional[str] = ..., inputs: _Optional[_Iterable[_Union[_common_pb2.Tensor, _Mapping]]] = ..., priority: _Optional[int] = ..., deadline_unix: _Optional[float] = ..., est_cost_s: _Optional[float] = ..., attempt: _Optional[int] = ..., model_version: _Optional[str] = ...) -> None: ...

class StealRequest(_message.Message):
    __slots__ = ("thief", "max_tasks", "models", "thief_speed")
    THIEF_FIELD_NUMBER: _ClassVar[int]
    MAX_TASKS_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    THIEF_SPEED_FIELD_NUMBER: _ClassVar[int]
    thief: str
    max_tasks: int
    models: _containers.RepeatedScalarFieldContainer[str]
    thief_speed: float
    def __init__(self, thief: _Optional[str] = ..., max_tasks: _Optional[int] = ..., models: _Optional[_Iterable[str]] = ..., thief_speed: _Optional[float] = ...) -> None: ...

class StealResponse(_message.Message):
    __slots__ = ("tasks",)
    TASKS_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[TaskSpec]
    def __init__(self, tasks: _Optional[_Iterable[_Union[TaskSpec, _Mapping]]] = ...) -> None: ...

class AssignRequest(_message.Message):
    __slots__ = ("task",)
    TASK_FIELD_NUMBER: _ClassVar[int]
    task: TaskSpec
    def __init__(self, task: _Optional[_Union[TaskSpec, _Mapping]] = ...) -> None: ...

class AssignResponse(_message.Message):
    __slots__ = ("accepted", "reason")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    reason: str
    def __init__(self, accepted: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class CompleteRequest(_message.Message):
    __slots__ = ("task_id", "executor", "attempt", "ok", "outputs", "error_code", "error_message", "compute_s")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    EXECUTOR_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_S_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    executor: str
    attempt: int
    ok: bool
    outputs: _containers.RepeatedCompositeFieldContainer[_common_pb2.Tensor]
    error_code: str
    error_message: str
    compute_s: float
    def __init__(self, task_id: _Optional[str] = ..., executor: _Optional[str] = ..., attempt: _Optional[int] = ..., ok: _Optional[bool] = ..., outputs: _Optional[_Iterable[_Union[_common_pb2.Tensor, _Mapping]]] = ..., error_code: _Optional[str] = ..., error_message: _Optional[str] = ..., compute_s: _Optional[float] = ...) -> None: ...

class CompleteResponse(_message.Message):
    __slots__ = ("accepted",)
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    def __init__(self, accepted: _Optional[bool] = ...) -> None: ...

class AveragePartsRequest(_message.Message):
    __slots__ = ("run", "round", "group", "phase", "slice_index", "weight", "spec", "dtype", "length", "data")
    RUN_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    SLICE_INDEX_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    run: str
    round: int
    group: str
    phase: int
    slice_index: int
    weight: float
    spec: str
    dtype: str
    length: int
    data: bytes
    def __init__(self, run: _Optional[str] = ..., round: _Optional[int] = ..., group: _Optional[str] = ..., phase: _Optional[int] = ..., slice_index: _Optional[int] = ..., weight: _Optional[float] = ..., spec: _Optional[str] = ..., dtype: _Optional[str] = ..., length: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class AveragePartsResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GenerationLoadRequest(_message.Message):
    __slots__ = ("model", "model_version")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    model_version: str
    def __init__(self, model: _Optional[str] = ..., model_version: _Optional[str] = ...) -> None: ...

class GenerationLoadResponse(_message.Message):
    __slots__ = ("serves", "loaded", "running", "waiting", "max_running", "reserved_fraction")
    SERVES_FIELD_NUMBER: _ClassVar[int]
    LOADED_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    WAITING_FIELD_NUMBER: _ClassVar[int]
    MAX_RUNNING_FIELD_NUMBER: _ClassVar[int]
    RESERVED_FRACTION_FIELD_NUMBER: _ClassVar[int]
    serves: bool
    loaded: bool
    running: int
    waiting: int
    max_running: int
    reserved_fraction: float
    def __init__(self, serves: _Optional[bool] = ..., loaded: _Optional[bool] = ..., running: _Optional[int] = ..., waiting: _Optional[int] = ..., max_running: _Optional[int] = ..., reserved_fraction: _Optional[float] = ...) -> None: ...

class GenerateRelayRequest(_message.Message):
    __slots__ = ("request", "origin")
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    request: _agent_pb2.GenerateRequest
    origin: str
    def __init__(self, request: _Optional[_Union[_agent_pb2.GenerateRequest, _Mapping]] = ..., origin: _Optional[str] = ...) -> None: ...

class GenerateRelayResponse(_message.Message):
    __slots__ = ("response",)
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    response: _agent_pb2.GenerateResponse
    def __init__(self, response: _Optional[_Union[_agent_pb2.GenerateResponse, _Mapping]] = ...) -> None: ...
