from collections.abc import Iterable as _Iterable
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar

from cynode.rpc import common_pb2 as _common_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from google.protobuf.internal import containers as _containers

DESCRIPTOR: _descriptor.FileDescriptor

class ModelRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: str | None = ...) -> None: ...

class ModelReply(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelInfo
    def __init__(self, model: _common_pb2.ModelInfo | _Mapping | None = ...) -> None: ...

class PredictRequest(_message.Message):
    __slots__ = ("coalesce_ms", "epoch", "lease_id", "messages", "model", "prompt", "request_id", "resume_text", "resume_tokens", "sampling")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    RESUME_TEXT_FIELD_NUMBER: _ClassVar[int]
    RESUME_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COALESCE_MS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model: str
    messages: _containers.RepeatedCompositeFieldContainer[_common_pb2.ChatMessage]
    prompt: str
    sampling: _common_pb2.SamplingParams
    lease_id: str
    epoch: int
    resume_text: str
    resume_tokens: int
    coalesce_ms: int
    def __init__(self, request_id: str | None = ..., model: str | None = ..., messages: _Iterable[_common_pb2.ChatMessage | _Mapping] | None = ..., prompt: str | None = ..., sampling: _common_pb2.SamplingParams | _Mapping | None = ..., lease_id: str | None = ..., epoch: int | None = ..., resume_text: str | None = ..., resume_tokens: int | None = ..., coalesce_ms: int | None = ...) -> None: ...

class PredictChunk(_message.Message):
    __slots__ = ("finish_reason", "logprobs", "text", "token_ids", "usage")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    text: str
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    finish_reason: str
    usage: _common_pb2.Usage
    logprobs: _containers.RepeatedCompositeFieldContainer[_common_pb2.TokenLogprob]
    def __init__(self, text: str | None = ..., token_ids: _Iterable[int] | None = ..., finish_reason: str | None = ..., usage: _common_pb2.Usage | _Mapping | None = ..., logprobs: _Iterable[_common_pb2.TokenLogprob | _Mapping] | None = ...) -> None: ...

class EmbedRequest(_message.Message):
    __slots__ = ("dimensions", "epoch", "input", "lease_id", "model", "request_id")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    DIMENSIONS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model: str
    input: _containers.RepeatedScalarFieldContainer[str]
    lease_id: str
    epoch: int
    dimensions: int
    def __init__(self, request_id: str | None = ..., model: str | None = ..., input: _Iterable[str] | None = ..., lease_id: str | None = ..., epoch: int | None = ..., dimensions: int | None = ...) -> None: ...

class Embedding(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Iterable[float] | None = ...) -> None: ...

class EmbedReply(_message.Message):
    __slots__ = ("data", "model", "usage")
    DATA_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    data: _containers.RepeatedCompositeFieldContainer[Embedding]
    usage: _common_pb2.Usage
    model: str
    def __init__(self, data: _Iterable[Embedding | _Mapping] | None = ..., usage: _common_pb2.Usage | _Mapping | None = ..., model: str | None = ...) -> None: ...

class HealthRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HealthReply(_message.Message):
    __slots__ = ("active_requests", "backend", "detail", "max_concurrency", "models", "node_id", "ready")
    READY_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    ready: bool
    node_id: str
    backend: str
    models: _containers.RepeatedCompositeFieldContainer[_common_pb2.ModelInfo]
    active_requests: int
    max_concurrency: int
    detail: str
    def __init__(self, ready: bool | None = ..., node_id: str | None = ..., backend: str | None = ..., models: _Iterable[_common_pb2.ModelInfo | _Mapping] | None = ..., active_requests: int | None = ..., max_concurrency: int | None = ..., detail: str | None = ...) -> None: ...
