"""The gateway's view of the cluster: the coordinator (control) and workers (token streams).

The coordinator is the static `[gateway] coordinator` address when set, otherwise the leader
recorded in Redis. Control calls ride out a leader failover: a call that finds a standby, a dead
leader or no leader looks the leader up again and retries with jittered backoff until its patience
runs out. Failed calls arrive as cynode errors (`cynode.rpc.errors`), so what the coordinator or a
worker said (a 404, a full queue, a too-long prompt) reaches the client unchanged.

Reports that nobody waits for (a finished request's Complete, a Cancel) go off the response path,
into tasks the gateway owns and waits for when it stops.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import grpc.aio
from cynode.errors import CapacityError, CynodeError, TaskEndedError, UnavailableError
from cynode.leader_record import read_leader
from cynode.redis_conn import RedisConnection
from cynode.rpc import coordinator_pb2_grpc, worker_pb2_grpc
from cynode.rpc.errors import rpc_errors
from cynode.tasks import BackgroundTasks
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_delay,
    wait_random_exponential,
)

from .leases import LeaseKeeper

log = logging.getLogger(__name__)

CONTROL_TIMEOUT_S = 5.0
# Longer than a leader failover with the default TTL, so clients never see one.
FAILOVER_PATIENCE_S = 30.0
REPORT_PATIENCE_S = 15.0


def _failover(exc: BaseException) -> bool:
    """Errors that mean "no coordinator can answer right now" (a standby, a dead leader, no leader, Redis
    restarting): find the leader again and retry. A full queue or a finished task are answers."""
    return isinstance(exc, UnavailableError) and not isinstance(exc, (CapacityError, TaskEndedError))


def _in_backoff(channel) -> bool:
    """A network channel waiting out gRPC's reconnect backoff (in-process channels never are)."""
    get_state = getattr(channel, "get_state", None)
    return get_state is not None and get_state() == grpc.ChannelConnectivity.TRANSIENT_FAILURE


class Upstream:
    def __init__(self, channel_factory: Callable[[str], grpc.aio.Channel], redis: RedisConnection | None,
                 static_coordinator: str) -> None:
        self._channel_factory = channel_factory
        self._redis = redis
        self._static = static_coordinator
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._workers: dict[str, worker_pb2_grpc.WorkerStub] = {}
        self._coordinator: coordinator_pb2_grpc.CoordinatorStub | None = None
        self._coordinator_address = ""
        self.reports = BackgroundTasks("gateway-reports")
        self.leases = LeaseKeeper(self.call)

    def _channel(self, address: str) -> grpc.aio.Channel:
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = self._channel_factory(address)
        return channel

    def worker(self, address: str) -> worker_pb2_grpc.WorkerStub:
        stub = self._workers.get(address)
        if stub is None:
            stub = self._workers[address] = worker_pb2_grpc.WorkerStub(self._channel(address))
        return stub

    async def _find_coordinator(self) -> coordinator_pb2_grpc.CoordinatorStub:
        if self._coordinator is not None:
            return self._coordinator
        if self._static:
            address = self._static
        elif self._redis is None:
            raise UnavailableError("no coordinator configured and no Redis to find the leader in", retry_after=2)
        else:
            leader = await read_leader(self._redis)
            if leader is None:
                raise UnavailableError("no coordinator leader right now; retry shortly", retry_after=2)
            address = leader.address
        self._coordinator_address = address
        channel = self._channels.get(address)
        if _in_backoff(channel):
            # In reconnect backoff (up to seconds) from an earlier failure of this address: a leader
            # that just took over there must be reached now, so dial it afresh.
            del self._channels[address]
            self.reports.spawn(channel.close(grace=None), "close a failed channel")
        self._coordinator = coordinator_pb2_grpc.CoordinatorStub(self._channel(address))
        return self._coordinator

    async def _call_once(self, method: str, request, timeout: float):
        stub = await self._find_coordinator()
        with rpc_errors(f"coordinator {self._coordinator_address}"):
            return await getattr(stub, method)(request, timeout=timeout)

    async def call(self, method: str, request, *, patience: float = FAILOVER_PATIENCE_S, timeout: float = CONTROL_TIMEOUT_S):
        """Call a coordinator method, following the leader through failovers for up to `patience` s."""
        try:
            return await self._call_once(method, request, timeout)
        except CynodeError as exc:
            if not _failover(exc) or patience <= 0:
                raise
            log.info("coordinator %s: %s; looking for the leader again", self._coordinator_address or "?", exc.message)
        try:
            async for attempt in AsyncRetrying(stop=stop_after_delay(patience), retry=retry_if_exception(_failover),
                                               wait=wait_random_exponential(multiplier=0.1, max=1.0), reraise=True):
                with attempt:
                    self._coordinator = None
                    return await self._call_once(method, request, timeout)
        except CynodeError as exc:
            if not _failover(exc):
                raise
            raise UnavailableError(f"coordinator unavailable: {exc.message}", retry_after=2) from None

    def report(self, method: str, request) -> None:
        """Send a report nobody waits for, off the response path (the gateway waits for it at stop)."""
        self.reports.spawn(self._report(method, request), method)

    async def _report(self, method: str, request) -> None:
        try:
            await self.call(method, request, patience=REPORT_PATIENCE_S)
        except CynodeError as exc:
            # The lease then expires and the coordinator requeues or abandons the task on its own.
            log.warning("%s of task %s not reported: %s", method, getattr(request, "task_id", "?"), exc.message)

    async def close(self, timeout: float = 5.0) -> None:
        await self.reports.wait(timeout)
        await self.reports.close()
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
        self._workers.clear()
