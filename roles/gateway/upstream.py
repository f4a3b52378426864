"""The gateway's view of the cluster: the coordinator (control) and workers (token streams).

The coordinator is the static `[gateway] coordinator` address when set, otherwise the leader
recorded in Redis; a call that finds a standby or a dead leader looks the leader up again once.
gRPC failures are translated here into cynode errors the HTTP layer turns into status codes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import grpc
import grpc.aio

from cynode.errors import RequestError, UnavailableError
from cynode.leader_record import read_leader
from cynode.redis_conn import RedisConnection
from cynode.rpc import common_pb2, coordinator_pb2, coordinator_pb2_grpc, worker_pb2_grpc

log = logging.getLogger(__name__)

_RELOOKUP = (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
CONTROL_TIMEOUT_S = 10.0


class Upstream:
    def __init__(self, channel_factory: Callable[[str], grpc.aio.Channel], redis: RedisConnection | None, static_coordinator: str) -> None:
        self._channel_factory = channel_factory
        self._redis = redis
        self._static = static_coordinator
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._coordinator_address: str | None = static_coordinator or None

    def _channel(self, address: str) -> grpc.aio.Channel:
        if address not in self._channels:
            self._channels[address] = self._channel_factory(address)
        return self._channels[address]

    def worker(self, address: str) -> worker_pb2_grpc.WorkerStub:
        return worker_pb2_grpc.WorkerStub(self._channel(address))

    async def _coordinator(self, refresh: bool = False) -> coordinator_pb2_grpc.CoordinatorStub:
        if refresh or self._coordinator_address is None:
            self._coordinator_address = await self._find_coordinator()
        return coordinator_pb2_grpc.CoordinatorStub(self._channel(self._coordinator_address))

    async def _find_coordinator(self) -> str:
        if self._static:
            return self._static
        if self._redis is None:
            raise UnavailableError("no coordinator configured and no Redis to find the leader in", retry_after=2)
        leader = await read_leader(self._redis)
        if leader is None:
            raise UnavailableError("no coordinator leader right now; retry shortly", retry_after=2)
        return leader.address

    async def _call(self, method: str, request):
        """Call a coordinator method, looking the leader up again once if the first try misses."""
        for attempt in range(2):
            stub = await self._coordinator(refresh=attempt > 0)
            try:
                return await getattr(stub, method)(request, timeout=CONTROL_TIMEOUT_S)
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    raise RequestError(
                        f"{exc.details()} or you do not have access to it.", status=404, param="model", code="model_not_found"
                    ) from None
                if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    raise UnavailableError(exc.details() or "queue full", retry_after=_retry_after(exc)) from None
                if exc.code() in _RELOOKUP and attempt == 0 and not _is_capacity(exc):
                    log.info("coordinator %s: %s; looking the leader up again", self._coordinator_address, exc.code().name)
                    continue
                raise UnavailableError(f"coordinator: {exc.details() or exc.code().name}", retry_after=2) from None
        raise AssertionError("unreachable")

    async def admit(self, *, request_id: str, model: str, priority: int, key_name: str, exclude: list[str]) -> coordinator_pb2.Assignment:
        reply = await self._call("Admit", coordinator_pb2.AdmitRequest(
            request_id=request_id, model=model, priority=priority, api_key_name=key_name, exclude_workers=exclude,
        ))
        return reply.assignment

    async def complete(self, assignment: coordinator_pb2.Assignment, *, ok: bool, error: str = "",
                       prompt_tokens: int = 0, completion_tokens: int = 0) -> None:
        """Report the end of a request; best effort (the lease expires on its own if this is lost)."""
        try:
            await self._call("Complete", coordinator_pb2.CompleteRequest(
                lease_id=assignment.lease_id, worker_id=assignment.worker_id, ok=ok, error=error, epoch=assignment.epoch,
                usage=common_pb2.Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens),
            ))
        except (UnavailableError, RequestError) as exc:
            log.warning("completion of lease %s not reported: %s", assignment.lease_id, exc.message)

    async def list_models(self) -> list[common_pb2.ModelInfo]:
        reply = await self._call("ListModels", coordinator_pb2.ListModelsRequest())
        return list(reply.models)

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()


def _is_capacity(exc: grpc.aio.AioRpcError) -> bool:
    """UNAVAILABLE from a live leader that simply has no free worker: looking again won't help."""
    return exc.code() == grpc.StatusCode.UNAVAILABLE and "no healthy worker" in (exc.details() or "")


def _retry_after(exc: grpc.aio.AioRpcError) -> float:
    for key, value in exc.trailing_metadata() or ():
        if key == "retry-after":
            try:
                return float(value)
            except ValueError:
                pass
    return 1.0
