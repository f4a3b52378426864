"""models.json as an operator uses it: models load on first use, SIGHUP adds one without dropping a stream."""

from __future__ import annotations

import json
import signal
import threading

import httpx

from daemon_harness import CynodeProcess
from sse import content_of, events


def registry_file(path, *ids):
    path.write_text(json.dumps({"models": [{"id": i, "engine": "sim", "tags": ["test"]} for i in ids]}))


def served(node) -> list[str]:
    reply = httpx.get(f"{node.base_url}/v1/models", headers={"Authorization": f"Bearer {node.api_key()}"}, timeout=30)
    return [m["id"] for m in reply.json()["data"]]


def wait_until(predicate, timeout=30.0):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def test_sighup_adds_a_model_without_dropping_an_open_stream(tmp_path, redis_server, models_dir):
    registry = tmp_path / "models.json"
    registry_file(registry, "sim-a")
    node = CynodeProcess(tmp_path, redis_url=redis_server.url, models_dir=models_dir, extra={
        "worker": {"model_registry": str(registry), "sim": {"tokens_per_second": 20.0, "answer_tokens": 200}}})
    node.start()
    try:
        assert wait_until(lambda: "sim-a" in served(node)), served(node)
        assert "sim-b" not in served(node)
        received, opened = [], threading.Event()

        def stream():
            body = {"model": "sim-a", "messages": [{"role": "user", "content": "go"}], "max_tokens": 60, "stream": True}
            with httpx.stream("POST", f"{node.base_url}/v1/chat/completions", json=body, timeout=60,
                              headers={"Authorization": f"Bearer {node.api_key()}"}) as reply:
                for event in events(reply.iter_lines()):
                    received.append(event)
                    opened.set()

        reader = threading.Thread(target=stream)
        reader.start()
        assert opened.wait(30)
        registry_file(registry, "sim-a", "sim-b")
        node.proc.send_signal(signal.SIGHUP)
        reader.join(60)
        assert received[-1] == "[DONE]"
        chunks = [e for e in received if isinstance(e, dict)]
        assert chunks[-1]["choices"][0]["finish_reason"] == "length" and len(content_of(chunks).split()) >= 50
        assert wait_until(lambda: "sim-b" in served(node)), served(node)
        reply = httpx.post(f"{node.base_url}/v1/chat/completions", timeout=60,
                           json={"model": "sim-b", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5},
                           headers={"Authorization": f"Bearer {node.api_key()}"})
        assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] == 5
        assert "models.json reloaded" in node.log()
    finally:
        assert node.terminate() == 0


def test_a_broken_models_json_on_sighup_keeps_the_models_that_were_there(tmp_path, redis_server, models_dir):
    registry = tmp_path / "models.json"
    registry_file(registry, "sim-a")
    node = CynodeProcess(tmp_path, redis_url=redis_server.url, models_dir=models_dir,
                         extra={"worker": {"model_registry": str(registry)}})
    node.start()
    try:
        assert wait_until(lambda: "sim-a" in served(node))
        registry.write_text('{"models": [')
        node.proc.send_signal(signal.SIGHUP)
        assert wait_until(lambda: "not reloaded, keeping the previous registry" in node.log())
        assert "not valid JSON" in node.log()
        reply = httpx.post(f"{node.base_url}/v1/chat/completions", timeout=60,
                           json={"model": "sim-a", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3},
                           headers={"Authorization": f"Bearer {node.api_key()}"})
        assert reply.status_code == 200
    finally:
        assert node.terminate() == 0
