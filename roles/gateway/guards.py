"""Limits on what one client address may cost the gateway before it has authenticated.

- Connections: at most `max_connections_per_client` open at once per address; more are closed as
  they arrive (before a byte is read).
- Request rate: a token bucket per address (`requests_per_second_per_client`, bursts of twice
  that); a request over it gets 429 `rate_limit_exceeded` with Retry-After, before its key is checked.
- Slow clients: a connection must deliver each request's headers within `header_timeout` of being
  opened or of its previous answer (so an idle keep-alive connection is closed after that too), and
  each body within `body_timeout`; headers are capped by aiohttp (8 KiB a line), bodies by
  `max_body_bytes`.
Memory stays bounded: per-address state is kept for at most `MAX_TRACKED` addresses, and the
buckets of addresses with no open connection are the first to go.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from cynode.errors import RateLimitError, RequestError

MAX_TRACKED = 65_536


class _Bucket:
    __slots__ = ("stamp", "tokens")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens, self.stamp = tokens, stamp


class ClientGuards:
    def __init__(self, *, max_connections: int, rate: float, header_timeout: float, body_timeout: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_connections = max_connections
        self.rate, self.burst = rate, max(1.0, 2 * rate)
        self.header_timeout, self.body_timeout = header_timeout, body_timeout
        self._clock = clock
        self._open: dict[str, int] = {}
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._connections: dict[object, _GuardedProtocol] = {}  # aiohttp RequestHandler -> its guard
        self.refused_connections = 0

    # Connections.
    def connection_opened(self, address: str) -> bool:
        count = self._open.get(address, 0)
        if count >= self.max_connections:
            self.refused_connections += 1
            return False
        self._open[address] = count + 1
        return True

    def connection_closed(self, address: str) -> None:
        count = self._open.get(address, 0) - 1
        if count > 0:
            self._open[address] = count
        else:
            self._open.pop(address, None)

    def open_connections(self, address: str) -> int:
        return self._open.get(address, 0)

    # Request rate.
    def retry_after(self, address: str) -> float | None:
        """None when `address` may send a request now (taking a token), else seconds to wait."""
        if self.rate <= 0:
            return None
        now = self._clock()
        bucket = self._buckets.get(address)
        if bucket is None:
            bucket = self._buckets[address] = _Bucket(self.burst, now)
            self._trim()
        else:
            self._buckets.move_to_end(address)
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.stamp) * self.rate)
            bucket.stamp = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return None
        return (1.0 - bucket.tokens) / self.rate

    def _trim(self) -> None:
        while len(self._buckets) > MAX_TRACKED:
            self._buckets.popitem(last=False)  # least recently seen first

    def tracked(self) -> int:
        return len(self._buckets)

    def protocol_factory(self, inner: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        return lambda: _GuardedProtocol(self, inner())

    def connection_of(self, handler: object) -> _GuardedProtocol | None:
        return self._connections.get(handler)


class _GuardedProtocol(asyncio.Protocol):
    """Stands between the transport and aiohttp's protocol: counts the connection against its
    address, and closes it when headers do not arrive in time."""

    def __init__(self, guards: ClientGuards, inner: asyncio.Protocol) -> None:
        self._guards, self._inner = guards, inner
        self._address: str | None = None
        self._transport: asyncio.Transport | None = None
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        peer = transport.get_extra_info("peername")
        address = peer[0] if isinstance(peer, tuple) else str(peer)
        if not self._guards.connection_opened(address):
            transport.abort()
            return
        self._address, self._transport = address, transport
        self._guards._connections[self._inner] = self
        self.await_headers()
        self._inner.connection_made(transport)

    def await_headers(self) -> None:
        """The next request's headers must arrive within header_timeout from now."""
        self._cancel_deadline()
        if self._transport is not None and self._guards.header_timeout > 0:
            self._deadline = asyncio.get_running_loop().call_later(self._guards.header_timeout, self._expire)

    def request_started(self) -> None:
        self._cancel_deadline()

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        if self._transport is not None:
            self._transport.abort()

    def data_received(self, data: bytes) -> None:
        if self._address is not None:
            self._inner.data_received(data)

    def eof_received(self):
        if self._address is not None:
            return self._inner.eof_received()
        return None

    def pause_writing(self) -> None:
        if self._address is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._address is not None:
            self._inner.resume_writing()

    def connection_lost(self, exc) -> None:
        if self._address is None:
            return
        self._cancel_deadline()
        self._guards._connections.pop(self._inner, None)
        self._guards.connection_closed(self._address)
        self._address, self._transport = None, None
        self._inner.connection_lost(exc)


class _QuietMalformed(logging.Filter):
    """aiohttp answers malformed HTTP (a line over 8 KiB, a bad header) with 400 itself, and logs a
    traceback at ERROR for each: anyone could fill the log. Those become one DEBUG line."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            if logging.getLogger("cynode.gateway").isEnabledFor(logging.DEBUG):
                logging.getLogger("cynode.gateway").debug("malformed HTTP refused: %s", str(exc).splitlines()[0][:200])
            return False
        return True


_QUIET = _QuietMalformed()


class GuardedSite(web.TCPSite):
    """A TCPSite whose connections pass through `ClientGuards`."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, *, guards: ClientGuards, **kwargs) -> None:
        super().__init__(runner, host, port, **kwargs)
        self._guards = guards
        server_log = logging.getLogger("aiohttp.server")
        if _QUIET not in server_log.filters:
            server_log.addFilter(_QUIET)

    async def start(self) -> None:
        await web.BaseSite.start(self)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._guards.protocol_factory(self._runner.server), self._host, self._port, ssl=self._ssl_context,
            backlog=self._backlog, reuse_address=self._reuse_address, reuse_port=self._reuse_port)


def guard_middleware(guards: ClientGuards):
    @web.middleware
    async def guard(request: web.Request, handler) -> web.StreamResponse:
        connection = guards.connection_of(request.protocol)
        if connection is not None:
            connection.request_started()
        try:
            address = request.remote or ""
            wait = guards.retry_after(address)
            if wait is not None:
                raise RateLimitError(f"too many requests from {address}; slow down", retry_after=wait)
            # Multipart uploads (POST /v1/files) are streamed by their handler, under its own size limit and
            # the same time-out; everything else is read here, within the time-out.
            if request.can_read_body and guards.body_timeout > 0 and not request.content_type.startswith("multipart/"):
                try:
                    async with asyncio.timeout(guards.body_timeout):
                        await request.read()  # kept by aiohttp: the handler's request.json() reads it again
                except TimeoutError:
                    request.protocol.keep_alive(False)  # the rest of the body would read as a request
                    raise RequestError(f"request body not received within {guards.body_timeout:g}s",
                                       status=408, code="request_timeout") from None
            return await handler(request)
        finally:
            if connection is not None:
                connection.await_headers()

    return guard
