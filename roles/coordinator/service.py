"""The coordinator's gRPC service: control only (Admit, Complete, ListModels); no tokens pass here."""

from __future__ import annotations

import logging
import time

import grpc
import grpc.aio

from cynode.errors import UnavailableError
from cynode.rpc import common_pb2, coordinator_pb2, coordinator_pb2_grpc

from .leader import LeaderElection
from .leases import LEASE_TTL_S, LeaseStore
from .metrics import CoordinatorMetrics
from .pool import WorkerPool

log = logging.getLogger(__name__)


class CoordinatorService(coordinator_pb2_grpc.CoordinatorServicer):
    def __init__(self, election: LeaderElection, pool: WorkerPool, leases: LeaseStore, metrics: CoordinatorMetrics) -> None:
        self._election = election
        self._pool = pool
        self._leases = leases
        self._metrics = metrics
        self._lease_workers: dict[str, str] = {}

    async def Admit(self, request: coordinator_pb2.AdmitRequest, context: grpc.aio.ServicerContext) -> coordinator_pb2.AdmitReply:
        epoch = self._election.epoch
        if not self._election.is_leader:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "not the leader")
        if not self._pool.knows(request.model):
            self._metrics.requests.labels("model_not_found").inc()
            await context.abort(grpc.StatusCode.NOT_FOUND, f"The model `{request.model}` does not exist")
        picked = self._pool.pick(request.model, request.exclude_workers)
        if picked is None:
            self._metrics.requests.labels("no_worker").inc()
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"no healthy worker serves `{request.model}` right now")
        worker, model_id = picked
        try:
            lease_id = await self._leases.grant(epoch=epoch, worker_id=worker.id, model=model_id, request_id=request.request_id)
        except UnavailableError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, exc.message)
        if lease_id is None:
            log.warning("lease refused for epoch %d: a newer leader exists", epoch)
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "not the leader (fenced)")
        worker.leased += 1
        self._lease_workers[lease_id] = worker.id
        self._metrics.requests.labels("assigned").inc()
        return coordinator_pb2.AdmitReply(assignment=coordinator_pb2.Assignment(
            worker_id=worker.id, worker_address=worker.address, lease_id=lease_id, epoch=epoch,
            lease_deadline_ms=int((time.time() + LEASE_TTL_S) * 1000), model=model_id,
        ))

    async def Complete(self, request: coordinator_pb2.CompleteRequest, context: grpc.aio.ServicerContext) -> coordinator_pb2.CompleteReply:
        worker_id = self._lease_workers.pop(request.lease_id, None)
        if worker_id and worker_id in self._pool.workers:
            worker = self._pool.workers[worker_id]
            worker.leased = max(0, worker.leased - 1)
        self._metrics.requests.labels("completed" if request.ok else "failed").inc()
        self._metrics.tokens.inc(request.usage.completion_tokens)
        try:
            await self._leases.release(epoch=request.epoch or self._election.epoch, lease_id=request.lease_id)
        except UnavailableError as exc:
            log.warning("lease %s not released: %s", request.lease_id, exc.message)
        return coordinator_pb2.CompleteReply()

    async def ListModels(self, request: coordinator_pb2.ListModelsRequest, context: grpc.aio.ServicerContext) -> coordinator_pb2.ListModelsReply:
        return coordinator_pb2.ListModelsReply(models=[
            common_pb2.ModelInfo(id=model_id, aliases=aliases, context_length=context_length, loaded=True)
            for model_id, (aliases, context_length) in sorted(self._pool.models().items())
        ])
