"""`/v1/chat/completions/ws` on a real daemon (sim engine), with aiohttp's WebSocket client: the SSE
stream's chunks over a socket, several requests on one socket, refusals that leave it open, the key's
limits, and the key checked at the upgrade."""

from __future__ import annotations

import asyncio
import json
import uuid

import aiohttp
import httpx
import pytest

from daemon_harness import CynodeProcess

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

REQUEST = {"model": "sim", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


@pytest.fixture(scope="module")
def sim_node(tmp_path_factory, redis_server, models_dir):
    proc = CynodeProcess(tmp_path_factory.mktemp("ws"), redis_url=redis_server.url, models_dir=models_dir,
                         extra={"worker": {"backend": "sim", "sim": {"tokens_per_second": 200.0, "answer_tokens": 40}}}
                         ).start(timeout=120)
    yield proc
    proc.kill()


def socket_url(node: CynodeProcess) -> str:
    return node.base_url.replace("http://", "ws://") + "/v1/chat/completions/ws"


async def ask(ws, body) -> list[dict]:
    """Send one request; every message of its answer, up to and with the done or error message."""
    await ws.send_str(body if isinstance(body, str) else json.dumps(body))
    messages = []
    while True:
        message = await ws.receive(timeout=60)
        assert message.type is aiohttp.WSMsgType.TEXT, message
        messages.append(json.loads(message.data))
        if "error" in messages[-1] or messages[-1].get("object") == "chat.completion.done":
            return messages


def sse_chunks(node: CynodeProcess, body: dict, key: str) -> list[dict]:
    chunks = []
    with httpx.stream("POST", f"{node.base_url}/v1/chat/completions", json={**body, "stream": True},
                      headers={"Authorization": f"Bearer {key}", "Cache-Control": "no-cache"}, timeout=60) as reply:
        for line in reply.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunks.append(json.loads(line[6:]))
    return chunks


def without_ids(chunks: list[dict]) -> list[dict]:
    return [{k: v for k, v in c.items() if k not in ("id", "created")} for c in chunks]


def test_one_socket_answers_requests_in_turn_with_the_sse_streams_chunks(sim_node):
    key = sim_node.api_key()

    async def run():
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(socket_url(sim_node), headers={"Authorization": f"Bearer {key}",
                                                                        "Cache-Control": "no-cache"}) as ws:
                first = await ask(ws, REQUEST)
                bad = await ask(ws, {"model": "sim", "messages": []})
                broken = await ask(ws, "{not json")
                second = await ask(ws, {**REQUEST, "max_tokens": 3, "stream_options": {"include_usage": True}})
                whole = await ask(ws, {**REQUEST, "stream": False})
                assert not ws.closed
                return first, bad, broken, second, whole

    first, bad, broken, second, whole = asyncio.run(run())
    *chunks, done = first
    assert done == {"object": "chat.completion.done", "id": chunks[0]["id"], "cache": "miss", "degraded": False}
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert without_ids(chunks) == without_ids(sse_chunks(sim_node, REQUEST, key))  # the very chunks of SSE

    assert bad == [{"error": {"message": "messages must contain at least one message; got an empty array",
                              "type": "invalid_request_error", "param": "messages", "code": "empty_array"},
                    "status": 400}]
    assert broken[0]["status"] == 400 and broken[0]["error"]["code"] == "invalid_json"

    *chunks, done = second
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 3
    assert done["object"] == "chat.completion.done" and done["id"] != first[-1]["id"]

    completion, done = whole
    assert completion["object"] == "chat.completion" and completion["choices"][0]["finish_reason"] == "length"
    assert completion["usage"]["completion_tokens"] == 5 and done["id"] == completion["id"]


def test_the_keys_limits_hold_on_a_socket_and_a_refusal_leaves_it_open(sim_node):
    made = httpx.post(f"{sim_node.base_url}/v1/admin/keys", json={"name": "ws-limited", "requests_per_minute": 2},
                      headers={"Authorization": f"Bearer {sim_node.api_key()}"}, timeout=30)
    assert made.status_code == 201, made.text
    key = made.json()["key"]

    async def run():
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(socket_url(sim_node), headers={"Authorization": f"Bearer {key}"}) as ws:
                answers = [await ask(ws, {**REQUEST, "messages": [{"role": "user", "content": f"limit {i}"}]})
                           for i in range(3)]
                return answers, ws.closed

    answers, closed = asyncio.run(run())
    assert [a[-1].get("object") for a in answers[:2]] == ["chat.completion.done"] * 2
    (refused,) = answers[2]
    assert refused["status"] == 429 and refused["error"]["type"] == "rate_limit_error" and not closed


def test_the_key_is_checked_at_the_upgrade(sim_node):
    async def run(headers):
        async with aiohttp.ClientSession() as session:
            try:
                async with session.ws_connect(socket_url(sim_node), headers=headers):
                    return 101
            except aiohttp.WSServerHandshakeError as exc:
                return exc.status

    assert asyncio.run(run({})) == 401
    assert asyncio.run(run({"Authorization": "Bearer sk-cynode-wrong-0000000000000000"})) == 401
    plain = httpx.get(socket_url(sim_node).replace("ws://", "http://"),
                      headers={"Authorization": f"Bearer {sim_node.api_key()}"}, timeout=30)
    assert plain.status_code == 400 and plain.json()["error"]["code"] == "websocket_required"


def test_an_idle_socket_does_not_hold_up_a_drain(tmp_path, redis_server, models_dir):
    node = CynodeProcess(tmp_path / "drain", redis_url=redis_server.url, models_dir=models_dir,
                         extra={"worker": {"backend": "sim"}, "node": {"drain_timeout": "60s"},
                                # Its own cluster on the session's Redis: the module's node leads "default".
                                "cluster": {"name": f"ws-drain-{uuid.uuid4().hex[:8]}"}}).start(timeout=120)
    try:
        async def run():
            async with aiohttp.ClientSession() as session:
                async with session.ws_connect(socket_url(node),
                                              headers={"Authorization": f"Bearer {node.api_key()}"}) as ws:
                    answered = await ask(ws, REQUEST)
                    started = asyncio.get_running_loop().time()
                    stopping = asyncio.get_running_loop().run_in_executor(None, node.terminate)
                    closing = await ws.receive(timeout=50)  # the gateway's stop closes the idle socket
                    code = await stopping
                    return answered, closing, code, asyncio.get_running_loop().time() - started

        answered, closing, code, took = asyncio.run(run())
        assert answered[-1]["object"] == "chat.completion.done"
        assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)
        assert code == 0 and took < 30, f"exit {code} after {took:.1f}s (drain_timeout is 60s):\n{node.log()}"
    finally:
        node.kill()
