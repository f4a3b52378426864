"""Errors cynode raises on purpose. One root, structured fields, and a `retryable` flag.

    CynodeError
    ├── ConfigError            bad node.toml, env override or flag; names the key and reason
    ├── StartupError           a role or dependency could not start
    ├── AuthError              missing/unknown API key, or a scope the key lacks
    ├── RequestError           a bad client request (400, 404, 413, 422)
    ├── UnavailableError       no leader, no healthy worker, Redis down (retryable)
    │   └── CapacityError      the queue is full: HTTP 429 with Retry-After
    └── EngineError            an inference engine failed to load or generate

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
