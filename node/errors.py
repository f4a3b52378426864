"""Errors cynode raises on purpose. One root, structured fields, and a `retryable` flag.

    CynodeError                    status  code
    ├── ConfigError                   -    -      bad node.toml, env override or flag; names the key and reason
    ├── StartupError                  -    -      a role or dependency could not start
    ├── AuthError                   401    invalid_api_key   missing/unknown key (403: a scope or model it lacks)
    ├── RequestError                400    -      a bad client request (also 404, 413, 422)
    │   └── DatasetError            400    invalid_training_file   a bad training file or row: file, row, field
    ├── UnavailableError            503    unavailable       not there right now: worth retrying (retryable)
    │   ├── CapacityError           429    queue_full        every worker busy and no room to wait
    │   │   └── QueueFullError      429    queue_full        the task queue holds max_size tasks
    │   ├── RateLimitError          429    rate_limit_exceeded  one client address over its request rate
    │   ├── FencedError             503    fenced            a write under an epoch that is not the leader's
    │   └── TaskEndedError          503    task_ended        the task is done, dead or cancelled already
    ├── EngineError                 500    engine_error      an inference engine failed to load or generate
    └── TrainingError               500    (why)             a fine-tuning job could not run or was stopped

Every error carries what a client needs: an HTTP `status`, an OpenAI-style `code`, the `param` it
is about and whether a retry can help. They cross gRPC intact (`cynode.rpc.errors` maps them to a
status and trailing metadata and back), so a worker's `context_length_exceeded` reaches the HTTP
client with its code and param. Foreign errors (redis, grpc, torch) are translated into these at
one boundary each.
"""

from __future__ import annotations


class CynodeError(Exception):
    """Root of every error cynode raises on purpose."""

    status: int = 500
    code: str | None = None
    retryable: bool = False

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None,
                 retryable: bool | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if retryable is not None:
            self.retryable = retryable
        if status is not None:
            self.status = status


class ConfigError(CynodeError):
    """The configuration is invalid; `problems` holds one line per bad key."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__("\n".join(f"{source}: {line}" for line in problems))


class StartupError(CynodeError):
    """A role or a dependency it needs could not start."""


class AuthError(CynodeError):
    """The caller is not allowed: `status` is 401 (who are you) or 403 (not this)."""

    status = 401
    code = "invalid_api_key"


class RequestError(CynodeError):
    """The client sent something we cannot serve; maps to an HTTP 4xx."""

    status = 400


class UnavailableError(CynodeError):
    """Something the request needs is not there right now; worth retrying later."""

    status = 503
    code = "unavailable"
    retryable = True

    def __init__(self, message: str, *, retry_after: float | None = None, **fields) -> None:
        super().__init__(message, **fields)
        self.retry_after = retry_after


class CapacityError(UnavailableError):
    """Every worker is busy and there is no room to wait; come back after `retry_after` seconds."""

    status = 429
    code = "queue_full"


class QueueFullError(CapacityError):
    """The task queue already holds `max_size` tasks."""

    def __init__(self, depth: int, *, retry_after: float | None = None) -> None:
        super().__init__(f"the task queue is full ({depth} waiting)", retry_after=retry_after)
        self.depth = depth


class RateLimitError(UnavailableError):
    """A limit is reached (an API key's, or one client address's before authentication); retry after
    `retry_after` s. `headers` are the `x-ratelimit-*` headers for the answer."""

    status = 429
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: float, headers: dict[str, str] | None = None, **fields) -> None:
        super().__init__(message, retry_after=retry_after, **fields)
        self.headers = headers or {}


class FencedError(UnavailableError):
    """A write carried an epoch that is no longer current (or went to a standby): ask the leader again."""

    code = "fenced"


class TaskEndedError(UnavailableError):
    """The task this call is about is done, dead or cancelled already."""

    code = "task_ended"


class EngineError(CynodeError):
    """An inference engine failed to load a model or to generate."""

    code = "engine_error"

class DatasetError(RequestError):
    """A training or validation file cannot be used: `file`, `row` (1-based, None for the whole
    file), `field` (a path such as `messages[2].role`, None for the whole row) and `expected` (what
    the format wants) say exactly where and what.
    """

    def __init__(
        self,
        file: str,
        problem: str,
        *,
        row: int | None = None,
        field: str | None = None,
        expected: str | None = None,
        format: str | None = None,
    ) -> None:
        self.file = file
        self.row = row
        self.field = field
        self.expected = expected
        self.format = format
        where = file if row is None else f"{file}: row {row}"
        if field:
            where += f": field {field!r}"
        text = f"{where}: {problem}"
        if expected:
            text += f" (expected {expected}"
            text += f" for format {format!r})" if format else ")"
        super().__init__(text, status=400, param=field, code="invalid_training_file")

    def to_dict(self) -> dict:
        return {
            "code": self.code, "message": self.message, "file": self.file, "row": self.row,
            "field": self.field, "expected": self.expected, "format": self.format,
        }


class TrainingError(CynodeError):
    """A fine-tuning job could not run or was stopped on purpose; `code` is a stable short name
    (`invalid_job`, `unknown_architecture`, `bad_targets`, `diverged`, `child_died`, ...).
    """

    code = "training_failed"

    def __init__(self, message: str, *, code: str = "training_failed", retryable: bool | None = None) -> None:
        super().__init__(message, code=code, retryable=retryable)
