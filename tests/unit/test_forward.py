"""The forwarder of a node without the gateway role, over real loopback HTTP: an unreachable
gateway is skipped for the next, the answer streams back as it is written, headers say who
forwarded, and with no gateway at all the answer is an OpenAI-shaped 503."""

from __future__ import annotations

import asyncio

import httpx
from aiohttp import web

from cynode.roles.gateway.forward import Forwarder, gateway_peers
from daemon_harness import free_port


class Member:
    def __init__(self, id, state, meta):
        self.id, self.state, self.meta = id, state, meta


async def start_app(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"127.0.0.1:{port}"


async def test_forwarding_skips_a_dead_gateway_streams_the_answer_and_names_both_nodes():
    release = asyncio.Event()
    seen = {}

    async def stream(request: web.Request) -> web.StreamResponse:
        seen.update(auth=request.headers.get("Authorization"), by=request.headers.get("X-Cynode-Forwarded-By"),
                    body=await request.read(), query=request.query_string)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: first\n\n")
        await release.wait()  # the client must have the first event before the rest is written
        await response.write(b"data: [DONE]\n\n")
        return response

    app = web.Application()
    app.add_routes([web.post("/v1/chat/completions", stream)])
    runner, live = await start_app(app)
    dead = f"127.0.0.1:{free_port()}"
    listen = f"127.0.0.1:{free_port()}"
    forwarder = Forwarder("w1", listen, lambda: [("gone", dead), ("gw", live)], max_body_bytes=1 << 20)
    await forwarder.start()
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            for _ in range(3):  # whichever order the peers are shuffled into
                release.clear()
                async with client.stream("POST", f"http://{listen}/v1/chat/completions?x=1", content=b'{"a":1}',
                                         headers={"Authorization": "Bearer sk-test"}) as reply:
                    assert reply.status_code == 200
                    assert reply.headers["X-Cynode-Forwarded-By"] == "w1"
                    assert reply.headers["X-Cynode-Gateway"] == "gw"
                    chunks = reply.aiter_bytes()
                    assert (await anext(chunks)).startswith(b"data: first")
                    release.set()
                    rest = b"".join([c async for c in chunks])
                    assert rest == b"data: [DONE]\n\n"
        assert seen == {"auth": "Bearer sk-test", "by": "w1", "body": b'{"a":1}', "query": "x=1"}
    finally:
        await forwarder.stop()
        await runner.cleanup()


async def test_with_no_gateway_reachable_the_answer_is_a_503_with_retry_after():
    listen = f"127.0.0.1:{free_port()}"
    forwarder = Forwarder("w1", listen, lambda: [], max_body_bytes=1 << 20)
    await forwarder.start()
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            reply = await client.get(f"http://{listen}/v1/models")
        assert reply.status_code == 503 and reply.headers["Retry-After"] == "2"
        assert reply.json()["error"]["code"] == "no_gateway"
    finally:
        await forwarder.stop()


def test_only_live_gateway_peers_other_than_this_node_are_candidates():
    gw = {"roles": ["gateway"], "addr": {"gateway": "10.0.0.2:8080"}}
    members = [Member("me", "alive", {"roles": ["gateway"], "addr": {"gateway": "10.0.0.1:8080"}}),
               Member("a", "alive", gw), Member("b", "dead", gw), Member("c", "suspect", gw),
               Member("w", "alive", {"roles": ["worker"], "addr": {"worker": "10.0.0.5:50051"}})]
    assert gateway_peers(members, "me") == [("a", "10.0.0.2:8080")]
