from collections.abc import Iterable as _Iterable
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar

from cynode.rpc import common_pb2 as _common_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper

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
    __slots__ = ("api_key_name", "cache_mode", "exclude_workers", "idempotency_key", "messages", "model", "priority", "prompt", "request_id", "sampling")
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
    def __init__(self, request_id: str | None = ..., model: str | None = ..., priority: int | None = ..., api_key_name: str | None = ..., exclude_workers: _Iterable[str] | None = ..., messages: _Iterable[_common_pb2.ChatMessage | _Mapping] | None = ..., sampling: _common_pb2.SamplingParams | _Mapping | None = ..., cache_mode: CacheMode | str | None = ..., idempotency_key: str | None = ..., prompt: str | None = ...) -> None: ...

class Assignment(_message.Message):
    __slots__ = ("attempt", "cacheable", "epoch", "lease_deadline_ms", "lease_id", "model", "worker_address", "worker_id")
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
    def __init__(self, worker_id: str | None = ..., worker_address: str | None = ..., lease_id: str | None = ..., epoch: int | None = ..., lease_deadline_ms: int | None = ..., model: str | None = ..., attempt: int | None = ..., cacheable: bool | None = ...) -> None: ...

class CachedResponse(_message.Message):
    __slots__ = ("deltas", "finish_reason", "model", "usage")
    DELTAS_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    deltas: _containers.RepeatedScalarFieldContainer[str]
    finish_reason: str
    usage: _common_pb2.Usage
    model: str
    def __init__(self, deltas: _Iterable[str] | None = ..., finish_reason: str | None = ..., usage: _common_pb2.Usage | _Mapping | None = ..., model: str | None = ...) -> None: ...

class AdmitReply(_message.Message):
    __slots__ = ("assignment", "cached", "task_id")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ASSIGNMENT_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    assignment: Assignment
    cached: CachedResponse
    def __init__(self, task_id: str | None = ..., assignment: Assignment | _Mapping | None = ..., cached: CachedResponse | _Mapping | None = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("lease_id", "task_id")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    lease_id: str
    def __init__(self, task_id: str | None = ..., lease_id: str | None = ...) -> None: ...

class HeartbeatReply(_message.Message):
    __slots__ = ("lease_deadline_ms", "ok")
    OK_FIELD_NUMBER: _ClassVar[int]
    LEASE_DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    lease_deadline_ms: int
    def __init__(self, ok: bool | None = ..., lease_deadline_ms: int | None = ...) -> None: ...

class CompleteRequest(_message.Message):
    __slots__ = ("deltas", "epoch", "error", "finish_reason", "lease_id", "model", "ok", "task_id", "usage", "worker_fault", "worker_id")
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
    def __init__(self, lease_id: str | None = ..., worker_id: str | None = ..., ok: bool | None = ..., error: str | None = ..., usage: _common_pb2.Usage | _Mapping | None = ..., epoch: int | None = ..., task_id: str | None = ..., deltas: _Iterable[str] | None = ..., finish_reason: str | None = ..., worker_fault: bool | None = ..., model: str | None = ...) -> None: ...

class CompleteReply(_message.Message):
    __slots__ = ("task_state",)
    TASK_STATE_FIELD_NUMBER: _ClassVar[int]
    task_state: str
    def __init__(self, task_state: str | None = ...) -> None: ...

class CancelRequest(_message.Message):
    __slots__ = ("lease_id", "reason", "task_id")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    reason: str
    lease_id: str
    def __init__(self, task_id: str | None = ..., reason: str | None = ..., lease_id: str | None = ...) -> None: ...

class CancelReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WorkerStatus(_message.Message):
    __slots__ = ("active", "address", "breaker", "capacity", "healthy", "id", "leased", "models", "weight")
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
    def __init__(self, id: str | None = ..., address: str | None = ..., healthy: bool | None = ..., breaker: str | None = ..., active: int | None = ..., leased: int | None = ..., capacity: int | None = ..., weight: int | None = ..., models: _Iterable[str] | None = ...) -> None: ...

class StatusReply(_message.Message):
    __slots__ = ("cache_entries", "cache_hit_rate", "epoch", "is_leader", "leader_address", "leader_id", "queue_dead", "queue_inflight", "queue_pending", "workers")
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
    def __init__(self, leader_id: str | None = ..., epoch: int | None = ..., leader_address: str | None = ..., is_leader: bool | None = ..., queue_pending: int | None = ..., queue_inflight: int | None = ..., queue_dead: int | None = ..., workers: _Iterable[WorkerStatus | _Mapping] | None = ..., cache_hit_rate: float | None = ..., cache_entries: int | None = ...) -> None: ...
