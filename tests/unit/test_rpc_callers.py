"""Methods are authorized by the roles in the caller's certificate: real services (a worker on the sim
engine, a coordinator on the session's Redis) behind real mTLS on loopback.

A worker streams tokens only for a gateway; a coordinator admits, heart-beats, completes and cancels
only for a gateway; reading methods are open to any member and to tools (no role). The roles come
from the certificate (cynode.rpc.callers), so a client cannot claim one in its metadata.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import uuid

import grpc
import grpc.aio
import pytest

from cynode.engines.memory_manager import MemoryManager
from cynode.engines.registry import ModelRegistry, sim_spec
from cynode.engines.sim_engine import SimEngine
from cynode.peer_auth import PeerAuth, peer_identity
from cynode.roles.coordinator.dispatcher import Dispatcher
from cynode.roles.coordinator.leader import LeaderElection
from cynode.roles.coordinator.metrics import CoordinatorMetrics
from cynode.roles.coordinator.pool import WorkerPool
from cynode.roles.coordinator.service import CoordinatorService
from cynode.roles.coordinator.task_queue import TaskQueue
from cynode.roles.worker.metrics import WorkerMetrics
from cynode.roles.worker.service import WorkerService
from cynode.rpc import common_pb2, coordinator_pb2, coordinator_pb2_grpc, worker_pb2, worker_pb2_grpc
from cynode.rpc.local import LocalServices
from cynode.rpc.server import RpcServer
from cynode.telemetry import Telemetry
from daemon_harness import free_port

KEY = secrets.token_bytes(32)


@contextlib.asynccontextmanager
async def worker_server():
    manager = MemoryManager(ModelRegistry([sim_spec()], builtin=False), budget_bytes=1 << 30,
                            factory=lambda spec: SimEngine(spec.id, ttft=0.0, tokens_per_second=1000.0, answer_tokens=3),
                            per_model_concurrency=4)
    await manager.load("sim")
    address = f"127.0.0.1:{free_port()}"
    server = RpcServer("worker", address, local=LocalServices(), addresses=(address,),
                       credentials=PeerAuth((KEY,), "worker-1", roles=("worker",)).server_credentials())
    server.add(worker_pb2_grpc.add_WorkerServicer_to_server,
               WorkerService("worker-1", "sim", manager, WorkerMetrics.register(Telemetry("w"))))
    await server.start()
    try:
        yield address
    finally:
        await server.stop(None)
        await manager.close()


@contextlib.asynccontextmanager
async def coordinator_server(redis_conn):
    address = f"127.0.0.1:{free_port()}"
    election = LeaderElection(redis_conn, node_id="c1", boot_id=uuid.uuid4().hex[:8], address=address, ttl=3.0)
    pool = WorkerPool(channel_factory=grpc.aio.insecure_channel, interval=1.0, timeout=1.0, max_failures=1)
    queue = TaskQueue(redis_conn, lambda: election.epoch, max_size=10, max_retries=1)
    service = CoordinatorService(redis=redis_conn, election=election, pool=pool, queue=queue,
                                 dispatcher=Dispatcher(queue, pool, lease_ttl=30.0, is_leader=lambda: False), cache=None,
                                 cache_nondeterministic=False, metrics=CoordinatorMetrics.register(Telemetry("c")))
    server = RpcServer("coordinator", address, local=LocalServices(), addresses=(address,),
                       credentials=PeerAuth((KEY,), "coordinator-1", roles=("coordinator",)).server_credentials())
    server.add(coordinator_pb2_grpc.add_CoordinatorServicer_to_server, service)
    await server.start()
    try:
        yield address
    finally:
        await server.stop(None)


def predict() -> worker_pb2.PredictRequest:
    return worker_pb2.PredictRequest(model="sim", messages=[common_pb2.ChatMessage(role="user", content="hi")],
                                     sampling=common_pb2.SamplingParams(max_tokens=3))


async def stream_text(channel) -> str:
    call = worker_pb2_grpc.WorkerStub(channel).Predict(predict(), timeout=20)
    return "".join([chunk.text async for chunk in call])


async def test_a_worker_streams_tokens_for_a_gateway_only_and_answers_health_to_anyone(caplog):
    async with worker_server() as address:
        async with PeerAuth((KEY,), "gw-1", roles=("gateway",)).channel(address) as channel:
            assert await stream_text(channel)
        for caller, roles in (("tool", ()), ("worker-2", ("worker",)), ("coord", ("coordinator",))):
            async with PeerAuth((KEY,), caller, roles=roles).channel(address) as channel:
                stub = worker_pb2_grpc.WorkerStub(channel)
                with caplog.at_level(logging.WARNING, "cynode.rpc.callers"), pytest.raises(grpc.aio.AioRpcError) as refused:
                    # Claiming the role in metadata changes nothing: the certificate decides.
                    await stream_text(channel) if caller != "coord" else await stub.Predict(
                        predict(), timeout=20, metadata=(("x-cynode-role", "gateway"),)).read()
                assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
                assert "is for a gateway" in refused.value.details() and caller in refused.value.details()
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await stub.Embed(worker_pb2.EmbedRequest(model="sim", input=["x"]), timeout=20)
                assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
                assert (await stub.Health(worker_pb2.HealthRequest(), timeout=20)).ready
                assert [m.id for m in (await stub.ListModels(common_pb2.ListModelsRequest(), timeout=20)).models] == ["sim"]
        assert any("refused /cynode.v1.Worker/Predict from worker-2" in r.getMessage() for r in caplog.records)


async def test_only_a_gateway_or_a_coordinator_moves_models_on_a_worker():
    async with worker_server() as address:
        for roles, allowed in (((), False), (("worker",), False), (("coordinator",), True), (("gateway",), True)):
            async with PeerAuth((KEY,), roles=roles).channel(address) as channel:
                stub = worker_pb2_grpc.WorkerStub(channel)
                if allowed:
                    assert (await stub.LoadModel(worker_pb2.ModelRequest(model="sim"), timeout=20)).model.id == "sim"
                    continue
                for method in (stub.LoadModel, stub.UnloadModel):
                    with pytest.raises(grpc.aio.AioRpcError) as refused:
                        await method(worker_pb2.ModelRequest(model="sim"), timeout=20)
                    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_a_coordinator_takes_control_calls_from_a_gateway_only(redis_conn):
    async with coordinator_server(redis_conn) as address:
        calls = {"Admit": coordinator_pb2.AdmitRequest(request_id="r", model="sim"),
                 "Heartbeat": coordinator_pb2.HeartbeatRequest(task_id="t", lease_id="l"),
                 "Complete": coordinator_pb2.CompleteRequest(task_id="t", lease_id="l", ok=True),
                 "Cancel": coordinator_pb2.CancelRequest(task_id="t")}
        async with PeerAuth((KEY,), "w-9", roles=("worker",)).channel(address) as channel:
            stub = coordinator_pb2_grpc.CoordinatorStub(channel)
            for name, request in calls.items():
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await getattr(stub, name)(request, timeout=20)
                assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED, name
            assert (await stub.Status(coordinator_pb2.StatusRequest(), timeout=20)).is_leader is False
            await stub.ListModels(common_pb2.ListModelsRequest(), timeout=20)
        async with PeerAuth((KEY,), "gw-1", roles=("gateway",)).channel(address) as channel:
            stub = coordinator_pb2_grpc.CoordinatorStub(channel)
            for name, request in calls.items():  # the handler runs: this coordinator does not lead
                with pytest.raises(grpc.aio.AioRpcError) as answered:
                    await getattr(stub, name)(request, timeout=20)
                assert answered.value.code() == grpc.StatusCode.FAILED_PRECONDITION, (name, answered.value.details())


def test_every_method_of_every_service_says_who_may_call_it():
    for service, servicer in ((worker_pb2.DESCRIPTOR.services_by_name["Worker"], WorkerService),
                              (coordinator_pb2.DESCRIPTOR.services_by_name["Coordinator"], CoordinatorService)):
        assert set(servicer.CALLERS) == {m.name for m in service.methods}, service.name


async def test_a_certificate_names_the_node_and_its_roles_and_a_tool_has_none():
    seen = []

    class Echo(worker_pb2_grpc.WorkerServicer):
        async def Health(self, request, context):
            seen.append(peer_identity(context))
            return worker_pb2.HealthReply(ready=True)

    address = f"127.0.0.1:{free_port()}"
    server = RpcServer("worker", address, local=LocalServices(), addresses=(address,),
                       credentials=PeerAuth((KEY,), "w").server_credentials())
    server.add(worker_pb2_grpc.add_WorkerServicer_to_server, Echo())
    await server.start()
    try:
        for auth in (PeerAuth((KEY,), "both-1", roles=("gateway", "coordinator")), PeerAuth((KEY,))):
            async with auth.channel(address) as channel:
                await worker_pb2_grpc.WorkerStub(channel).Health(worker_pb2.HealthRequest(), timeout=20)
    finally:
        await server.stop(None)
    assert seen[0].node_id == "both-1" and seen[0].roles == {"gateway", "coordinator"}
    assert seen[1].node_id.startswith("client-") and seen[1].roles == frozenset()


async def stream_at_epoch(channel, epoch: int) -> str:
    request = predict()
    request.epoch = epoch
    call = worker_pb2_grpc.WorkerStub(channel).Predict(request, timeout=20)
    return "".join([chunk.text async for chunk in call])


async def test_only_the_leading_coordinator_moves_a_workers_fence_not_an_epoch_a_gateway_relays():
    """Before, one Predict with an absurd epoch fenced every real assignment until the worker restarted."""
    async with worker_server() as address:
        async with PeerAuth((KEY,), "gw-1", roles=("gateway",)).channel(address) as gateway, \
                PeerAuth((KEY,), "coord-1", roles=("coordinator",)).channel(address) as coordinator:
            assert await stream_at_epoch(gateway, 2**62)  # accepted (a newer leader, perhaps) ...
            assert await stream_at_epoch(gateway, 1)  # ... but it moved no fence
            await worker_pb2_grpc.WorkerStub(gateway).Health(worker_pb2.HealthRequest(leader_epoch=9), timeout=20)
            assert await stream_at_epoch(gateway, 1)  # a gateway cannot announce a leader either
            await worker_pb2_grpc.WorkerStub(coordinator).Health(worker_pb2.HealthRequest(leader_epoch=5), timeout=20)
            with pytest.raises(grpc.aio.AioRpcError) as fenced:
                await stream_at_epoch(gateway, 4)
            assert fenced.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "stale assignment: epoch 4 is older than 5" in fenced.value.details()
            assert await stream_at_epoch(gateway, 5)


async def test_bytes_that_are_not_a_message_get_invalid_argument_and_no_traceback(caplog):
    async with worker_server() as address:
        async with PeerAuth((KEY,), "gw-1", roles=("gateway",)).channel(address) as channel:
            for path, data in (("/cynode.v1.Worker/Health", b"\xff\xff"), ("/cynode.v1.Worker/Predict", b"\x12\x03\xff\xfe\xfd")):
                method = channel.unary_stream(path) if path.endswith("Predict") else channel.unary_unary(path)
                with caplog.at_level(logging.INFO), pytest.raises(grpc.aio.AioRpcError) as refused:
                    call = method(data, timeout=20)
                    await (call.read() if path.endswith("Predict") else call)
                assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert f"{path}: the request is not a valid message" in refused.value.details()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
