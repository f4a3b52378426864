"""A worker-only daemon forwards the Responses API (whole and streamed, then retrieve) and the chat
WebSocket to the gateway it finds through gossip: the socket's messages pass both ways unchanged,
several requests on one forwarded socket, and a refused upgrade comes back with the gateway's error."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import httpx
import pytest

from cluster_harness import Cluster, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def test_a_worker_only_node_forwards_responses_and_the_chat_socket(cluster: Cluster):
    gateway = cluster.coordinator("c1", [], gateway=True)
    cluster.start(gateway)
    seed = f"{gateway.host}:{gateway.ports['gossip']}"
    worker = cluster._node("w1", ["worker"], {"worker": {"backend": "sim"}, "cluster": {"seeds": [seed]}})
    cluster.start(worker)
    headers = {"Authorization": f"Bearer {gateway.api_key()}", "Cache-Control": "no-cache"}
    body = {"model": "sim", "input": "forward me", "max_output_tokens": 4}

    def answered():
        reply = httpx.post(f"{worker.base_url}/v1/responses", json=body, headers=headers, timeout=60)
        return reply if reply.status_code == 200 else None

    reply = wait_for(answered, 60, "a forwarded response")
    assert reply.headers["X-Cynode-Forwarded-By"] == "w1" and reply.headers["X-Cache"] == "miss"
    response = reply.json()
    stored = httpx.get(f"{worker.base_url}/v1/responses/{response['id']}", headers=headers, timeout=30)
    assert stored.status_code == 200 and stored.json() == response

    with httpx.stream("POST", f"{worker.base_url}/v1/responses", json={**body, "stream": True}, headers=headers,
                      timeout=60) as sse:
        assert sse.status_code == 200 and sse.headers["X-Cynode-Forwarded-By"] == "w1"
        kinds = [line[7:] for line in sse.iter_lines() if line.startswith("event: ")]
    assert kinds[0] == "response.created" and kinds[-1] == "response.incomplete"

    url = worker.base_url.replace("http://", "ws://") + "/v1/chat/completions/ws"
    chat = {"model": "sim", "messages": [{"role": "user", "content": "forward me"}], "max_tokens": 4}

    async def over_the_socket():
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(url, headers=headers) as ws:
                assert ws._response.headers["X-Cynode-Forwarded-By"] == "w1"
                assert ws._response.headers["X-Cynode-Gateway"] == "c1"
                answers = []
                for request in (chat, {"model": "sim"}, chat):
                    await ws.send_str(json.dumps(request))
                    messages = []
                    while not messages or not ("error" in messages[-1]
                                               or messages[-1].get("object") == "chat.completion.done"):
                        messages.append(json.loads((await ws.receive(timeout=60)).data))
                    answers.append(messages)
            try:
                async with session.ws_connect(url):
                    refused = None
            except aiohttp.WSServerHandshakeError as exc:
                refused = exc.status
            async with session.get(url.replace("ws://", "http://"), headers={"Upgrade": "websocket",
                                   "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
                                   "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}) as plain:
                refused_body = (plain.status, await plain.json())
            return answers, refused, refused_body

    answers, refused, refused_body = asyncio.run(over_the_socket())
    first, bad, second = answers
    assert first[-1]["object"] == "chat.completion.done" and first[-1]["cache"] == "miss"
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in first[:-1]).strip()
    assert bad[0]["status"] == 400 and bad[0]["error"]["param"] == "messages"
    assert second[-1]["object"] == "chat.completion.done"
    assert refused == 401  # no key: the gateway's refusal of the upgrade...
    assert refused_body == (401, {"error": {"message": refused_body[1]["error"]["message"],  # ...with its body
                                            "type": "authentication_error", "param": None, "code": "missing_api_key"}})
