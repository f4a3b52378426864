"""The one mapping between cynode errors and gRPC status, used by every server and every client.

A server handler raises a `CynodeError`; `map_handler` (applied to every method a `RpcServer`
registers, for network and in-process calls alike) aborts the call with the error's gRPC code, its message as the details and the
rest in trailing metadata:

    cynode-error       the class name (RequestError, FencedError, ...)
    cynode-status      the HTTP status the client should get (400, 404, 413, 429, 503, ...)
    cynode-code        OpenAI-style code (context_length_exceeded, model_not_found, ...)
    cynode-param       the request field it is about
    cynode-retryable   "1" when another try can help
    retry-after        seconds, when the server knows

`from_rpc_error` turns a failed call back into the same error on the client. A failure that never
reached a cynode handler (connection refused, deadline, the peer died mid-stream) has no such
metadata and becomes a `PeerUnavailable`: the peer, not the request, is at fault.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging

import grpc
import grpc.aio
from cynode import errors as e

from .callers import authorize

__all__ = ["PeerUnavailable", "error_metadata", "from_rpc_error", "grpc_code", "map_handler", "rpc_errors"]

log = logging.getLogger(__name__)


class PeerUnavailable(e.UnavailableError):
    """A call failed outside any cynode handler: the peer is down, unreachable, slow or died mid-call."""

    code = "peer_unavailable"


# Most specific first: the first class an error is an instance of gives its code.
_CODES: tuple[tuple[type[e.CynodeError], grpc.StatusCode], ...] = (
    (e.FencedError, grpc.StatusCode.FAILED_PRECONDITION),
    (e.TaskEndedError, grpc.StatusCode.ABORTED),
    (e.CapacityError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (e.UnavailableError, grpc.StatusCode.UNAVAILABLE),
    (e.AuthError, grpc.StatusCode.PERMISSION_DENIED),
    (e.RequestError, grpc.StatusCode.INVALID_ARGUMENT),
    (e.EngineError, grpc.StatusCode.INTERNAL),
    (e.CynodeError, grpc.StatusCode.INTERNAL),
)
_CLASSES = {cls.__name__: cls for cls in (
    e.AuthError, e.RequestError, e.UnavailableError, e.CapacityError, e.QueueFullError, e.FencedError,
    e.TaskEndedError, e.EngineError, e.CynodeError, PeerUnavailable,
)}


def grpc_code(exc: e.CynodeError) -> grpc.StatusCode:
    if isinstance(exc, e.RequestError) and exc.status == 404:
        return grpc.StatusCode.NOT_FOUND
    if isinstance(exc, e.AuthError) and exc.status == 401:
        return grpc.StatusCode.UNAUTHENTICATED
    return next(code for cls, code in _CODES if isinstance(exc, cls))


def error_metadata(exc: e.CynodeError) -> tuple[tuple[str, str], ...]:
    items = [("cynode-error", type(exc).__name__ if type(exc).__name__ in _CLASSES else _nearest(exc)),
             ("cynode-status", str(exc.status)), ("cynode-retryable", "1" if exc.retryable else "0")]
    if exc.code:
        items.append(("cynode-code", exc.code))
    if exc.param:
        items.append(("cynode-param", exc.param))
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is not None:
        items.append(("retry-after", f"{retry_after:g}"))
    if isinstance(exc, e.QueueFullError):
        items.append(("cynode-depth", str(exc.depth)))
    return tuple(items)


def _nearest(exc: e.CynodeError) -> str:
    return next(cls.__name__ for cls in type(exc).__mro__ if cls.__name__ in _CLASSES)


def from_rpc_error(exc: grpc.aio.AioRpcError, *, peer: str = "") -> e.CynodeError:
    """The cynode error a failed call stands for (see the module docstring)."""
    meta = {key: value for key, value in (exc.trailing_metadata() or ())}
    details = exc.details() or exc.code().name
    name = meta.get("cynode-error")
    if name not in _CLASSES:
        where = f"{peer}: " if peer else ""
        return PeerUnavailable(f"{where}{exc.code().name.lower()}: {details}", retry_after=1.0)
    cls = _CLASSES[name]
    fields = dict(code=meta.get("cynode-code"), param=meta.get("cynode-param"),
                  retryable=meta.get("cynode-retryable") == "1", status=int(meta.get("cynode-status", "500")))
    retry_after = float(meta["retry-after"]) if "retry-after" in meta else None
    if cls is e.QueueFullError:
        error = e.QueueFullError(int(meta.get("cynode-depth", "0")), retry_after=retry_after)
        error.message = details
        error.args = (details,)
        return error
    if issubclass(cls, e.UnavailableError):
        return cls(details, retry_after=retry_after, **fields)
    return cls(details, **fields)


@contextlib.contextmanager
def rpc_errors(peer: str = ""):
    """Around a client call: a failed call raises the cynode error it stands for.

    grpc.aio cancels the calls of a channel that is closed under them, and they raise CancelledError
    in a task nobody cancelled (the gateway drops a channel stuck in reconnect backoff while other
    requests still wait on it): that is the peer's channel failing, a `PeerUnavailable` the caller
    retries, not a cancellation to pass up (an HTTP handler would drop its client's connection)."""
    try:
        yield
    except grpc.aio.AioRpcError as exc:
        raise from_rpc_error(exc, peer=peer) from None
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is None or task.cancelling():
            raise
        where = f"{peer}: " if peer else ""
        raise PeerUnavailable(f"{where}unavailable: the channel was closed during the call", retry_after=1.0) from None


async def _abort(context, exc: e.CynodeError, method: str):
    if isinstance(exc, e.EngineError) or type(exc) is e.CynodeError:
        log.error("%s failed: %s", method, exc.message)
    context.set_trailing_metadata(error_metadata(exc))
    await context.abort(grpc_code(exc), exc.message)


class _Undecodable:
    """What `_tolerant` hands the behaviour in place of a request whose bytes do not parse."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _tolerant(deserializer):
    """gRPC answers a deserializer's exception with UNKNOWN and logs a traceback for each one, so any
    peer could fill the log with garbage; the handler refuses it as a RequestError instead."""
    if deserializer is None:
        return None

    def deserialize(data: bytes):
        try:
            return deserializer(data)
        except Exception as exc:  # protobuf's DecodeError, or anything a parser of bytes raises
            return _Undecodable(str(exc)[:200] or type(exc).__name__)
    return deserialize


def _decoded(request, method: str) -> None:
    if type(request) is _Undecodable:
        raise e.RequestError(f"{method}: the request is not a valid message ({request.reason})", code="invalid_request")


def wrap_handler(method: str, behaviour, streaming: bool, allowed: frozenset[str] = frozenset()):
    """A handler behaviour that turns the CynodeError it raises into the call's status, and that
    first refuses a caller whose certificate names none of the `allowed` roles (`cynode.rpc.callers`)
    and a request that did not decode."""
    if streaming:
        @functools.wraps(behaviour)
        async def stream(request, context):
            try:
                authorize(context, method, allowed)
                _decoded(request, method)
                async for item in behaviour(request, context):
                    yield item
            except e.CynodeError as exc:
                await _abort(context, exc, method)
        return stream

    @functools.wraps(behaviour)
    async def unary(request, context):
        try:
            authorize(context, method, allowed)
            _decoded(request, method)
            return await behaviour(request, context)
        except e.CynodeError as exc:
            await _abort(context, exc, method)
    return unary


def map_handler(method: str, handler: grpc.RpcMethodHandler, allowed: frozenset[str] = frozenset()) -> grpc.RpcMethodHandler:
    """`handler` with its behaviour wrapped by `wrap_handler` (`allowed`: the roles that may call it)."""
    kwargs = dict(request_deserializer=_tolerant(handler.request_deserializer),
                  response_serializer=handler.response_serializer)
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(wrap_handler(method, handler.unary_unary, False, allowed), **kwargs)
    if handler.unary_stream:
        behaviour = handler.unary_stream
        if not inspect.isasyncgenfunction(behaviour):
            return handler
        return grpc.unary_stream_rpc_method_handler(wrap_handler(method, behaviour, True, allowed), **kwargs)
    return handler  # no streaming-request methods in cynode's protos
