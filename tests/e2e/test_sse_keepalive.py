"""A slow first token: the stream starts at once with SSE keep-alive comments, unbuffered, so a
proxy neither holds it back nor times it out. The `sim` engine makes the first token slow on purpose."""

from __future__ import annotations

import httpx
import pytest

from daemon_harness import CynodeProcess
from sse import content_of, events


@pytest.fixture(scope="module")
def slow_node(tmp_path_factory, redis_server, models_dir):
    proc = CynodeProcess(tmp_path_factory.mktemp("slow"), redis_url=redis_server.url, models_dir=models_dir, extra={
        "worker": {"backend": "sim", "sim": {"ttft": "1500ms", "tokens_per_second": 50.0, "answer_tokens": 6}},
        "gateway": {"sse_keepalive": "200ms"},
    }).start()
    yield proc
    assert proc.terminate() == 0, proc.log()


def stream(node, path, body):
    lines = []
    with httpx.stream("POST", f"{node.base_url}{path}", json={"model": "sim", "stream": True, **body},
                      headers={"Authorization": f"Bearer {node.api_key()}", "Cache-Control": "no-cache"},
                      timeout=60) as reply:
        assert reply.status_code == 200, reply.read()
        assert reply.headers["X-Accel-Buffering"] == "no"
        assert reply.headers["content-type"].startswith("text/event-stream")
        lines = list(reply.iter_lines())
    return reply, lines


@pytest.mark.parametrize("path, body", [
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
    ("/v1/completions", {"prompt": "hi there"}),
])
def test_keep_alive_comments_come_before_a_slow_first_token(slow_node, path, body):
    reply, lines = stream(slow_node, path, body)
    first_data = next(i for i, line in enumerate(lines) if line.startswith("data: "))
    comments = [line for line in lines[:first_data] if line.startswith(":")]
    assert len(comments) >= 2, lines[:10]  # 1.5 s at 200 ms intervals
    received = list(events(lines))
    assert received[-1] == "[DONE]"
    if path == "/v1/chat/completions":
        assert content_of(received[:-1]).strip()
    else:
        assert "".join(c["choices"][0]["text"] for c in received[:-1] if c["choices"]).strip()


def test_an_error_before_the_first_token_is_still_a_plain_http_error(slow_node):
    reply = httpx.post(f"{slow_node.base_url}/v1/chat/completions",
                       json={"model": "no-such-model", "stream": True, "messages": [{"role": "user", "content": "hi"}]},
                       headers={"Authorization": f"Bearer {slow_node.api_key()}"}, timeout=60)
    assert reply.status_code == 404 and reply.json()["error"]["code"] == "model_not_found"
