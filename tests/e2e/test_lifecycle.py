"""Start-up and shutdown as an operator sees them: embedded Redis, SIGTERM drain, failed roles, peer auth."""

from __future__ import annotations

import base64
import signal
import socket
import subprocess
import sys

import grpc
import grpc.aio
import httpx
import pytest

from cynode.cluster_key import generate_key, load_keys
from cynode.peer_auth import PeerAuth
from cynode.rpc import worker_pb2, worker_pb2_grpc
from daemon_harness import CynodeProcess, free_port, wait_for
from sse import content_of, events

QUESTION = [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]
# The drain must outlast the open stream even on a machine so busy that the model makes 1 token/s.
SLOW_MACHINE_DRAIN = {"node": {"drain_timeout": "120s"}}


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_sigterm_during_a_stream_finishes_it_cleanly_and_exits_0_with_embedded_redis(tmp_path, builtin_model_dir, models_dir):
    redis_port = free_port()
    node = CynodeProcess(tmp_path, redis_url=f"redis://127.0.0.1:{redis_port}/0", models_dir=models_dir,
                         embedded_redis=True, extra=SLOW_MACHINE_DRAIN).start()
    try:
        assert _port_open(redis_port), "the embedded redis-server should be serving"
        payload = {"model": "smollm2-135m-instruct", "messages": QUESTION, "temperature": 0, "max_tokens": 40, "stream": True}
        with httpx.stream("POST", f"{node.base_url}/v1/chat/completions", json=payload,
                          headers={"Authorization": f"Bearer {node.api_key()}"}, timeout=120) as reply:
            assert reply.status_code == 200
            received = []
            for event in events(reply.iter_lines()):
                received.append(event)
                if len(received) == 3:  # the role chunk and two pieces of text are out: stop the node now
                    node.proc.send_signal(signal.SIGTERM)
        assert received[-1] == "[DONE]"
        chunks = [e for e in received if isinstance(e, dict)]
        assert chunks[-1]["choices"][0]["finish_reason"] == "length"
        assert len(content_of(chunks)) > 20
        assert node.proc.wait(60) == 0, node.log()
        assert "SIGTERM received: draining" in node.log()
        assert not _port_open(redis_port), "the embedded redis-server should stop with the daemon"
        assert (tmp_path / "data" / "redis" / "appendonlydir").is_dir(), "embedded Redis persists with AOF"
    finally:
        node.kill()


def test_during_a_drain_new_requests_are_refused_at_once_and_the_open_stream_finishes(tmp_path, redis_server,
                                                                                        builtin_model_dir, models_dir):
    node = CynodeProcess(tmp_path, redis_url=redis_server.url, models_dir=models_dir, extra=SLOW_MACHINE_DRAIN).start()
    try:
        payload = {"model": "smollm2-135m-instruct", "messages": QUESTION, "temperature": 0, "max_tokens": 40,
                   "stream": True}
        headers = {"Authorization": f"Bearer {node.api_key()}", "Cache-Control": "no-cache"}
        received, refused, readiness = [], None, None
        with httpx.stream("POST", f"{node.base_url}/v1/chat/completions", json=payload, headers=headers,
                          timeout=120) as reply:
            for event in events(reply.iter_lines()):
                received.append(event)
                if len(received) != 3:
                    continue
                node.proc.send_signal(signal.SIGTERM)
                wait_for(lambda: "draining 1 in-flight request" in node.log(), 30, "the drain to start")
                # A new client during the drain is refused at once, not left hanging...
                try:
                    httpx.post(f"{node.base_url}/v1/chat/completions", json={**payload, "stream": False},
                               headers=headers, timeout=5)
                except httpx.TransportError as exc:
                    refused = exc
                # ...and load balancers are told this node is not taking work.
                readiness = httpx.get(f"{node.metrics_url}/readyz", timeout=5)
        assert isinstance(refused, httpx.ConnectError), f"a request during the drain got {refused!r}"
        assert readiness.status_code == 503
        assert readiness.json()["roles"]["gateway"] == {"ready": False, "detail": "draining"}
        assert received[-1] == "[DONE]"  # the stream that was open finished whole
        chunks = [e for e in received if isinstance(e, dict)]
        assert chunks[-1]["choices"][0]["finish_reason"] in ("length", "stop") and len(content_of(chunks)) > 20
        assert node.proc.wait(60) == 0, node.log()
    finally:
        node.kill()


def test_a_role_that_cannot_start_stops_the_daemon_with_a_clear_message(tmp_path, redis_server, models_dir):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        node = CynodeProcess(tmp_path, redis_url=redis_server.url, models_dir=models_dir,
                             extra={"node": {"roles": ["gateway"]}, "gateway": {"listen": f"127.0.0.1:{busy.getsockname()[1]}"}})
        with pytest.raises(RuntimeError, match="exited with 1"):
            node.start(timeout=60)
        assert "role gateway failed to start: [gateway] listen" in node.log()
    finally:
        busy.close()


def test_an_unreachable_redis_stops_start_up_naming_it(tmp_path, models_dir):
    port = free_port()
    node = CynodeProcess(tmp_path, redis_url=f"redis://127.0.0.1:{port}/0", models_dir=models_dir,
                         extra={"node": {"roles": ["gateway"]}})
    with pytest.raises(RuntimeError, match="exited with 1"):
        node.start(timeout=60)
    assert f"Redis at redis://127.0.0.1:{port}/0 does not answer" in node.log()


async def test_peers_without_the_cluster_key_are_refused(node):
    address = f"127.0.0.1:{node.ports['worker']}"

    async def health(make_channel):
        async with make_channel() as channel:
            return await worker_pb2_grpc.WorkerStub(channel).Health(worker_pb2.HealthRequest(), timeout=10)

    # Without a certificate under the cluster CA the TLS handshake fails: the call never reaches a handler.
    with pytest.raises(grpc.aio.AioRpcError) as plaintext:
        await health(lambda: grpc.aio.insecure_channel(address))
    assert plaintext.value.code() == grpc.StatusCode.UNAVAILABLE
    stranger = PeerAuth((base64.b64decode(generate_key()),))
    with pytest.raises(grpc.aio.AioRpcError) as wrong:
        await health(lambda: stranger.channel(address))
    assert wrong.value.code() == grpc.StatusCode.UNAVAILABLE
    member = PeerAuth(load_keys(node.workdir / "data" / "cluster.key"))
    assert (await health(lambda: member.channel(address))).ready is True


def test_the_daemon_runs_as_a_module_and_reports_its_version():
    result = subprocess.run([sys.executable, "-m", "cynode", "version"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and result.stdout.startswith("cynode ")


def test_a_bad_models_json_stops_start_up_naming_the_file_and_the_entry(tmp_path, models_dir):
    registry = tmp_path / "models.json"
    registry.write_text('{"models": [{"id": "a", "engine": "sim"}, {"id": "b", "source": {"path": "/nowhere"}}]}')
    node = CynodeProcess(tmp_path, redis_url="redis://127.0.0.1:1/0", models_dir=models_dir,
                         extra={"node": {"roles": ["worker"]}, "worker": {"model_registry": str(registry)}})
    with pytest.raises(RuntimeError, match="exited with 1"):
        node.start(timeout=60)
    assert f"{registry}: models[1].source.path: /nowhere is not a folder" in node.log()
