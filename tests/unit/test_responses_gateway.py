"""`/v1/responses` and the chat WebSocket through a real gateway (the app as the role builds it) in
front of the real request path on the sim engine and a real Redis: shapes, the typed event stream,
storing, ownership, continuation, and the socket's protocol."""

from __future__ import annotations

import json

import aiohttp
import pytest

from cynode.api_keys import ApiKey, ApiKeyStore
from cynode.errors import UnavailableError
from cynode.redis_conn import RedisConnection
from cynode.roles.gateway.responses_format import ResponseAnswer
from cynode.roles.gateway.responses_schema import parse_responses_request
from cynode.roles.gateway.responses_store import ResponseStore
from daemon_harness import free_port
from gateway_harness import GatewayHarness

pytestmark = pytest.mark.timeout(60)

ALICE = "sk-cynode-alice-0123456789abcdef"
BOB = "sk-cynode-bob-0123456789abcdef"
EVENTS = ["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"]
ENDING = ["response.output_text.done", "response.content_part.done", "response.output_item.done"]


@pytest.fixture
async def gw(redis_conn):
    keys = ApiKeyStore.from_keys([(ALICE, ApiKey("alice")), (BOB, ApiKey("bob"))])
    started = await GatewayHarness.start(redis_conn, keys)
    yield started
    await started.stop()


async def create(gw, key=ALICE, **body):
    return await gw.client.post("/v1/responses", json={"model": "sim", "input": "hi", **body}, headers=gw.auth(key))


def events_of(text: str) -> list[tuple[str, dict]]:
    found = []
    for block in text.strip().split("\n\n"):
        lines = block.split("\n")
        assert lines[0].startswith("event: ") and lines[1].startswith("data: "), block
        found.append((lines[0][7:], json.loads(lines[1][6:])))
    return found


async def test_a_response_is_answered_stored_and_read_back_by_its_key_only(gw):
    reply = await create(gw, instructions="Be brief.", max_output_tokens=4, metadata={"k": "v"})
    assert reply.status_code == 200 and reply.headers["X-Cache"] == "miss"
    response = reply.json()
    assert response["object"] == "response" and response["id"].startswith("resp_")
    assert response["status"] == "incomplete" and response["incomplete_details"] == {"reason": "max_output_tokens"}
    (message,) = response["output"]
    assert message["role"] == "assistant" and message["content"][0]["type"] == "output_text"
    assert message["content"][0]["text"].strip()
    assert response["usage"]["output_tokens"] == 4 and response["usage"]["input_tokens"] > 0
    assert response["instructions"] == "Be brief." and response["metadata"] == {"k": "v"} and response["store"]

    got = await gw.client.get(f"/v1/responses/{response['id']}", headers=gw.auth(ALICE))
    assert got.status_code == 200 and got.json() == response
    other = await gw.client.get(f"/v1/responses/{response['id']}", headers=gw.auth(BOB))
    assert other.status_code == 404 and other.json()["error"]["code"] == "response_not_found"
    assert (await gw.client.delete(f"/v1/responses/{response['id']}", headers=gw.auth(BOB))).status_code == 404
    gone = await gw.client.delete(f"/v1/responses/{response['id']}", headers=gw.auth(ALICE))
    assert gone.status_code == 200 and gone.json() == {"id": response["id"], "object": "response.deleted",
                                                       "deleted": True}
    assert (await gw.client.get(f"/v1/responses/{response['id']}", headers=gw.auth(ALICE))).status_code == 404


async def test_store_false_keeps_nothing(gw):
    response = (await create(gw, store=False, max_output_tokens=2)).json()
    assert response["store"] is False
    assert (await gw.client.get(f"/v1/responses/{response['id']}", headers=gw.auth(ALICE))).status_code == 404


async def test_the_stream_is_typed_events_numbered_in_order_and_its_end_is_stored(gw):
    async with gw.client.stream("POST", "/v1/responses", json={"model": "sim", "input": "hi", "stream": True,
                                                               "max_output_tokens": 5},
                                headers=gw.auth(ALICE)) as reply:
        assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/event-stream")
        events = events_of((await reply.aread()).decode())
    kinds = [kind for kind, _ in events]
    assert kinds[:4] == EVENTS and kinds[-4:] == [*ENDING, "response.incomplete"]
    assert set(kinds[4:-4]) == {"response.output_text.delta"}
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    assert all(data["type"] == kind for kind, data in events)
    text = "".join(data["delta"] for kind, data in events if kind == "response.output_text.delta")
    final = events[-1][1]["response"]
    assert events[-4][1]["text"] == text == final["output"][0]["content"][0]["text"]
    assert events[0][1]["response"]["id"] == final["id"] and final["usage"]["output_tokens"] == 5
    stored = await gw.client.get(f"/v1/responses/{final['id']}", headers=gw.auth(ALICE))
    assert stored.json() == final


async def test_previous_response_id_continues_the_conversation_of_the_same_key_only(gw):
    first = (await create(gw, input="one two three", max_output_tokens=3)).json()
    follow = (await create(gw, input="four", previous_response_id=first["id"], max_output_tokens=3)).json()
    alone = (await create(gw, input="four", max_output_tokens=3)).json()
    # The follow-up's prompt is the first turn (its input and answer) and its own input.
    assert follow["usage"]["input_tokens"] > first["usage"]["input_tokens"] + alone["usage"]["input_tokens"]
    assert follow["previous_response_id"] == first["id"]
    refused = await create(gw, BOB, input="four", previous_response_id=first["id"])
    assert refused.status_code == 404 and refused.json()["error"]["param"] == "previous_response_id"


@pytest.mark.parametrize("body, param", [
    ({"input": []}, "input"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}, "input[0].content[0].type"),
    ({"input": [{"type": "function_call_output", "output": "x"}]}, "input[0].type"),
    ({"tools": [{"type": "function", "name": "f"}]}, "tools"),
    ({"text": {"format": {"type": "json_object"}}}, "text"),
    ({"max_output_tokens": 0}, "max_output_tokens"),
    ({"temperature": "hot"}, "temperature"),
    ({"store": "yes"}, "store"),
    ({"metadata": {"k": 1}}, "metadata.k"),
])
async def test_bad_bodies_are_400s_naming_the_field(gw, body, param):
    reply = await create(gw, **body)
    assert reply.status_code == 400 and reply.json()["error"]["param"] == param


async def test_the_chat_socket_streams_chunks_answers_in_turn_and_survives_a_bad_request(gw):
    url = gw.url.replace("http", "ws") + "/v1/chat/completions/ws"
    request = {"model": "sim", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(url, headers=gw.auth(ALICE)) as ws:
            async def answer(body):
                await ws.send_str(json.dumps(body))
                messages = []
                while True:
                    message = json.loads((await ws.receive(timeout=30)).data)
                    messages.append(message)
                    if "error" in message or message.get("object") == "chat.completion.done":
                        return messages

            streamed = await answer(request)
            assert [m["object"] for m in streamed[:-1]] == ["chat.completion.chunk"] * len(streamed[:-1])
            assert streamed[0]["choices"][0]["delta"]["role"] == "assistant"
            assert streamed[-2]["choices"][0]["finish_reason"] == "length"
            assert streamed[-1] == {"object": "chat.completion.done", "id": streamed[0]["id"], "cache": "miss",
                                    "degraded": False}
            bad = await answer({"model": "sim"})
            assert bad == [{"error": {"message": "'messages' is required", "type": "invalid_request_error",
                                      "param": "messages", "code": "missing_required_parameter"}, "status": 400}]
            assert (await answer("not an object"))[0]["status"] == 400
            whole = await answer({**request, "stream": False})
            assert whole[0]["object"] == "chat.completion" and whole[1]["object"] == "chat.completion.done"
            again = await answer(request)
            assert again[-1]["cache"] == "miss"  # the upgrade's Cache-Control: no-cache holds for the socket


async def test_the_chat_socket_is_answered_from_the_cache_when_its_upgrade_allows(gw):
    url = gw.url.replace("http", "ws") + "/v1/chat/completions/ws"
    request = {"model": "sim", "messages": [{"role": "user", "content": "cache me"}], "max_tokens": 3,
               "temperature": 0}
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(url, headers={"Authorization": f"Bearer {ALICE}"}) as ws:
            seen = []
            for _ in range(2):
                await ws.send_str(json.dumps(request))
                while (message := json.loads((await ws.receive(timeout=30)).data)).get("object") != "chat.completion.done":
                    assert "error" not in message
                seen.append(message["cache"])
    assert seen == ["miss", "hit"]


async def test_the_chat_socket_needs_a_key_at_the_upgrade_and_an_upgrade(gw):
    url = gw.url.replace("http", "ws") + "/v1/chat/completions/ws"
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(url)
        assert refused.value.status == 401
    plain = await gw.client.get("/v1/chat/completions/ws", headers=gw.auth(ALICE))
    assert plain.status_code == 400 and plain.json()["error"]["code"] == "websocket_required"


async def test_a_response_is_still_answered_when_it_cannot_be_stored(redis_conn):
    # The request path has its Redis; the store's is a port nobody listens on.
    away = RedisConnection(f"redis://127.0.0.1:{free_port()}/0", "away")
    keys = ApiKeyStore.from_keys([(ALICE, ApiKey("alice"))])
    gw = await GatewayHarness.start(redis_conn, keys, responses=ResponseStore(away))
    try:
        reply = await create(gw, max_output_tokens=2)
        assert reply.status_code == 200 and reply.json()["store"] is False
        assert reply.json()["output"][0]["content"][0]["text"]
        got = await gw.client.get(f"/v1/responses/{reply.json()['id']}", headers=gw.auth(ALICE))
        assert got.status_code == 503 and "Redis" in got.json()["error"]["message"]
    finally:
        await gw.stop()
        await away.close()


def test_a_failure_after_the_first_event_is_an_error_event_then_response_failed():
    answer = ResponseAnswer(parse_responses_request(b'{"model": "m", "input": "hi"}'), model="m", history=(),
                            save=None)
    events = events_of(answer.error("resp_x", UnavailableError("the worker went away", code="upstream_failed")).decode())
    assert [kind for kind, _ in events] == ["error", "response.failed"]
    assert events[0][1] == {"type": "error", "code": "upstream_failed", "message": "the worker went away",
                            "param": None, "sequence_number": 0}
    failed = events[1][1]["response"]
    assert failed["status"] == "failed" and failed["error"]["message"] == "the worker went away"
    assert events[1][1]["sequence_number"] == 1


def test_a_body_the_schema_describes_is_one_the_parser_takes():
    from cynode.roles.gateway.openapi_responses import ResponseCreateRequest

    # Every field /openapi.json declares, at a value it allows: the handler may not refuse what it promises.
    body = {"model": "m", "input": [{"type": "message", "role": "developer", "content": "Be brief."},
                                    {"role": "user", "content": [{"type": "input_text", "text": "hi"}]},
                                    {"role": "assistant", "content": [{"type": "output_text", "text": "hello"}]}],
            "instructions": "x", "previous_response_id": "resp_1", "max_output_tokens": 2**31 - 1, "temperature": 2,
            "top_p": 1, "stream": True, "store": False, "metadata": {f"k{i}": "v" for i in range(16)}, "user": "u"}
    ResponseCreateRequest.model_validate(body)
    parsed = parse_responses_request(json.dumps(body).encode())
    assert [m.role for m in parsed.input] == ["developer", "user", "assistant"]
    assert parsed.stream and not parsed.store and parsed.max_output_tokens == 2**31 - 1
    assert parsed.previous_response_id == "resp_1" and len(parsed.metadata) == 16
