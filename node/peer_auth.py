"""Mutually authenticated, encrypted gRPC between peers: TLS under the cluster CA (`cynode.pki`).

Every gRPC port a node opens requires a client certificate issued under the CA of a key of the
cluster keyring, and presents the node's own; every channel a node dials verifies the server's
certificate the same way and presents the node's. Nobody without the cluster key can complete a
handshake, read a call or replay one (TLS gives each connection fresh keys and orders its records;
this replaces the HMAC header of earlier versions, which covered neither the body nor replays).
The caller's node id and roles are read from its certificate (`peer_identity`), never from what it
sends; servers authorize each method by the roles (`cynode.rpc.callers`).

Key material follows the keyring (`replace_keys`, on SIGHUP): servers trust every key's CA at once
and pick up a change on their next handshake; the leaf certificate is issued under the first key
and renewed when half its life has passed. Channels (`PeerChannel`) are made once per peer and kept;
each switches to a fresh connection with the new certificate when the material changes, and lets
calls on the old one finish. In-process calls (`cynode.rpc.local`) never reach here: they do not
leave the process, so there is nothing to authenticate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc
import grpc.aio

from .pki import LEAF_LIFETIME, PEER_NAME, ROLE_URI_PREFIX, derive_ca, issue_leaf, node_uri

log = logging.getLogger(__name__)

OLD_CHANNEL_GRACE = 900.0
"""Seconds calls on a channel replaced by new key material may still run before it is closed."""


@dataclass(frozen=True)
class _Material:
    generation: int
    trusted_pem: bytes  # every CA of the ring, concatenated
    key_pem: bytes
    certificate_pem: bytes
    renew_at: float


class PeerAuth:
    def __init__(self, keys: tuple[bytes, ...], node_id: str = "", *, addresses: tuple[str, ...] = (),
                 roles: tuple[str, ...] = (), clock: Callable[[], float] = time.time,
                 lifetime: float = LEAF_LIFETIME) -> None:
        """`node_id` goes into this node's certificate (default: a random `client-...` name, for tools);
        `addresses` are hosts peers reach it at, added as extra names; `roles` those the node runs
        (none for a tool), which decide what it may call on a peer (`cynode.rpc.callers`)."""
        self.node_id = node_id or f"client-{secrets.token_hex(4)}"
        self.roles = tuple(roles)
        self._addresses = addresses
        self._clock = clock
        self._lifetime = lifetime
        self._lock = threading.Lock()  # the server's certificate fetcher runs on a gRPC thread
        self._generation = 0
        self._keys: tuple[bytes, ...] = ()
        self.replace_keys(keys)

    def replace_keys(self, keys: tuple[bytes, ...]) -> None:
        """Trust and sign with a new keyring from the next handshake on (SIGHUP reloads the key file)."""
        if not keys:
            raise ValueError("PeerAuth needs at least one key")
        cas = [derive_ca(k) for k in keys]
        with self._lock:
            self._keys = tuple(keys)
            self._cas = cas
            self._material = self._issue()
        log.info("peer TLS: certificate for %s under CA %s; trusting %d CA(s)", self.node_id, cas[0].fingerprint, len(cas))

    def _issue(self) -> _Material:
        now = self._clock()
        leaf = issue_leaf(self._cas[0], self.node_id, addresses=self._addresses, roles=self.roles, now=now,
                          lifetime=self._lifetime)
        self._generation += 1
        return _Material(self._generation, b"".join(ca.pem for ca in self._cas), leaf.key_pem, leaf.certificate_pem,
                         renew_at=now + self._lifetime / 2)

    def material(self) -> _Material:
        """The current key material, renewing the leaf certificate first when it is due."""
        material = self._material
        if self._clock() < material.renew_at:
            return material
        with self._lock:
            if self._clock() >= self._material.renew_at:
                self._material = self._issue()
                log.info("peer TLS: renewed the certificate of %s", self.node_id)
            return self._material

    @property
    def ca_fingerprints(self) -> tuple[str, ...]:
        return tuple(ca.fingerprint for ca in self._cas)

    def channel(self, address: str) -> PeerChannel:
        """A channel to a peer's gRPC service, kept current with the key material."""
        return PeerChannel(self, address)

    # Server side.
    def server_credentials(self) -> grpc.ServerCredentials:
        """Credentials that require a client certificate from a CA of the ring; re-read on each handshake."""
        served = [self.material()]

        def fetch() -> grpc.ServerCertificateConfiguration | None:
            current = self.material()
            if current.generation == served[0].generation:
                return None  # keep the configuration in use
            served[0] = current
            return _server_configuration(current)

        return grpc.dynamic_ssl_server_credentials(_server_configuration(served[0]), fetch,
                                                   require_client_authentication=True)


def _server_configuration(m: _Material) -> grpc.ServerCertificateConfiguration:
    return grpc.ssl_server_certificate_configuration([(m.key_pem, m.certificate_pem)], root_certificates=m.trusted_pem)


@dataclass(frozen=True)
class Peer:
    """Who called, as its certificate says."""

    node_id: str
    roles: frozenset[str]


def peer_identity(context) -> Peer | None:
    """The node id and roles in the certificate the caller presented (None in-process or without TLS)."""
    try:
        auth = context.auth_context()
    except (AttributeError, NotImplementedError):
        return None
    names = auth.get("x509_common_name") or ()
    if not names:
        return None
    uris = [uri.decode(errors="replace") for uri in auth.get("peer_uri") or ()]
    node = node_uri("")
    node_id = next((u.removeprefix(node) for u in uris if u.startswith(node)), names[0].decode(errors="replace"))
    roles = frozenset(u.removeprefix(ROLE_URI_PREFIX) for u in uris if u.startswith(ROLE_URI_PREFIX))
    return Peer(node_id, roles)


def peer_node_id(context) -> str | None:
    """The node id in the certificate the caller presented (None in-process or without TLS)."""
    peer = peer_identity(context)
    return peer.node_id if peer else None


_CHANNEL_OPTIONS = [
    # Peers are dialled by address; every leaf certificate carries PEER_NAME, checked instead.
    ("grpc.ssl_target_name_override", PEER_NAME),
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


class PeerChannel(grpc.aio.Channel):
    """One peer's channel for as long as the caller keeps it. Stubs bind their methods once; each
    call goes to the connection made with the current key material, so a renewed certificate or a
    rotated key reaches channels already held, while calls on the previous connection finish."""

    def __init__(self, auth: PeerAuth, address: str) -> None:
        self._auth = auth
        self._address = address
        self._generation = -1
        self._channel: grpc.aio.Channel | None = None
        self._retiring: set[asyncio.Task] = set()
        self._closed = False

    def current(self) -> grpc.aio.Channel:
        material = self._auth.material()
        if material.generation != self._generation or self._channel is None:
            previous = self._channel
            credentials = grpc.ssl_channel_credentials(material.trusted_pem, material.key_pem, material.certificate_pem)
            self._channel = grpc.aio.secure_channel(self._address, credentials, options=_CHANNEL_OPTIONS)
            self._generation = material.generation
            if previous is not None:
                self._retire(previous)
        return self._channel

    def _retire(self, channel: grpc.aio.Channel) -> None:
        try:
            task = asyncio.get_running_loop().create_task(channel.close(OLD_CHANNEL_GRACE))
        except RuntimeError:  # no loop: nothing can be running on it either
            return
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    def _method(self, kind: str, method: str, request_serializer=None, response_deserializer=None,
                _registered_method: bool = False) -> _Method:
        return _Method(self, kind, method, request_serializer, response_deserializer)

    def unary_unary(self, method, request_serializer=None, response_deserializer=None, _registered_method=False):
        return self._method("unary_unary", method, request_serializer, response_deserializer)

    def unary_stream(self, method, request_serializer=None, response_deserializer=None, _registered_method=False):
        return self._method("unary_stream", method, request_serializer, response_deserializer)

    def stream_unary(self, method, request_serializer=None, response_deserializer=None, _registered_method=False):
        return self._method("stream_unary", method, request_serializer, response_deserializer)

    def stream_stream(self, method, request_serializer=None, response_deserializer=None, _registered_method=False):
        return self._method("stream_stream", method, request_serializer, response_deserializer)

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return self.current().get_state(try_to_connect)

    async def wait_for_state_change(self, last_observed_state) -> None:
        await self.current().wait_for_state_change(last_observed_state)

    async def channel_ready(self) -> None:
        await self.current().channel_ready()

    async def close(self, grace: float | None = None) -> None:
        self._closed = True
        for task in list(self._retiring):
            task.cancel()
        if self._channel is not None:
            await self._channel.close(grace)
        for task in list(self._retiring):
            with contextlib.suppress(BaseException):
                await task

    async def __aenter__(self) -> PeerChannel:
        return self

    async def __aexit__(self, exc_type, exc_val, exc_tb) -> None:
        await self.close(None)


class _Method:
    """A stub's method: the multicallable of the channel's current connection, made once per connection."""

    __slots__ = ("_args", "_bound", "_channel", "_generation", "_kind")

    def __init__(self, channel: PeerChannel, kind: str, *args) -> None:
        self._channel, self._kind, self._args = channel, kind, args
        self._generation, self._bound = -1, None

    def __call__(self, *args, **kwargs):
        current = self._channel.current()
        if self._channel._generation != self._generation or self._bound is None:
            method, serializer, deserializer = self._args
            self._bound = getattr(current, self._kind)(method, request_serializer=serializer,
                                                       response_deserializer=deserializer, _registered_method=True)
            self._generation = self._channel._generation
        return self._bound(*args, **kwargs)
