"""A gRPC channel closed under a call in flight: a peer failure the caller can retry, not a cancellation.

grpc.aio cancels every call of a channel being closed, and the awaiting task sees CancelledError
though nobody cancelled it. Passed up as it is, an HTTP handler would drop its client's connection
without an answer (seen with a gateway that replaced a coordinator channel during a failover).
"""

from __future__ import annotations

import asyncio

import grpc.aio
import pytest

from cynode.rpc import worker_pb2, worker_pb2_grpc
from cynode.rpc.errors import PeerUnavailable, rpc_errors


class _Slow(worker_pb2_grpc.WorkerServicer):
    def __init__(self) -> None:
        self.started = asyncio.Event()

    async def Predict(self, request, context):
        self.started.set()
        await asyncio.sleep(30)
        yield worker_pb2.PredictChunk()


@pytest.fixture
async def slow_worker():
    servicer = _Slow()
    server = grpc.aio.server()
    worker_pb2_grpc.add_WorkerServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield servicer, f"127.0.0.1:{port}"
    await server.stop(grace=None)


@pytest.mark.timeout(30)
async def test_a_call_whose_channel_is_closed_under_it_raises_peer_unavailable(slow_worker):
    servicer, address = slow_worker
    channel = grpc.aio.insecure_channel(address)
    call = worker_pb2_grpc.WorkerStub(channel).Predict(worker_pb2.PredictRequest(request_id="r1"))

    async def close_when_started() -> None:
        await servicer.started.wait()
        await channel.close(grace=None)

    closer = asyncio.ensure_future(close_when_started())
    with pytest.raises(PeerUnavailable, match="worker w1: unavailable: the channel was closed"):
        with rpc_errors("worker w1"):
            await call.read()
    await closer


@pytest.mark.timeout(30)
async def test_a_task_that_is_cancelled_is_still_cancelled(slow_worker):
    servicer, address = slow_worker
    channel = grpc.aio.insecure_channel(address)

    async def read() -> None:
        with rpc_errors("worker w1"):
            await worker_pb2_grpc.WorkerStub(channel).Predict(worker_pb2.PredictRequest(request_id="r2")).read()

    reader = asyncio.ensure_future(read())
    await servicer.started.wait()
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    await channel.close()
