from p2pagent._proto import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Consistency(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONSISTENCY_UNSPECIFIED: _ClassVar[Consistency]
    CONSISTENCY_LOCAL: _ClassVar[Consistency]
    CONSISTENCY_PEERS: _ClassVar[Consistency]
    CONSISTENCY_MAJORITY: _ClassVar[Consistency]

class ValueType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VALUE_TYPE_UNSPECIFIED: _ClassVar[ValueType]
    VALUE_TYPE_LWW: _ClassVar[ValueType]
    VALUE_TYPE_MV: _ClassVar[ValueType]
    VALUE_TYPE_COUNTER: _ClassVar[ValueType]
    VALUE_TYPE_SET: _ClassVar[ValueType]
CONSISTENCY_UNSPECIFIED: Consistency
CONSISTENCY_LOCAL: Consistency
CONSISTENCY_PEERS: Consistency
CONSISTENCY_MAJORITY: Consistency
VALUE_TYPE_UNSPECIFIED: ValueType
VALUE_TYPE_LWW: ValueType
VALUE_TYPE_MV: ValueType
VALUE_TYPE_COUNTER: ValueType
VALUE_TYPE_SET: ValueType

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("name", "identity", "address", "version", "device", "uptime_s", "members_alive", "members_total", "incarnation", "queue_length", "running", "completed", "stolen_in", "stolen_out", "state_keys", "models", "placement", "backlog_s", "state_digest", "steal_requests", "batching")
    NAME_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    UPTIME_S_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_ALIVE_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    QUEUE_LENGTH_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    STOLEN_IN_FIELD_NUMBER: _ClassVar[int]
    STOLEN_OUT_FIELD_NUMBER: _ClassVar[int]
    STATE_KEYS_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_FIELD_NUMBER: _ClassVar[int]
    BACKLOG_S_FIELD_NUMBER: _ClassVar[int]
    STATE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    STEAL_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    BATCHING_FIELD_NUMBER: _ClassVar[int]
    name: str
    identity: str
    address: str
    version: str
    device: str
    uptime_s: float
    members_alive: int
    members_total: int
    incarnation: int
    queue_length: int
    running: int
    completed: int
    stolen_in: int
    stolen_out: int
    state_keys: int
    models: _containers.RepeatedScalarFieldContainer[str]
    placement: str
    backlog_s: float
    state_digest: str
    steal_requests: int
    batching: _containers.RepeatedCompositeFieldContainer[ModelBatching]
    def __init__(self, name: _Optional[str] = ..., identity: _Optional[str] = ..., address: _Optional[str] = ..., version: _Optional[str] = ..., device: _Optional[str] = ..., uptime_s: _Optional[float] = ..., members_alive: _Optional[int] = ..., members_total: _Optional[int] = ..., incarnation: _Optional[int] = ..., queue_length: _Optional[int] = ..., running: _Optional[int] = ..., completed: _Optional[int] = ..., stolen_in: _Optional[int] = ..., stolen_out: _Optional[int] = ..., state_keys: _Optional[int] = ..., models: _Optional[_Iterable[str]] = ..., placement: _Optional[str] = ..., backlog_s: _Optional[float] = ..., state_digest: _Optional[str] = ..., steal_requests: _Optional[int] = ..., batching: _Optional[_Iterable[_Union[ModelBatching, _Mapping]]] = ...) -> None: ...

class ModelBatching(_message.Message):
    __slots__ = ("model", "batches", "rows", "tokens", "padded_tokens", "padding_ratio", "mean_queue_s", "mean_batch_rows")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    PADDED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PADDING_RATIO_FIELD_NUMBER: _ClassVar[int]
    MEAN_QUEUE_S_FIELD_NUMBER: _ClassVar[int]
    MEAN_BATCH_ROWS_FIELD_NUMBER: _ClassVar[int]
    model: str
    batches: int
    rows: int
    tokens: int
    padded_tokens: int
    padding_ratio: float
    mean_queue_s: float
    mean_batch_rows: float
    def __init__(self, model: _Optional[str] = ..., batches: _Optional[int] = ..., rows: _Optional[int] = ..., tokens: _Optional[int] = ..., padded_tokens: _Optional[int] = ..., padding_ratio: _Optional[float] = ..., mean_queue_s: _Optional[float] = ..., mean_batch_rows: _Optional[float] = ...) -> None: ...

class MembersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class MembersResponse(_message.Message):
    __slots__ = ("members",)
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    members: _containers.RepeatedCompositeFieldContainer[_common_pb2.Member]
    def __init__(self, members: _Optional[_Iterable[_Union[_common_pb2.Member, _Mapping]]] = ...) -> None: ...

class InferRequest(_message.Message):
    __slots__ = ("model", "inputs", "model_version", "priority")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    model: str
    inputs: _containers.RepeatedCompositeFieldContainer[_common_pb2.Tensor]
    model_version: str
    priority: int
    def __init__(self, model: _Optional[str] = ..., inputs: _Optional[_Iterable[_Union[_common_pb2.Tensor, _Mapping]]] = ..., model_version: _Optional[str] = ..., priority: _Optional[int] = ...) -> None: ...

class InferResponse(_message.Message):
    __slots__ = ("outputs", "executor", "compute_s")
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    EXECUTOR_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_S_FIELD_NUMBER: _ClassVar[int]
    outputs: _containers.RepeatedCompositeFieldContainer[_common_pb2.Tensor]
    executor: str
    compute_s: float
    def __init__(self, outputs: _Optional[_Iterable[_Union[_common_pb2.Tensor, _Mapping]]] = ..., executor: _Optional[str] = ..., compute_s: _Optional[float] = ...) -> None: ...

class SubmitRequest(_message.Message):
    __slots__ = ("model", "inputs", "priority", "deadline_s", "model_version")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_S_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    inputs: _containers.RepeatedCompositeFieldContainer[_common_pb2.Tensor]
    priority: int
    deadline_s: float
    model_version: str
    def __init__(self, model: _Optional[str] = ..., inputs: _Optional[_Iterable[_Union[_common_pb2.Tensor, _Mapping]]] = ..., priority: _Optional[int] = ..., deadline_s: _Optional[float] = ..., model_version: _Optional[str] = ...) -> None: ...

class SubmitAndWaitRequest(_message.Message):
    __slots__ = ("model", "inputs", "priority", "deadline_s", "model_version")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_S_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    inputs: _containers.RepeatedCompositeFieldContainer[_common_pb2.Tensor]
    priority: int
    deadline_s: float
    model_version: str
    def __init__(self, model: _Optional[str] = ..., inputs: _Optional[_Iterable[_Union[_common_pb2.Tensor, _Mapping]]] = ..., priority: _Optional[int] = ..., deadline_s: _Optional[float] = ..., model_version: _Optional[str] = ...) -> None: ...

class SubmitResponse(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    def __init__(self, task_id: _Optional[str] = ...) -> None: ...

class WaitRequest(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    def __init__(self, task_id: _Optional[str] = ...) -> None: ...

class TaskEvent(_message.Message):
    __slots__ = ("task_id", "kind", "node", "at_unix", "outputs", "error_code", "error_message")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[TaskEvent.Kind]
        KIND_QUEUED: _ClassVar[TaskEvent.Kind]
        KIND_RUNNING: _ClassVar[TaskEvent.Kind]
        KIND_DONE: _ClassVar[TaskEvent.Kind]
        KIND_FAILED: _ClassVar[TaskEvent.Kind]
    KIND_UNSPECIFIED: TaskEvent.Kind
    KIND_QUEUED: TaskEvent.Kind
    KIND_RUNNING: TaskEvent.Kind
    KIND_DONE: TaskEvent.Kind
    KIND_FAILED: TaskEvent.Kind
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    AT_UNIX_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    kind: TaskEvent.Kind
    node: str
    at_unix: float
    outputs: _containers.RepeatedCompositeFieldContainer[_common_pb2.Tensor]
    error_code: str
    error_message: str
    def __init__(self, task_id: _Optional[str] = ..., kind: _Optional[_Union[TaskEvent.Kind, str]] = ..., node: _Optional[str] = ..., at_unix: _Optional[float] = ..., outputs: _Optional[_Iterable[_Union[_common_pb2.Tensor, _Mapping]]] = ..., error_code: _Optional[str] = ..., error_message: _Optional[str] = ...) -> None: ...

class WaitResponse(_message.Message):
    __slots__ = ("event",)
    EVENT_FIELD_NUMBER: _ClassVar[int]
    event: TaskEvent
    def __init__(self, event: _Optional[_Union[TaskEvent, _Mapping]] = ...) -> None: ...

class SubmitAndWaitResponse(_message.Message):
    __slots__ = ("event",)
    EVENT_FIELD_NUMBER: _ClassVar[int]
    event: TaskEvent
    def __init__(self, event: _Optional[_Union[TaskEvent, _Mapping]] = ...) -> None: ...

class InferStreamRequest(_message.Message):
    __slots__ = ("model", "inputs", "model_version", "priority", "request_id", "timeout_s", "cancel")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    inputs: _containers.RepeatedCompositeFieldContainer[_common_pb2.Tensor]
    model_version: str
    priority: int
    request_id: int
    timeout_s: float
    cancel: bool
    def __init__(self, model: _Optional[str] = ..., inputs: _Optional[_Iterable[_Union[_common_pb2.Tensor, _Mapping]]] = ..., model_version: _Optional[str] = ..., priority: _Optional[int] = ..., request_id: _Optional[int] = ..., timeout_s: _Optional[float] = ..., cancel: _Optional[bool] = ...) -> None: ...

class InferStreamResponse(_message.Message):
    __slots__ = ("outputs", "executor", "compute_s", "request_id", "error_code", "error_message")
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    EXECUTOR_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_S_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    outputs: _containers.RepeatedCompositeFieldContainer[_common_pb2.Tensor]
    executor: str
    compute_s: float
    request_id: int
    error_code: str
    error_message: str
    def __init__(self, outputs: _Optional[_Iterable[_Union[_common_pb2.Tensor, _Mapping]]] = ..., executor: _Optional[str] = ..., compute_s: _Optional[float] = ..., request_id: _Optional[int] = ..., error_code: _Optional[str] = ..., error_message: _Optional[str] = ...) -> None: ...

class SubmitStreamRequest(_message.Message):
    __slots__ = ("model", "inputs", "priority", "deadline_s", "model_version", "request_id", "cancel")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_S_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    inputs: _containers.RepeatedCompositeFieldContainer[_common_pb2.Tensor]
    priority: int
    deadline_s: float
    model_version: str
    request_id: int
    cancel: bool
    def __init__(self, model: _Optional[str] = ..., inputs: _Optional[_Iterable[_Union[_common_pb2.Tensor, _Mapping]]] = ..., priority: _Optional[int] = ..., deadline_s: _Optional[float] = ..., model_version: _Optional[str] = ..., request_id: _Optional[int] = ..., cancel: _Optional[bool] = ...) -> None: ...

class SubmitStreamResponse(_message.Message):
    __slots__ = ("request_id", "event", "error_code", "error_message")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    event: TaskEvent
    error_code: str
    error_message: str
    def __init__(self, request_id: _Optional[int] = ..., event: _Optional[_Union[TaskEvent, _Mapping]] = ..., error_code: _Optional[str] = ..., error_message: _Optional[str] = ...) -> None: ...

class ListTasksRequest(_message.Message):
    __slots__ = ("limit",)
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    limit: int
    def __init__(self, limit: _Optional[int] = ...) -> None: ...

class TaskInfo(_message.Message):
    __slots__ = ("task_id", "model", "state", "node", "submitted_unix", "finished_unix")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    SUBMITTED_UNIX_FIELD_NUMBER: _ClassVar[int]
    FINISHED_UNIX_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    model: str
    state: str
    node: str
    submitted_unix: float
    finished_unix: float
    def __init__(self, task_id: _Optional[str] = ..., model: _Optional[str] = ..., state: _Optional[str] = ..., node: _Optional[str] = ..., submitted_unix: _Optional[float] = ..., finished_unix: _Optional[float] = ...) -> None: ...

class ListTasksResponse(_message.Message):
    __slots__ = ("tasks", "queue_length", "running", "completed", "stolen_in", "stolen_out")
    TASKS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_LENGTH_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    STOLEN_IN_FIELD_NUMBER: _ClassVar[int]
    STOLEN_OUT_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[TaskInfo]
    queue_length: int
    running: int
    completed: int
    stolen_in: int
    stolen_out: int
    def __init__(self, tasks: _Optional[_Iterable[_Union[TaskInfo, _Mapping]]] = ..., queue_length: _Optional[int] = ..., running: _Optional[int] = ..., completed: _Optional[int] = ..., stolen_in: _Optional[int] = ..., stolen_out: _Optional[int] = ...) -> None: ...

class WriteOptions(_message.Message):
    __slots__ = ("durable", "consistency", "acks")
    DURABLE_FIELD_NUMBER: _ClassVar[int]
    CONSISTENCY_FIELD_NUMBER: _ClassVar[int]
    ACKS_FIELD_NUMBER: _ClassVar[int]
    durable: bool
    consistency: Consistency
    acks: int
    def __init__(self, durable: _Optional[bool] = ..., consistency: _Optional[_Union[Consistency, str]] = ..., acks: _Optional[int] = ...) -> None: ...

class PutRequest(_message.Message):
    __slots__ = ("namespace", "key", "value", "type", "options", "context")
    class ContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    key: str
    value: bytes
    type: ValueType
    options: WriteOptions
    context: _containers.ScalarMap[str, int]
    def __init__(self, namespace: _Optional[str] = ..., key: _Optional[str] = ..., value: _Optional[bytes] = ..., type: _Optional[_Union[ValueType, str]] = ..., options: _Optional[_Union[WriteOptions, _Mapping]] = ..., context: _Optional[_Mapping[str, int]] = ...) -> None: ...

class PutResponse(_message.Message):
    __slots__ = ("version", "acked_by")
    class VersionEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ACKED_BY_FIELD_NUMBER: _ClassVar[int]
    version: _containers.ScalarMap[str, int]
    acked_by: int
    def __init__(self, version: _Optional[_Mapping[str, int]] = ..., acked_by: _Optional[int] = ...) -> None: ...

class GetRequest(_message.Message):
    __slots__ = ("namespace", "key")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    key: str
    def __init__(self, namespace: _Optional[str] = ..., key: _Optional[str] = ...) -> None: ...

class GetResponse(_message.Message):
    __slots__ = ("found", "type", "values", "counter", "elements", "version")
    class VersionEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    FOUND_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    COUNTER_FIELD_NUMBER: _ClassVar[int]
    ELEMENTS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    found: bool
    type: ValueType
    values: _containers.RepeatedScalarFieldContainer[bytes]
    counter: int
    elements: _containers.RepeatedScalarFieldContainer[bytes]
    version: _containers.ScalarMap[str, int]
    def __init__(self, found: _Optional[bool] = ..., type: _Optional[_Union[ValueType, str]] = ..., values: _Optional[_Iterable[bytes]] = ..., counter: _Optional[int] = ..., elements: _Optional[_Iterable[bytes]] = ..., version: _Optional[_Mapping[str, int]] = ...) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ("namespace", "key", "options")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    key: str
    options: WriteOptions
    def __init__(self, namespace: _Optional[str] = ..., key: _Optional[str] = ..., options: _Optional[_Union[WriteOptions, _Mapping]] = ...) -> None: ...

class DeleteResponse(_message.Message):
    __slots__ = ("version", "acked_by")
    class VersionEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ACKED_BY_FIELD_NUMBER: _ClassVar[int]
    version: _containers.ScalarMap[str, int]
    acked_by: int
    def __init__(self, version: _Optional[_Mapping[str, int]] = ..., acked_by: _Optional[int] = ...) -> None: ...

class IncrementRequest(_message.Message):
    __slots__ = ("namespace", "key", "delta", "options")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    key: str
    delta: int
    options: WriteOptions
    def __init__(self, namespace: _Optional[str] = ..., key: _Optional[str] = ..., delta: _Optional[int] = ..., options: _Optional[_Union[WriteOptions, _Mapping]] = ...) -> None: ...

class IncrementResponse(_message.Message):
    __slots__ = ("version", "acked_by")
    class VersionEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ACKED_BY_FIELD_NUMBER: _ClassVar[int]
    version: _containers.ScalarMap[str, int]
    acked_by: int
    def __init__(self, version: _Optional[_Mapping[str, int]] = ..., acked_by: _Optional[int] = ...) -> None: ...

class SetAddRequest(_message.Message):
    __slots__ = ("namespace", "key", "elements", "options")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    ELEMENTS_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    key: str
    elements: _containers.RepeatedScalarFieldContainer[bytes]
    options: WriteOptions
    def __init__(self, namespace: _Optional[str] = ..., key: _Optional[str] = ..., elements: _Optional[_Iterable[bytes]] = ..., options: _Optional[_Union[WriteOptions, _Mapping]] = ...) -> None: ...

class SetAddResponse(_message.Message):
    __slots__ = ("version", "acked_by")
    class VersionEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ACKED_BY_FIELD_NUMBER: _ClassVar[int]
    version: _containers.ScalarMap[str, int]
    acked_by: int
    def __init__(self, version: _Optional[_Mapping[str, int]] = ..., acked_by: _Optional[int] = ...) -> None: ...

class SetRemoveRequest(_message.Message):
    __slots__ = ("namespace", "key", "elements", "options")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    ELEMENTS_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    key: str
    elements: _containers.RepeatedScalarFieldContainer[bytes]
    options: WriteOptions
    def __init__(self, namespace: _Optional[str] = ..., key: _Optional[str] = ..., elements: _Optional[_Iterable[bytes]] = ..., options: _Optional[_Union[WriteOptions, _Mapping]] = ...) -> None: ...

class SetRemoveResponse(_message.Message):
    __slots__ = ("version", "acked_by")
    class VersionEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ACKED_BY_FIELD_NUMBER: _ClassVar[int]
    version: _containers.ScalarMap[str, int]
    acked_by: int
    def __init__(self, version: _Optional[_Mapping[str, int]] = ..., acked_by: _Optional[int] = ...) -> None: ...

class ScanRequest(_message.Message):
    __slots__ = ("namespace", "prefix", "limit", "page_token")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    prefix: str
    limit: int
    page_token: str
    def __init__(self, namespace: _Optional[str] = ..., prefix: _Optional[str] = ..., limit: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ScanEntry(_message.Message):
    __slots__ = ("key", "value")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: GetResponse
    def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[GetResponse, _Mapping]] = ...) -> None: ...

class ScanResponse(_message.Message):
    __slots__ = ("entries", "next_page_token")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[ScanEntry]
    next_page_token: str
    def __init__(self, entries: _Optional[_Iterable[_Union[ScanEntry, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("namespace", "prefix", "from_seq")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    FROM_SEQ_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    prefix: str
    from_seq: int
    def __init__(self, namespace: _Optional[str] = ..., prefix: _Optional[str] = ..., from_seq: _Optional[int] = ...) -> None: ...

class WatchResponse(_message.Message):
    __slots__ = ("seq", "namespace", "key", "deleted", "value")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    seq: int
    namespace: str
    key: str
    deleted: bool
    value: GetResponse
    def __init__(self, seq: _Optional[int] = ..., namespace: _Optional[str] = ..., key: _Optional[str] = ..., deleted: _Optional[bool] = ..., value: _Optional[_Union[GetResponse, _Mapping]] = ...) -> None: ...

class ModelMetadata(_message.Message):
    __slots__ = ("inputs", "outputs", "architecture", "arch_config")
    class Port(_message.Message):
        __slots__ = ("name", "dtype", "shape")
        NAME_FIELD_NUMBER: _ClassVar[int]
        DTYPE_FIELD_NUMBER: _ClassVar[int]
        SHAPE_FIELD_NUMBER: _ClassVar[int]
        name: str
        dtype: _common_pb2.Dtype
        shape: _containers.RepeatedScalarFieldContainer[int]
        def __init__(self, name: _Optional[str] = ..., dtype: _Optional[_Union[_common_pb2.Dtype, str]] = ..., shape: _Optional[_Iterable[int]] = ...) -> None: ...
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    ARCH_CONFIG_FIELD_NUMBER: _ClassVar[int]
    inputs: _containers.RepeatedCompositeFieldContainer[ModelMetadata.Port]
    outputs: _containers.RepeatedCompositeFieldContainer[ModelMetadata.Port]
    architecture: str
    arch_config: str
    def __init__(self, inputs: _Optional[_Iterable[_Union[ModelMetadata.Port, _Mapping]]] = ..., outputs: _Optional[_Iterable[_Union[ModelMetadata.Port, _Mapping]]] = ..., architecture: _Optional[str] = ..., arch_config: _Optional[str] = ...) -> None: ...

class PublishModelRequest(_message.Message):
    __slots__ = ("header", "data")
    class Header(_message.Message):
        __slots__ = ("name", "format", "metadata", "size", "chunk_size", "replicas", "sha256")
        NAME_FIELD_NUMBER: _ClassVar[int]
        FORMAT_FIELD_NUMBER: _ClassVar[int]
        METADATA_FIELD_NUMBER: _ClassVar[int]
        SIZE_FIELD_NUMBER: _ClassVar[int]
        CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
        REPLICAS_FIELD_NUMBER: _ClassVar[int]
        SHA256_FIELD_NUMBER: _ClassVar[int]
        name: str
        format: str
        metadata: ModelMetadata
        size: int
        chunk_size: int
        replicas: str
        sha256: str
        def __init__(self, name: _Optional[str] = ..., format: _Optional[str] = ..., metadata: _Optional[_Union[ModelMetadata, _Mapping]] = ..., size: _Optional[int] = ..., chunk_size: _Optional[int] = ..., replicas: _Optional[str] = ..., sha256: _Optional[str] = ...) -> None: ...
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: PublishModelRequest.Header
    data: bytes
    def __init__(self, header: _Optional[_Union[PublishModelRequest.Header, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class PublishModelResponse(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: ModelVersion
    def __init__(self, version: _Optional[_Union[ModelVersion, _Mapping]] = ...) -> None: ...

class ModelVersion(_message.Message):
    __slots__ = ("name", "manifest_id", "format", "size", "sha256", "chunk_size", "chunks", "created_unix", "holders", "replicas", "metadata", "owner")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_ID_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_FIELD_NUMBER: _ClassVar[int]
    HOLDERS_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    name: str
    manifest_id: str
    format: str
    size: int
    sha256: str
    chunk_size: int
    chunks: int
    created_unix: float
    holders: _containers.RepeatedScalarFieldContainer[str]
    replicas: str
    metadata: ModelMetadata
    owner: str
    def __init__(self, name: _Optional[str] = ..., manifest_id: _Optional[str] = ..., format: _Optional[str] = ..., size: _Optional[int] = ..., sha256: _Optional[str] = ..., chunk_size: _Optional[int] = ..., chunks: _Optional[int] = ..., created_unix: _Optional[float] = ..., holders: _Optional[_Iterable[str]] = ..., replicas: _Optional[str] = ..., metadata: _Optional[_Union[ModelMetadata, _Mapping]] = ..., owner: _Optional[str] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("versions",)
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedCompositeFieldContainer[ModelVersion]
    def __init__(self, versions: _Optional[_Iterable[_Union[ModelVersion, _Mapping]]] = ...) -> None: ...

class PullModelRequest(_message.Message):
    __slots__ = ("name", "manifest_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    manifest_id: str
    def __init__(self, name: _Optional[str] = ..., manifest_id: _Optional[str] = ...) -> None: ...

class PullModelResponse(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: ModelVersion
    def __init__(self, version: _Optional[_Union[ModelVersion, _Mapping]] = ...) -> None: ...

class DeleteModelRequest(_message.Message):
    __slots__ = ("name", "manifest_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    manifest_id: str
    def __init__(self, name: _Optional[str] = ..., manifest_id: _Optional[str] = ...) -> None: ...

class DeleteModelResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: int
    def __init__(self, deleted: _Optional[int] = ...) -> None: ...

class RevokeRequest(_message.Message):
    __slots__ = ("identity", "reason")
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    identity: str
    reason: str
    def __init__(self, identity: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class RevokeResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AverageRequest(_message.Message):
    __slots__ = ("run", "sample_count", "spec", "length", "min_members", "data", "model")
    RUN_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_COUNT_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    MIN_MEMBERS_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    run: str
    sample_count: float
    spec: str
    length: int
    min_members: int
    data: bytes
    model: str
    def __init__(self, run: _Optional[str] = ..., sample_count: _Optional[float] = ..., spec: _Optional[str] = ..., length: _Optional[int] = ..., min_members: _Optional[int] = ..., data: _Optional[bytes] = ..., model: _Optional[str] = ...) -> None: ...

class AverageResponse(_message.Message):
    __slots__ = ("round", "group", "complete", "seconds", "data")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    round: int
    group: _containers.RepeatedScalarFieldContainer[str]
    complete: bool
    seconds: float
    data: bytes
    def __init__(self, round: _Optional[int] = ..., group: _Optional[_Iterable[str]] = ..., complete: _Optional[bool] = ..., seconds: _Optional[float] = ..., data: _Optional[bytes] = ...) -> None: ...

class TrainStatusRequest(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: str
    def __init__(self, run: _Optional[str] = ...) -> None: ...

class TrainRunStatus(_message.Message):
    __slots__ = ("run", "rounds", "last_round", "members", "last_round_s", "phase_timeout_s", "bytes_sent", "bytes_received", "refused", "incomplete_rounds", "last_published")
    RUN_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    LAST_ROUND_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    LAST_ROUND_S_FIELD_NUMBER: _ClassVar[int]
    PHASE_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    BYTES_SENT_FIELD_NUMBER: _ClassVar[int]
    BYTES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    INCOMPLETE_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    LAST_PUBLISHED_FIELD_NUMBER: _ClassVar[int]
    run: str
    rounds: int
    last_round: int
    members: _containers.RepeatedScalarFieldContainer[str]
    last_round_s: float
    phase_timeout_s: float
    bytes_sent: int
    bytes_received: int
    refused: int
    incomplete_rounds: int
    last_published: str
    def __init__(self, run: _Optional[str] = ..., rounds: _Optional[int] = ..., last_round: _Optional[int] = ..., members: _Optional[_Iterable[str]] = ..., last_round_s: _Optional[float] = ..., phase_timeout_s: _Optional[float] = ..., bytes_sent: _Optional[int] = ..., bytes_received: _Optional[int] = ..., refused: _Optional[int] = ..., incomplete_rounds: _Optional[int] = ..., last_published: _Optional[str] = ...) -> None: ...

class TrainStatusResponse(_message.Message):
    __slots__ = ("runs",)
    RUNS_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[TrainRunStatus]
    def __init__(self, runs: _Optional[_Iterable[_Union[TrainRunStatus, _Mapping]]] = ...) -> None: ...

class ChatMessage(_message.Message):
    __slots__ = ("role", "content")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    role: str
    content: str
    def __init__(self, role: _Optional[str] = ..., content: _Optional[str] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("model", "prompt", "prompt_ids", "messages", "max_new_tokens", "temperature", "top_p", "top_k", "seed", "stop", "model_version")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    PROMPT_IDS_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    prompt: str
    prompt_ids: _containers.RepeatedScalarFieldContainer[int]
    messages: _containers.RepeatedCompositeFieldContainer[ChatMessage]
    max_new_tokens: int
    temperature: float
    top_p: float
    top_k: int
    seed: int
    stop: _containers.RepeatedScalarFieldContainer[str]
    model_version: str
    def __init__(self, model: _Optional[str] = ..., prompt: _Optional[str] = ..., prompt_ids: _Optional[_Iterable[int]] = ..., messages: _Optional[_Iterable[_Union[ChatMessage, _Mapping]]] = ..., max_new_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., top_k: _Optional[int] = ..., seed: _Optional[int] = ..., stop: _Optional[_Iterable[str]] = ..., model_version: _Optional[str] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("text", "token_ids", "finish_reason", "prompt_tokens", "generated_tokens", "node")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    GENERATED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    text: str
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    finish_reason: str
    prompt_tokens: int
    generated_tokens: int
    node: str
    def __init__(self, text: _Optional[str] = ..., token_ids: _Optional[_Iterable[int]] = ..., finish_reason: _Optional[str] = ..., prompt_tokens: _Optional[int] = ..., generated_tokens: _Optional[int] = ..., node: _Optional[str] = ...) -> None: ...

class EmbedRequest(_message.Message):
    __slots__ = ("model", "texts", "truncate", "model_version")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATE_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    texts: _containers.RepeatedScalarFieldContainer[str]
    truncate: bool
    model_version: str
    def __init__(self, model: _Optional[str] = ..., texts: _Optional[_Iterable[str]] = ..., truncate: _Optional[bool] = ..., model_version: _Optional[str] = ...) -> None: ...

class Vector(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class EmbedResponse(_message.Message):
    __slots__ = ("embeddings", "tokens", "executor")
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    EXECUTOR_FIELD_NUMBER: _ClassVar[int]
    embeddings: _containers.RepeatedCompositeFieldContainer[Vector]
    tokens: _containers.RepeatedScalarFieldContainer[int]
    executor: str
    def __init__(self, embeddings: _Optional[_Iterable[_Union[Vector, _Mapping]]] = ..., tokens: _Optional[_Iterable[int]] = ..., executor: _Optional[str] = ...) -> None: ...

class ClassifyRequest(_message.Message):
    __slots__ = ("model", "texts", "truncate", "model_version")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATE_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    texts: _containers.RepeatedScalarFieldContainer[str]
    truncate: bool
    model_version: str
    def __init__(self, model: _Optional[str] = ..., texts: _Optional[_Iterable[str]] = ..., truncate: _Optional[bool] = ..., model_version: _Optional[str] = ...) -> None: ...

class ClassifyTokensRequest(_message.Message):
    __slots__ = ("model", "texts", "truncate", "model_version")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATE_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    texts: _containers.RepeatedScalarFieldContainer[str]
    truncate: bool
    model_version: str
    def __init__(self, model: _Optional[str] = ..., texts: _Optional[_Iterable[str]] = ..., truncate: _Optional[bool] = ..., model_version: _Optional[str] = ...) -> None: ...

class LabelScore(_message.Message):
    __slots__ = ("label", "score")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    label: str
    score: float
    def __init__(self, label: _Optional[str] = ..., score: _Optional[float] = ...) -> None: ...

class TextScores(_message.Message):
    __slots__ = ("scores",)
    SCORES_FIELD_NUMBER: _ClassVar[int]
    scores: _containers.RepeatedCompositeFieldContainer[LabelScore]
    def __init__(self, scores: _Optional[_Iterable[_Union[LabelScore, _Mapping]]] = ...) -> None: ...

class ClassifyResponse(_message.Message):
    __slots__ = ("results", "executor")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    EXECUTOR_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[TextScores]
    executor: str
    def __init__(self, results: _Optional[_Iterable[_Union[TextScores, _Mapping]]] = ..., executor: _Optional[str] = ...) -> None: ...

class Entity(_message.Message):
    __slots__ = ("label", "score", "start", "end", "text")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    label: str
    score: float
    start: int
    end: int
    text: str
    def __init__(self, label: _Optional[str] = ..., score: _Optional[float] = ..., start: _Optional[int] = ..., end: _Optional[int] = ..., text: _Optional[str] = ...) -> None: ...

class TextEntities(_message.Message):
    __slots__ = ("entities",)
    ENTITIES_FIELD_NUMBER: _ClassVar[int]
    entities: _containers.RepeatedCompositeFieldContainer[Entity]
    def __init__(self, entities: _Optional[_Iterable[_Union[Entity, _Mapping]]] = ...) -> None: ...

class ClassifyTokensResponse(_message.Message):
    __slots__ = ("results", "executor")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    EXECUTOR_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[TextEntities]
    executor: str
    def __init__(self, results: _Optional[_Iterable[_Union[TextEntities, _Mapping]]] = ..., executor: _Optional[str] = ...) -> None: ...
