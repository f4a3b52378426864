"""In-process calls between roles of one node: the same stubs and handlers, no network in between.

A node that runs the gateway, the coordinator and the worker in one process would otherwise pay for
loopback gRPC on every Admit, every streamed token and every Complete: serialising, two trips
through the gRPC core and the event loop, and a signature check. `RpcServer` registers each
service it serves here too (under the addresses peers dial); a channel asked for one of those
addresses is a `LocalChannel`, which the generated stubs use like any other channel.

What stays the same as over the network, so a role cannot tell the difference:
- the handlers are the registered ones, wrapped by the same error mapping (`cynode.rpc.errors`);
  a failure reaches the caller as the same `grpc.aio.AioRpcError` with the same trailing metadata;
- deadlines (`timeout=`) and cancellation: cancelling the caller cancels the handler, which runs in
  the caller's task; `cancel()` on a stream closes the handler's generator;
- a server that stops (drain) refuses new calls with UNAVAILABLE.
What differs: messages are not serialised (the caller gets the handler's objects; handlers must not
keep or mutate what they are given), and there is no peer authentication to do.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

import grpc
import grpc.aio

log = logging.getLogger(__name__)

__all__ = ["LocalChannel", "LocalServices"]


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class _Context:
    """The part of `grpc.aio.ServicerContext` cynode's handlers use."""

    __slots__ = ("_deadline", "_metadata", "_trailing")

    def __init__(self, deadline: float | None, metadata) -> None:
        self._deadline = deadline
        self._metadata = tuple(metadata or ())
        self._trailing: tuple = ()

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata=()) -> None:
        if trailing_metadata:
            self._trailing = tuple(trailing_metadata)
        raise _Abort(code, details)

    def set_trailing_metadata(self, metadata) -> None:
        self._trailing = tuple(metadata)

    def time_remaining(self) -> float | None:
        if self._deadline is None:
            return None
        return max(0.0, self._deadline - asyncio.get_running_loop().time())

    def invocation_metadata(self):
        return self._metadata

    def peer(self) -> str:
        return "local"

    def cancelled(self) -> bool:
        return False

    def error(self, code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
        return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(*self._trailing), details)


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else asyncio.get_running_loop().time() + timeout


class _UnaryUnary:
    def __init__(self, services: LocalServices, address: str, method: str) -> None:
        self._services, self._address, self._method = services, address, method

    def __call__(self, request, *, timeout=None, metadata=None, credentials=None, wait_for_ready=None, compression=None):
        return self._invoke(request, timeout, metadata)

    async def _invoke(self, request, timeout, metadata):
        behaviour = self._services.behaviour(self._address, self._method)
        context = _Context(_deadline(timeout), metadata)
        try:
            if timeout is None:
                return await behaviour(request, context)
            scope = asyncio.timeout(timeout)
            try:
                async with scope:
                    return await behaviour(request, context)
            except TimeoutError:
                if scope.expired():
                    raise context.error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded") from None
                raise
        except _Abort as abort:
            raise context.error(abort.code, abort.details) from None
        except (grpc.aio.AioRpcError, asyncio.CancelledError):
            raise
        except Exception as exc:  # what gRPC answers for a handler that crashed
            log.exception("in-process call %s failed", self._method)
            raise context.error(grpc.StatusCode.UNKNOWN, f"Unexpected error in the handler: {exc!r}") from None


class _StreamCall:
    """A server-streaming call: `read()` until `grpc.aio.EOF`, or iterate; `cancel()` to stop.

    The deadline is one timer for the whole call (not one per read: streams are the hot path);
    when it fires during a read, it cancels the reading task and the read raises DEADLINE_EXCEEDED.
    """

    def __init__(self, services: LocalServices, agen, context: _Context, deadline: float | None, method: str) -> None:
        self._services = services
        self._agen = agen
        self._context = context
        self._method = method
        self._done = False
        self._expired = False
        self._reader: asyncio.Task | None = None
        self._timer = None if deadline is None else asyncio.get_running_loop().call_at(deadline, self._expire)

    def _expire(self) -> None:
        self._expired = True
        if self._reader is not None:
            self._reader.cancel()

    def _finish(self) -> None:
        self._done = True
        if self._timer is not None:
            self._timer.cancel()

    async def read(self):
        if self._done:
            return grpc.aio.EOF
        if self._expired:
            self._close()
            raise self._context.error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
        self._reader = asyncio.current_task()
        try:
            return await self._agen.__anext__()
        except StopAsyncIteration:
            self._finish()
            return grpc.aio.EOF
        except _Abort as abort:
            self._finish()
            raise self._context.error(abort.code, abort.details) from None
        except asyncio.CancelledError:
            self._finish()
            if self._expired and self._reader.uncancel() == 0:
                raise self._context.error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded") from None
            raise
        except grpc.aio.AioRpcError:
            self._finish()
            raise
        except Exception as exc:
            self._finish()
            log.exception("in-process stream %s failed", self._method)
            raise self._context.error(grpc.StatusCode.UNKNOWN, f"Unexpected error in the handler: {exc!r}") from None
        finally:
            self._reader = None

    def __aiter__(self):
        return self

    async def __anext__(self):
        item = await self.read()
        if item is grpc.aio.EOF:
            raise StopAsyncIteration
        return item

    def cancel(self) -> bool:
        if self._done:
            return False
        self._close()
        return True

    def _close(self) -> None:
        self._finish()
        if not self._agen.ag_running:
            self._services.close_later(self._agen)


class _UnaryStream:
    def __init__(self, services: LocalServices, address: str, method: str) -> None:
        self._services, self._address, self._method = services, address, method

    def __call__(self, request, *, timeout=None, metadata=None, credentials=None, wait_for_ready=None, compression=None):
        deadline = _deadline(timeout)
        context = _Context(deadline, metadata)
        behaviour = self._services.behaviour(self._address, self._method)
        return _StreamCall(self._services, behaviour(request, context), context, deadline, self._method)


class LocalChannel:
    """Stands in for `grpc.aio.Channel` towards a service of this same process."""

    def __init__(self, services: LocalServices, address: str) -> None:
        self._services = services
        self.address = address

    def unary_unary(self, method, request_serializer=None, response_deserializer=None, _registered_method=False):
        return _UnaryUnary(self._services, self.address, method)

    def unary_stream(self, method, request_serializer=None, response_deserializer=None, _registered_method=False):
        return _UnaryStream(self._services, self.address, method)

    async def close(self, grace: float | None = None) -> None:
        """Nothing to release: the server side belongs to its role."""

    async def channel_ready(self) -> None:
        """Always ready."""


async def _refuse_unary(request, context):
    await context.abort(grpc.StatusCode.UNAVAILABLE, "the service is shutting down")


async def _refuse_stream(request, context):
    await context.abort(grpc.StatusCode.UNAVAILABLE, "the service is shutting down")
    yield  # pragma: no cover - makes this an async generator


async def _unimplemented(request, context):
    await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")


class LocalServices:
    """The services this process serves, by the addresses peers use for them."""

    def __init__(self) -> None:
        self._methods: dict[str, dict[str, grpc.RpcMethodHandler]] = {}
        self._closed: set[str] = set()
        self._closing: set[asyncio.Task] = set()

    def register(self, addresses: tuple[str, ...], methods: Mapping[str, grpc.RpcMethodHandler]) -> None:
        for address in addresses:
            self._methods.setdefault(address, {}).update(methods)
            self._closed.discard(address)

    def refuse(self, addresses: tuple[str, ...]) -> None:
        """From now on calls to these addresses fail with UNAVAILABLE, as a stopped server's do."""
        self._closed.update(a for a in addresses if a in self._methods)

    def channel(self, address: str) -> LocalChannel | None:
        return LocalChannel(self, address) if address in self._methods else None

    def behaviour(self, address: str, method: str):
        handler = self._methods.get(address, {}).get(method)
        if handler is None:
            return _unimplemented
        if address in self._closed:
            return _refuse_stream if handler.unary_stream else _refuse_unary
        return handler.unary_stream or handler.unary_unary

    def close_later(self, agen) -> None:
        """Close a cancelled stream's generator (its `finally` frees what it held) in a task we own."""
        task = asyncio.get_running_loop().create_task(agen.aclose())
        self._closing.add(task)
        task.add_done_callback(self._closed_stream)

    def _closed_stream(self, task: asyncio.Task) -> None:
        self._closing.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("closing an in-process stream failed: %r", task.exception())

    async def close(self) -> None:
        """Wait for the cancelled streams still closing."""
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
