"""Authenticated gRPC between peers, keyed by the cluster keyring.

Every call carries `x-cynode-auth: <unix-ms>.<nonce>.<hmac>` where the HMAC-SHA256 (under a key
derived from the cluster key, so the raw key never signs anything directly) covers the time, the
nonce and the method name. Servers accept any key of the ring and a clock skew of `MAX_SKEW`.
Calls without a valid signature are refused with UNAUTHENTICATED before any handler runs.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable

import grpc
import grpc.aio

HEADER = "x-cynode-auth"
MAX_SKEW_MS = 60_000
_LABEL = b"cynode grpc peer auth v1"


class PeerAuth:
    def __init__(self, keys: tuple[bytes, ...], clock: Callable[[], float] = time.time) -> None:
        self.replace_keys(keys)
        self._clock = clock

    def replace_keys(self, keys: tuple[bytes, ...]) -> None:
        """Sign and verify with a new keyring from the next call on (SIGHUP reloads the key file)."""
        if not keys:
            raise ValueError("PeerAuth needs at least one key")
        self._signing = [hmac.new(k, _LABEL, hashlib.sha256).digest() for k in keys]

    def sign(self, method: str) -> str:
        stamp = str(int(self._clock() * 1000))
        nonce = secrets.token_hex(8)
        mac = hmac.new(self._signing[0], f"{stamp}.{nonce}.{method}".encode(), hashlib.sha256).hexdigest()
        return f"{stamp}.{nonce}.{mac}"

    def verify(self, token: str | None, method: str) -> bool:
        if not token:
            return False
        try:
            stamp, nonce, mac = token.split(".")
            skew = abs(int(self._clock() * 1000) - int(stamp))
        except ValueError:
            return False
        if skew > MAX_SKEW_MS:
            return False
        message = f"{stamp}.{nonce}.{method}".encode()
        return any(
            hmac.compare_digest(hmac.new(k, message, hashlib.sha256).hexdigest(), mac) for k in self._signing
        )

    def channel(self, address: str) -> grpc.aio.Channel:
        """An insecure-transport channel whose every call is signed."""
        # One interceptor object per call shape: grpc.aio files each object under a single shape.
        return grpc.aio.insecure_channel(
            address, interceptors=[_UnarySigner(self), _StreamSigner(self)], options=_CHANNEL_OPTIONS
        )

    def server_interceptor(self) -> grpc.aio.ServerInterceptor:
        return _Verifier(self)


_CHANNEL_OPTIONS = [
    # gRPC's default reconnect backoff grows to 2 minutes; a restarted peer must be seen in seconds.
    ("grpc.initial_reconnect_backoff_ms", 500),
    ("grpc.min_reconnect_backoff_ms", 500),
    ("grpc.max_reconnect_backoff_ms", 5_000),
    # While calls are open, ping the peer every 2 s: a peer that stopped (SIGSTOP, a wedged host)
    # answers TCP but not HTTP/2 pings, and its calls fail in about 4 s instead of at their deadline,
    # so a stream migrates and an Admit finds the new leader. Servers allow it (cynode.rpc.server).
    ("grpc.keepalive_time_ms", 2_000),
    ("grpc.keepalive_timeout_ms", 2_000),
    ("grpc.http2.ping_timeout_ms", 2_000),  # newer gRPC cores time pings out by this one
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]


def _signed(auth: PeerAuth, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
    method = details.method.decode() if isinstance(details.method, bytes) else details.method
    metadata = grpc.aio.Metadata(*(details.metadata or ()))
    metadata.add(HEADER, auth.sign(method))
    return grpc.aio.ClientCallDetails(details.method, details.timeout, metadata, details.credentials, details.wait_for_ready)


class _UnarySigner(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, auth: PeerAuth) -> None:
        self._auth = auth

    async def intercept_unary_unary(self, continuation, client_call_details, request):
        return await continuation(_signed(self._auth, client_call_details), request)


class _StreamSigner(grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, auth: PeerAuth) -> None:
        self._auth = auth

    async def intercept_unary_stream(self, continuation, client_call_details, request):
        return await continuation(_signed(self._auth, client_call_details), request)


class _Verifier(grpc.aio.ServerInterceptor):
    def __init__(self, auth: PeerAuth) -> None:
        self._auth = auth

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        metadata = dict(handler_call_details.invocation_metadata or ())
        if handler is None or self._auth.verify(metadata.get(HEADER), handler_call_details.method):
            return handler
        return _refusing(handler)


_REFUSAL = "peer authentication failed: this node does not share the caller's cluster key"


async def _deny(request, context):
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, _REFUSAL)


async def _deny_stream(request, context):
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, _REFUSAL)
    yield  # pragma: no cover - makes this an async generator


def _refusing(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that refuses the call."""
    kwargs = dict(request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(_deny_stream, **kwargs)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(_deny, **kwargs)
    if handler.stream_stream:
        return grpc.stream_stream_rpc_method_handler(_deny_stream, **kwargs)
    return grpc.unary_unary_rpc_method_handler(_deny, **kwargs)
