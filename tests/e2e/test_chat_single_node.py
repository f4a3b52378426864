"""A user starts one node and chats with the real model: gateway → coordinator → worker."""

from __future__ import annotations

import concurrent.futures
import subprocess
import sys

import httpx
import openai

from daemon_harness import wait_for
from sse import content_of, events

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
MODEL = "smollm2-135m-instruct"
# Tests that mean the engine skip the prompt cache (it answers repeated greedy requests) and check
# that they did: X-Cache: miss.
ENGINE = {"Cache-Control": "no-cache"}


def chat(node, key, headers=None, **body):
    payload = {"model": MODEL, "messages": QUESTION, "temperature": 0, "max_tokens": 24, **body}
    return httpx.post(f"{node.base_url}/v1/chat/completions", json=payload,
                      headers={"Authorization": f"Bearer {key}", **(headers or {})}, timeout=120)


def engine_chat(node, key, **body):
    reply = chat(node, key, headers=ENGINE, **body)
    assert reply.status_code == 200, reply.text
    assert reply.headers["X-Cache"] == "miss"
    return reply


def stream_chat(node, key, headers=None, **body):
    payload = {"model": MODEL, "messages": QUESTION, "temperature": 0, "max_tokens": 24, "stream": True, **body}
    with httpx.stream("POST", f"{node.base_url}/v1/chat/completions", json=payload,
                      headers={"Authorization": f"Bearer {key}", **(headers or {})}, timeout=120) as reply:
        assert reply.status_code == 200, reply.read()
        assert reply.headers["content-type"].startswith("text/event-stream")
        if headers == ENGINE:
            assert reply.headers["X-Cache"] == "miss"
        return list(events(reply.iter_lines()))


def test_a_greedy_chat_answers_paris(node):
    body = engine_chat(node, node.api_key()).json()
    assert body["object"] == "chat.completion"
    assert body["model"] == MODEL
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert "Paris" in choice["message"]["content"]
    assert choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert usage["prompt_tokens"] > 5 and usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_a_streamed_chat_answers_paris_and_ends_with_done(node):
    received = stream_chat(node, node.api_key(), ENGINE, stream_options={"include_usage": True})
    assert received[-1] == "[DONE]"
    chunks = [e for e in received if isinstance(e, dict)]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert "Paris" in content_of(chunks)
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert finishes in (["stop"], ["length"])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0


def test_streamed_and_whole_answers_are_the_same_text(node):
    whole = engine_chat(node, node.api_key()).json()["choices"][0]["message"]["content"]
    streamed = content_of(e for e in stream_chat(node, node.api_key(), ENGINE) if isinstance(e, dict))
    assert streamed == whole and "Paris" in whole


def test_the_official_openai_client_gets_the_same_answer(node):
    client = openai.OpenAI(base_url=f"{node.base_url}/v1", api_key=node.api_key(), max_retries=0,
                           default_headers=ENGINE)
    expected = engine_chat(node, node.api_key()).json()["choices"][0]["message"]["content"]
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=24)
    assert raw.headers["X-Cache"] == "miss"
    assert raw.parse().choices[0].message.content == expected
    assert "Paris" in expected
    with client.chat.completions.with_streaming_response.create(
            model=MODEL, messages=QUESTION, temperature=0, max_tokens=24, stream=True) as response:
        assert response.headers["X-Cache"] == "miss"
        streamed = "".join(chunk.choices[0].delta.content or "" for chunk in response.parse() if chunk.choices)
    assert streamed == expected
    # The built-in embedding model is served next to the chat model.
    assert sorted(m.id for m in client.models.list().data) == ["all-minilm-l6-v2", MODEL]


def test_four_concurrent_requests_all_reach_the_engine_and_get_the_same_answer(node):
    key = node.api_key()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(lambda _: engine_chat(node, key), range(4)))
    texts = {r.json()["choices"][0]["message"]["content"] for r in replies}
    assert len(texts) == 1 and "Paris" in texts.pop()  # batched together, each as it would be alone


def _assert_openai_error(reply, status, *, param=None, code=None):
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    assert error["message"]
    if param is not None:
        assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    return error


def test_a_request_without_a_key_is_401(node):
    reply = httpx.post(f"{node.base_url}/v1/chat/completions", json={"model": MODEL, "messages": QUESTION}, timeout=30)
    error = _assert_openai_error(reply, 401)
    assert error["type"] == "authentication_error"


def test_a_wrong_key_is_401_and_the_key_is_not_echoed(node):
    wrong = "sk-cynode-this-is-not-a-real-key-0123456789"
    reply = chat(node, wrong)
    error = _assert_openai_error(reply, 401)
    assert wrong not in error["message"]


def test_malformed_json_is_400_with_an_openai_error(node):
    reply = httpx.post(f"{node.base_url}/v1/chat/completions", content=b'{"model": "x", "messages": [',
                       headers={"Authorization": f"Bearer {node.api_key()}", "Content-Type": "application/json"}, timeout=30)
    _assert_openai_error(reply, 400, code="invalid_json")


def test_missing_messages_is_400_naming_the_field(node):
    reply = httpx.post(f"{node.base_url}/v1/chat/completions", json={"model": MODEL},
                       headers={"Authorization": f"Bearer {node.api_key()}"}, timeout=30)
    error = _assert_openai_error(reply, 400, param="messages")
    assert "messages" in error["message"]


def test_an_unknown_model_is_404_model_not_found(node):
    reply = chat(node, node.api_key(), model="no-such-model")
    error = _assert_openai_error(reply, 404, param="model", code="model_not_found")
    assert "no-such-model" in error["message"]


def test_an_unknown_route_is_a_json_404(node):
    reply = httpx.get(f"{node.base_url}/v1/nothing-here", timeout=30)
    _assert_openai_error(reply, 404)


def test_an_answer_cut_by_max_tokens_says_length_and_counts_exactly_that_many(node):
    body = engine_chat(node, node.api_key(), max_tokens=3,
                       messages=[{"role": "user", "content": "Count from one to twenty."}]).json()
    assert body["choices"][0]["finish_reason"] == "length" and body["usage"]["completion_tokens"] == 3


def test_health_readiness_and_metrics_need_no_key(node):
    for base in (node.base_url, node.metrics_url):
        assert httpx.get(f"{base}/healthz", timeout=10).status_code == 200
        ready = httpx.get(f"{base}/readyz", timeout=10)
        assert ready.status_code == 200 and ready.json()["ready"] is True
        assert set(ready.json()["roles"]) == {"gateway", "coordinator", "worker"}
    chat(node, node.api_key())
    metrics = httpx.get(f"{node.metrics_url}/metrics", timeout=10).text
    for name in ("worker_inference_latency_bucket", "worker_time_to_first_token_seconds_bucket",
                 'coordinator_inference_requests_total{status="assigned"}', "coordinator_workers_healthy 1.0",
                 "gateway_time_to_first_token_seconds_bucket", "worker_gpu_utilization", "worker_gpu_memory_used",
                 'gossip_members{state="alive"} 1.0'):
        assert name in metrics, name


def test_the_cluster_leader_is_this_node_and_needs_an_admin_key(node):
    status, body = node.get_json("/v1/cluster/leader", node.api_key())
    assert status == 200, body
    assert body["epoch"] >= 1 and body["address"].endswith(f":{node.ports['coordinator']}")
    status, body = node.get_json("/v1/cluster/leader")
    assert status == 401


def test_an_identical_greedy_request_is_answered_from_the_prompt_cache(node):
    key = node.api_key()
    question = [{"role": "user", "content": "Name one primary colour."}]
    first = chat(node, key, messages=question)
    second = chat(node, key, messages=question)
    assert first.headers["X-Cache"] == "miss" and second.headers["X-Cache"] == "hit"
    assert second.json()["choices"] == first.json()["choices"]
    assert second.json()["usage"] == first.json()["usage"]
    replay = stream_chat(node, key, messages=question)
    assert content_of(e for e in replay if isinstance(e, dict)) == first.json()["choices"][0]["message"]["content"]
    assert chat(node, key, messages=question, max_tokens=23).headers["X-Cache"] == "miss"  # any parameter change misses
    fresh = httpx.post(f"{node.base_url}/v1/chat/completions", timeout=120,
                       json={"model": MODEL, "messages": question, "temperature": 0, "max_tokens": 24},
                       headers={"Authorization": f"Bearer {key}", "Cache-Control": "no-cache"})
    assert fresh.headers["X-Cache"] == "miss"


def test_sampled_requests_without_a_seed_are_not_cached(node):
    key = node.api_key()
    question = [{"role": "user", "content": "Say something."}]
    chat(node, key, messages=question, temperature=0.9)
    assert chat(node, key, messages=question, temperature=0.9).headers["X-Cache"] == "miss"


def test_cluster_status_shows_the_leader_queue_and_worker(node):
    status, body = node.get_json("/v1/cluster/status", node.api_key())
    assert status == 200, body
    assert body["leader"]["epoch"] >= 1
    assert body["queue"] == {"pending": 0, "inflight": 0, "dead": 0}
    [worker] = body["workers"]
    assert worker["state"] == "healthy" and worker["breaker"] == "closed" and sorted(worker["models"]) == ["all-minilm-l6-v2", MODEL]
    result = subprocess.run([sys.executable, "-m", "cynode", "status", "-c", str(node.config_path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert f"(epoch {body['leader']['epoch']})" in result.stdout and "healthy" in result.stdout


def test_a_prompt_longer_than_the_context_is_a_400_naming_messages_and_the_code(node):
    too_long = [{"role": "user", "content": "lighthouse " * 9000}]  # SmolLM2's context is 8192 tokens
    reply = chat(node, node.api_key(), headers=ENGINE, messages=too_long)
    error = _assert_openai_error(reply, 400, param="messages", code="context_length_exceeded")
    assert "8192" in error["message"]


def _metric(node, name: str) -> float:
    text = httpx.get(f"{node.metrics_url}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def test_a_client_that_leaves_mid_stream_cancels_its_request_and_frees_the_worker(node):
    cancelled = _metric(node, 'coordinator_inference_requests_total{status="cancelled"}')
    payload = {"model": MODEL, "messages": [{"role": "user", "content": "Write a long story about a ship."}],
               "temperature": 0, "max_tokens": 400, "stream": True}
    with httpx.stream("POST", f"{node.base_url}/v1/chat/completions", json=payload, timeout=120,
                      headers={"Authorization": f"Bearer {node.api_key()}", **ENGINE}) as reply:
        for line in reply.iter_lines():
            if '"content":"' in line and '"role"' not in line:
                break  # one token is out: the client goes away
    wait_for(lambda: _metric(node, 'coordinator_inference_requests_total{status="cancelled"}') == cancelled + 1, 30,
             "the task to be cancelled")
    wait_for(lambda: _metric(node, "worker_active_requests") == 0, 30, "the worker's slot to be freed")
    assert _metric(node, 'coordinator_inference_requests_total{status="failed"}') == 0
