"""The gateway's view of the cluster: the coordinator (control) and workers (token streams).

The coordinator is the static `[gateway] coordinator` address when set, otherwise the leader
recorded in Redis. Control calls ride out a leader failover: a call that finds a standby, a dead
leader or no leader looks the leader up again and retries with backoff until its deadline.
gRPC failures are translated here into cynode errors the HTTP layer turns into status codes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import grpc
import grpc.aio

from cynode.errors import CapacityError, RequestError, UnavailableError
from cynode.leader_record import read_leader
from cynode.redis_conn import RedisConnection
from cynode.rpc import coordinator_pb2_grpc, worker_pb2_grpc

log = logging.getLogger(__name__)

# Codes that mean "this coordinator cannot answer now": find the leader again and retry.
_FAILOVER = (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
             grpc.StatusCode.CANCELLED, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
CONTROL_TIMEOUT_S = 5.0
# Longer than a leader failover with the default TTL (about 10 s), so clients never see one.
FAILOVER_PATIENCE_S = 30.0


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

    async def _find_coordinator(self) -> str:
        if self._static:
            return self._static
        if self._redis is None:
            raise UnavailableError("no coordinator configured and no Redis to find the leader in", retry_after=2)
        leader = await read_leader(self._redis)
        if leader is None:
            raise UnavailableError("no coordinator leader right now; retry shortly", retry_after=2)
        return leader.address

    async def call(self, method: str, request, *, patience: float = FAILOVER_PATIENCE_S, timeout: float = CONTROL_TIMEOUT_S):
        """Call a coordinator method, following the leader through failovers for up to `patience` s."""
        deadline = time.monotonic() + patience
        delay = 0.1
        refresh = False
        while True:
            try:
                if refresh or self._coordinator_address is None:
                    self._coordinator_address = await self._find_coordinator()
                stub = coordinator_pb2_grpc.CoordinatorStub(self._channel(self._coordinator_address))
                call_timeout = max(0.5, min(timeout, deadline - time.monotonic()))
                return await getattr(stub, method)(request, timeout=call_timeout)
            except grpc.aio.AioRpcError as exc:
                _raise_final(exc)
                problem: Exception = exc
                log.info("coordinator %s: %s (%s); looking for the leader again",
                         self._coordinator_address, exc.code().name, exc.details())
            except UnavailableError as exc:
                problem = exc
            if time.monotonic() + delay >= deadline:
                detail = problem.details() if isinstance(problem, grpc.aio.AioRpcError) else getattr(problem, "message", str(problem))
                raise UnavailableError(f"coordinator unavailable: {detail}", retry_after=2) from None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)
            refresh = True

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()


def _raise_final(exc: grpc.aio.AioRpcError) -> None:
    """Answers a retry cannot change, as the errors the HTTP layer knows."""
    code = exc.code()
    if code == grpc.StatusCode.NOT_FOUND:
        raise RequestError(f"{exc.details()} or you do not have access to it.", status=404, param="model",
                           code="model_not_found") from None
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        raise CapacityError(exc.details() or "the queue is full", retry_after=_retry_after(exc)) from None
    if code == grpc.StatusCode.ABORTED:
        raise UnavailableError(exc.details() or "the task was abandoned", retry_after=1) from None
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        raise RequestError(exc.details() or "invalid request") from None
    if code not in _FAILOVER:
        raise UnavailableError(f"coordinator: {exc.details() or code.name}", retry_after=2) from None


def _retry_after(exc: grpc.aio.AioRpcError) -> float:
    for key, value in exc.trailing_metadata() or ():
        if key == "retry-after":
            try:
                return float(value)
            except ValueError:
                pass
    return 1.0
