"""The one builder of OpenAI's error envelope, for every HTTP endpoint of every node.

OpenAI's SDKs raise by HTTP status and read `error.message`; `type`, `param` and `code` tell a
program what went wrong and where. A `CynodeError` carries all of them (`cynode.errors`).
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from .errors import CynodeError

__all__ = ["error_body", "error_response", "error_type_for_status", "response_for"]

_ERROR_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    429: "rate_limit_error",
    503: "service_unavailable_error",
}


def error_type_for_status(status: int) -> str:
    """The `error.type` OpenAI uses for an HTTP status."""
    if status in _ERROR_TYPES:
        return _ERROR_TYPES[status]
    return "server_error" if status >= 500 else "invalid_request_error"


def error_body(message: str, *, status: int = 400, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type_for_status(status), "param": param, "code": code}}


def error_response(status: int, message: str, *, param: str | None = None, code: str | None = None,
                   headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(error_body(message, status=status, param=param, code=code)),
                        status=status, content_type="application/json", headers=headers)


def response_for(exc: CynodeError) -> web.Response:
    """The HTTP answer to a cynode error: its status, code and param, and Retry-After when known."""
    headers = dict(getattr(exc, "headers", None) or {}) or None
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is not None or exc.status in (429, 503):
        headers = {**(headers or {}), "Retry-After": str(max(1, round(retry_after or 1)))}
    return error_response(exc.status, exc.message, param=exc.param, code=exc.code, headers=headers)
