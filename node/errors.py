"""Errors cynode raises on purpose. One root, structured fields, and a `retryable` flag.

    CynodeError
    ├── ConfigError            bad node.toml, env override or flag; names the key and reason
    ├── StartupError           a role or dependency could not start
    ├── AuthError              missing/unknown API key, or a scope the key lacks
    ├── RequestError           a bad client request (400, 404, 413, 422)
    │   └── DatasetError       a bad training file or row: names the file, row, field, expected format
    ├── UnavailableError       no leader, no healthy worker, Redis down (retryable)
    │   └── CapacityError      the queue is full: HTTP 429 with Retry-After
    ├── EngineError            an inference engine failed to load or generate
    └── TrainingError          a fine-tuning job could not run or was stopped; `code` says why

Foreign errors (redis, grpc, torch) are translated into these at one boundary each.
"""

from __future__ import annotations


class CynodeError(Exception):
    """Root of every error cynode raises on purpose."""

    retryable: bool = False

    def __init__(self, message: str, *, retryable: bool | None = None) -> None:
        super().__init__(message)
        self.message = message
        if retryable is not None:
            self.retryable = retryable


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

    def __init__(self, message: str, *, status: int = 401, code: str = "invalid_api_key") -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class RequestError(CynodeError):
    """The client sent something we cannot serve; maps to an HTTP 4xx."""

    def __init__(self, message: str, *, status: int = 400, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.param = param
        self.code = code


class UnavailableError(CynodeError):
    """Something the request needs is not there right now; worth retrying later."""

    retryable = True

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class CapacityError(UnavailableError):
    """Every worker is busy and the queue is full; come back after `retry_after` seconds."""


class EngineError(CynodeError):
    """An inference engine failed to load a model or to generate."""


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

    def __init__(self, message: str, *, code: str = "training_failed", retryable: bool | None = None) -> None:
        super().__init__(message, retryable=retryable)
        self.code = code
