"""mTLS between peers under the CA the cluster key determines: real gRPC on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time

import grpc
import grpc.aio
import pytest
from cryptography import x509

from daemon_harness import free_port
from fakes import FakeClock
from cynode.peer_auth import PeerAuth, peer_node_id
from cynode.pki import derive_ca, issue_leaf
from cynode.rpc import common_pb2, worker_pb2, worker_pb2_grpc
from cynode.rpc.local import LocalServices
from cynode.rpc.server import RpcServer

SECRET = "the-launch-code-is-" + secrets.token_hex(8)


class Echo(worker_pb2_grpc.WorkerServicer):
    """Health answers with the caller's node id (from its certificate); LoadModel echoes the model name."""

    async def Health(self, request, context):
        security = context.auth_context().get("security_level", [b""])[0].decode()
        return worker_pb2.HealthReply(ready=True, node_id=peer_node_id(context) or "", detail=security)

    async def LoadModel(self, request, context):
        return worker_pb2.ModelReply(model=common_pb2.ModelInfo(id=request.model))


@contextlib.asynccontextmanager
async def serving(auth: PeerAuth):
    address = f"127.0.0.1:{free_port()}"
    server = RpcServer("worker", address, local=LocalServices(), addresses=(address,), credentials=auth.server_credentials())
    server.add(worker_pb2_grpc.add_WorkerServicer_to_server, Echo())
    await server.start()
    try:
        yield address
    finally:
        await server.stop(None)


async def health(channel, metadata=()) -> worker_pb2.HealthReply:
    return await worker_pb2_grpc.WorkerStub(channel).Health(worker_pb2.HealthRequest(), timeout=10, metadata=metadata)


def test_every_node_derives_the_same_ca_from_the_same_key_and_another_from_another():
    key = secrets.token_bytes(32)
    assert derive_ca(key).pem == derive_ca(key).pem
    assert derive_ca(key).fingerprint != derive_ca(secrets.token_bytes(32)).fingerprint


def test_a_leaf_names_its_node_and_is_short_lived():
    ca, now = derive_ca(secrets.token_bytes(32)), time.time()
    leaf = x509.load_pem_x509_certificate(issue_leaf(ca, "w1", addresses=("10.0.0.7", "gpu-3"), now=now, lifetime=600).certificate_pem)
    assert leaf.subject.rfc4514_string().endswith("CN=w1") or "CN=w1" in leaf.subject.rfc4514_string()
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "cynode:node:w1" in names.get_values_for_type(x509.UniformResourceIdentifier)
    assert "gpu-3" in names.get_values_for_type(x509.DNSName)
    assert abs(leaf.not_valid_after_utc.timestamp() - (now + 600)) < 2
    leaf.verify_directly_issued_by(ca.certificate)


async def test_a_member_calls_over_tls_and_is_known_by_its_certificate_not_by_what_it_says():
    key = secrets.token_bytes(32)
    async with serving(PeerAuth((key,), "worker-1")) as address:
        async with PeerAuth((key,), "gateway-x").channel(address) as channel:
            reply = await health(channel, metadata=(("x-cynode-node", "coordinator-y"),))
    assert reply.node_id == "gateway-x"
    assert reply.detail == "TSI_PRIVACY_AND_INTEGRITY"


async def test_an_outsider_cannot_complete_a_handshake():
    async with serving(PeerAuth((secrets.token_bytes(32),), "worker-1")) as address:
        for make in (lambda: grpc.aio.insecure_channel(address),
                     lambda: PeerAuth((secrets.token_bytes(32),), "intruder").channel(address)):
            async with make() as channel:
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await health(channel)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_certificate_for_another_cluster_ca_cannot_claim_a_member_name():
    """A self-made CA (no cluster key) issuing a leaf with a member's name is refused at the handshake."""
    key = secrets.token_bytes(32)
    forged = issue_leaf(derive_ca(secrets.token_bytes(32)), "worker-1", now=time.time())
    async with serving(PeerAuth((key,), "worker-1")) as address:
        trusted = derive_ca(key).pem
        credentials = grpc.ssl_channel_credentials(trusted, forged.key_pem, forged.certificate_pem)
        async with grpc.aio.secure_channel(address, credentials,
                                           options=[("grpc.ssl_target_name_override", "cynode-peer")]) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await health(channel)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def _tap(listen_port: int, target: str, captured: bytearray) -> asyncio.AbstractServer:
    host, port = target.rsplit(":", 1)

    async def pipe(reader, writer):
        with contextlib.suppress(Exception):
            while data := await reader.read(65536):
                captured.extend(data)
                writer.write(data)
                await writer.drain()
        writer.close()

    async def handle(client_reader, client_writer):
        upstream_reader, upstream_writer = await asyncio.open_connection(host, int(port))
        await asyncio.gather(pipe(client_reader, upstream_writer), pipe(upstream_reader, client_writer))

    return await asyncio.start_server(handle, "127.0.0.1", listen_port)


async def test_a_tap_on_the_wire_sees_no_plaintext_of_a_call():
    key = secrets.token_bytes(32)
    captured = bytearray()
    async with serving(PeerAuth((key,), "worker-1")) as address:
        tap_port = free_port()
        tap = await _tap(tap_port, address, captured)
        try:
            async with PeerAuth((key,), "gateway").channel(f"127.0.0.1:{tap_port}") as channel:
                reply = await worker_pb2_grpc.WorkerStub(channel).LoadModel(worker_pb2.ModelRequest(model=SECRET), timeout=10)
        finally:
            tap.close()
    assert reply.model.id == SECRET  # the call went through the tap
    assert len(captured) > 1000 and SECRET.encode() not in captured and b"LoadModel" not in captured


async def test_a_held_channel_follows_a_rotation_step_by_step_and_a_retired_key_is_refused():
    old, new = secrets.token_bytes(32), secrets.token_bytes(32)
    server, client = PeerAuth((old,), "worker-1"), PeerAuth((old,), "gateway")
    async with serving(server) as address:
        async with client.channel(address) as channel:
            stub_calls = [await health(channel)]
            for ring in ((old, new), (new, old), (new,)):  # add second, move first, drop the old one
                client.replace_keys(ring)
                stub_calls.append(await health(channel))
                server.replace_keys(ring)
                stub_calls.append(await health(channel))
            async with PeerAuth((old,), "left-behind").channel(address) as stale:
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await health(stale)
    assert all(r.node_id == "gateway" for r in stub_calls)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_the_leaf_is_renewed_at_half_life_and_the_channel_moves_to_it():
    key, clock = secrets.token_bytes(32), FakeClock(time.time())
    client = PeerAuth((key,), "gateway", clock=clock, lifetime=300)
    first = client.material()
    async with serving(PeerAuth((key,), "worker-1")) as address:
        async with client.channel(address) as channel:
            await health(channel)
            clock.now += 151  # past half of 300 s, inside the 5 min a leaf is backdated
            assert (await health(channel)).node_id == "gateway"
    renewed = client.material()
    assert renewed.generation > first.generation and renewed.certificate_pem != first.certificate_pem
