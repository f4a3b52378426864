from cynode.rpc import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CacheMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CACHE_DEFAULT: _ClassVar[CacheMode]
    CACHE_NO_CACHE: _ClassVar[CacheMode]
    CACHE_NO_STORE: _ClassVar[CacheMode]
CACHE_DEFAULT: CacheMode
CACHE_NO_CACHE: CacheMode
CACHE_NO_STORE: CacheMode

class AdmitRequest(_message.Message):
    __slots__ = ("request_id", "model", "priority", "api_key_name", "exclude_workers", "messages", "sampling", "cache_mode", "idempotency_key", "prompt", "tools")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    API_KEY_NAME_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_WORKERS_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    CACHE_MODE_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model: str
    priority: int
    api_key_name: str
    exclude_workers: _containers.RepeatedScalarFieldContainer[str]
    messages: _containers.RepeatedCompositeFieldContainer[_common_pb2.ChatMessage]
    sampling: _common_pb2.SamplingParams
    cache_mode: CacheMode
    idempotency_key: str
    prompt: str
    tools: str
    def __init__(self, request_id: _Optional[str] = ..., model: _Optional[str] = ..., priority: _Optional[int] = ..., api_key_name: _Optional[str] = ..., exclude_workers: _Optional[_Iterable[str]] = ..., messages: _Optional[_Iterable[_Union[_common_pb2.ChatMessage, _Mapping]]] = ..., sampling: _Optional[_Union[_common_pb2.SamplingParams, _Mapping]] = ..., cache_mode: _Optional[_Union[CacheMode, str]] = ..., idempotency_key: _Optional[str] = ..., prompt: _Optional[str] = ..., tools: _Optional[str] = ...) -> None: ...

class Assignment(_message.Message):
    __slots__ = ("worker_id", "worker_address", "lease_id", "epoch", "lease_deadline_ms", "model", "attempt", "cacheable")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    WORKER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    LEASE_DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    CACHEABLE_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    worker_address: str
    lease_id: str
    epoch: int
    lease_deadline_ms: int
    model: str
    attempt: int
    cacheable: bool
    def __init__(self, worker_id: _Optional[str] = ..., worker_address: _Optional[str] = ..., lease_id: _Optional[str] = ..., epoch: _Optional[int] = ..., lease_deadline_ms: _Optional[int] = ..., model: _Optional[str] = ..., attempt: _Optional[int] = ..., cacheable: _Optional[bool] = ...) -> None: ...

class CachedResponse(_message.Message):
    __slots__ = ("deltas", "finish_reason", "usage", "model")
    DELTAS_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    deltas: _containers.RepeatedScalarFieldContainer[str]
    finish_reason: str
    usage: _common_pb2.Usage
    model: str
    def __init__(self, deltas: _Optional[_Iterable[str]] = ..., finish_reason: _Optional[str] = ..., usage: _Optional[_Union[_common_pb2.Usage, _Mapping]] = ..., model: _Optional[str] = ...) -> None: ...

class AdmitReply(_message.Message):
    __slots__ = ("task_id", "assignment", "cached")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ASSIGNMENT_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    assignment: Assignment
    cached: CachedResponse
    def __init__(self, task_id: _Optional[str] = ..., assignment: _Optional[_Union[Assignment, _Mapping]] = ..., cached: _Optional[_Union[CachedResponse, _Mapping]] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("task_id", "lease_id")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    lease_id: str
    def __init__(self, task_id: _Optional[str] = ..., lease_id: _Optional[str] = ...) -> None: ...

class HeartbeatReply(_message.Message):
    __slots__ = ("ok", "lease_deadline_ms")
    OK_FIELD_NUMBER: _ClassVar[int]
    LEASE_DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    lease_deadline_ms: int
    def __init__(self, ok: _Optional[bool] = ..., lease_deadline_ms: _Optional[int] = ...) -> None: ...

class CompleteRequest(_message.Message):
    __slots__ = ("lease_id", "worker_id", "ok", "error", "usage", "epoch", "task_id", "deltas", "finish_reason", "worker_fault", "model")
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    DELTAS_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    WORKER_FAULT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    lease_id: str
    worker_id: str
    ok: bool
    error: str
    usage: _common_pb2.Usage
    epoch: int
    task_id: str
    deltas: _containers.RepeatedScalarFieldContainer[str]
    finish_reason: str
    worker_fault: bool
    model: str
    def __init__(self, lease_id: _Optional[str] = ..., worker_id: _Optional[str] = ..., ok: _Optional[bool] = ..., error: _Optional[str] = ..., usage: _Optional[_Union[_common_pb2.Usage, _Mapping]] = ..., epoch: _Optional[int] = ..., task_id: _Optional[str] = ..., deltas: _Optional[_Iterable[str]] = ..., finish_reason: _Optional[str] = ..., worker_fault: _Optional[bool] = ..., model: _Optional[str] = ...) -> None: ...

class CompleteReply(_message.Message):
    __slots__ = ("task_state",)
    TASK_STATE_FIELD_NUMBER: _ClassVar[int]
    task_state: str
    def __init__(self, task_state: _Optional[str] = ...) -> None: ...

class CancelRequest(_message.Message):
    __slots__ = ("task_id", "reason", "lease_id")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    reason: str
    lease_id: str
    def __init__(self, task_id: _Optional[str] = ..., reason: _Optional[str] = ..., lease_id: _Optional[str] = ...) -> None: ...

class CancelReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WorkerStatus(_message.Message):
    __slots__ = ("id", "address", "healthy", "breaker", "active", "leased", "capacity", "weight", "models")
    ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    HEALTHY_FIELD_NUMBER: _ClassVar[int]
    BREAKER_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    LEASED_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    id: str
    address: str
    healthy: bool
    breaker: str
    active: int
    leased: int
    capacity: int
    weight: int
    models: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, id: _Optional[str] = ..., address: _Optional[str] = ..., healthy: _Optional[bool] = ..., breaker: _Optional[str] = ..., active: _Optional[int] = ..., leased: _Optional[int] = ..., capacity: _Optional[int] = ..., weight: _Optional[int] = ..., models: _Optional[_Iterable[str]] = ...) -> None: ...

class StatusReply(_message.Message):
    __slots__ = ("leader_id", "epoch", "leader_address", "is_leader", "queue_pending", "queue_inflight", "queue_dead", "workers", "cache_hit_rate", "cache_entries")
    LEADER_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    LEADER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    IS_LEADER_FIELD_NUMBER: _ClassVar[int]
    QUEUE_PENDING_FIELD_NUMBER: _ClassVar[int]
    QUEUE_INFLIGHT_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEAD_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    CACHE_HIT_RATE_FIELD_NUMBER: _ClassVar[int]
    CACHE_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    leader_id: str
    epoch: int
    leader_address: str
    is_leader: bool
    queue_pending: int
    queue_inflight: int
    queue_dead: int
    workers: _containers.RepeatedCompositeFieldContainer[WorkerStatus]
    cache_hit_rate: float
    cache_entries: int
    def __init__(self, leader_id: _Optional[str] = ..., epoch: _Optional[int] = ..., leader_address: _Optional[str] = ..., is_leader: _Optional[bool] = ..., queue_pending: _Optional[int] = ..., queue_inflight: _Optional[int] = ..., queue_dead: _Optional[int] = ..., workers: _Optional[_Iterable[_Union[WorkerStatus, _Mapping]]] = ..., cache_hit_rate: _Optional[float] = ..., cache_entries: _Optional[int] = ...) -> None: ...
