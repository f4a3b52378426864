"""One role's gRPC server: its services on the network, and in-process for roles of the same node.

Every method is registered with the error mapping of `cynode.rpc.errors` (a handler raises a
`CynodeError`; the caller gets its status and metadata), on the network server and in
`LocalServices` alike, so a co-located caller and a remote one see the same behaviour.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import grpc
import grpc.aio
from cynode.errors import StartupError

from .errors import map_handler
from .local import LocalServices

__all__ = ["RpcServer"]

# Peers ping every 2 s while calls are open, to find a stopped peer fast (cynode.peer_auth); a
# server must not take that for abuse (gRPC's default would answer with GOAWAY "too_many_pings").
SERVER_OPTIONS = (
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 1_000),
    ("grpc.http2.max_ping_strikes", 0),
    ("grpc.keepalive_permit_without_calls", 1),
)


class _Capture:
    """Takes the place of a server in a generated `add_*Servicer_to_server`, keeping the handlers."""

    def __init__(self) -> None:
        self.services: dict[str, dict[str, grpc.RpcMethodHandler]] = {}

    def add_generic_rpc_handlers(self, handlers) -> None:
        """The generated code also registers a generic handler; the registered methods suffice."""

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self.services[service] = handlers


class RpcServer:
    def __init__(self, section: str, listen: str, *, local: LocalServices, addresses: Sequence[str],
                 interceptors: Sequence[grpc.aio.ServerInterceptor] = (), options: Sequence[tuple] = (),
                 credentials: grpc.ServerCredentials | None = None) -> None:
        """`section` names the node.toml table in errors; `addresses` are those peers dial (the
        advertised one, and the listen address itself) and under which co-located roles find it.
        `credentials`: the port's TLS (a daemon always passes the cluster's mTLS, cynode.peer_auth);
        None serves plaintext, for test harnesses only."""
        self._section = section
        self._listen = listen
        self._local = local
        self._addresses = tuple(dict.fromkeys((*addresses, listen)))
        self._credentials = credentials
        self._server = grpc.aio.server(interceptors=list(interceptors), options=[*SERVER_OPTIONS, *options])
        self._methods: dict[str, grpc.RpcMethodHandler] = {}

    def add(self, add_to_server: Callable[[object, object], None], servicer: object) -> None:
        """Serve `servicer` (`add_to_server` is the generated `add_<Service>Servicer_to_server`); its
        `CALLERS` (`cynode.rpc.callers`) say which roles may call each method."""
        capture = _Capture()
        add_to_server(servicer, capture)
        callers = getattr(servicer, "CALLERS", {})
        for service, handlers in capture.services.items():
            wrapped = {name: map_handler(f"/{service}/{name}", h, callers.get(name, frozenset()))
                       for name, h in handlers.items()}
            self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, wrapped),))
            self._server.add_registered_method_handlers(service, wrapped)
            self._methods.update({f"/{service}/{name}": h for name, h in wrapped.items()})

    async def start(self) -> None:
        try:
            if self._credentials is None:
                bound = self._server.add_insecure_port(self._listen)
            else:
                bound = self._server.add_secure_port(self._listen, self._credentials)
        except RuntimeError:  # newer grpcio raises instead of returning 0
            bound = 0
        if bound == 0:
            raise StartupError(f"[{self._section}] listen {self._listen!r}: cannot bind (port in use?)")
        await self._server.start()
        self._local.register(self._addresses, self._methods)

    async def stop(self, grace: float | None) -> None:
        """Refuse new calls (network and in-process) and let running ones finish within `grace` s."""
        self._local.refuse(self._addresses)
        await self._server.stop(grace)
