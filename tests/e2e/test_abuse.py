"""What an attacker without keys can do to a real daemon's ports: slow clients are cut off, one
address cannot hold all connections or flood requests, and garbage thrown at every listener (HTTP
gateway and metrics, gRPC worker and coordinator, gossip UDP and TCP) for a bounded time neither
crashes the daemon, nor draws a 5xx, nor grows its memory past a bound; it serves throughout.

The fuzzer is seeded (the seed is printed), so a failure can be replayed; each client uses its own
loopback source address (127.x.y.z), which is what the per-address limits see."""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import time

import httpx
import pytest

from cynode.cluster_key import load_keys
from cynode.peer_auth import PeerAuth
from cynode.rpc import worker_pb2, worker_pb2_grpc
from daemon_harness import CynodeProcess

SEED = int(os.environ.get("CYNODE_FUZZ_SEED", random.randrange(1 << 30)))
LIMITS = {"max_connections_per_client": 20, "requests_per_second_per_client": 20, "header_timeout": "2s",
          "body_timeout": "2s", "max_body_bytes": 65536}


@pytest.fixture(scope="module")
def node(tmp_path_factory, redis_server, models_dir):
    proc = CynodeProcess(tmp_path_factory.mktemp("abuse"), redis_url=redis_server.url, models_dir=models_dir, extra={
        "gateway": LIMITS, "worker": {"backend": "sim", "sim": {"tokens_per_second": 500.0}}}).start(timeout=120)
    yield proc
    assert proc.terminate() == 0, proc.log()


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def connect(node: CynodeProcess, port: str, source: str) -> socket.socket:
    sock = socket.socket()
    sock.bind((source, 0))
    sock.settimeout(5)
    sock.connect((node.host, node.ports[port]))
    return sock


def closed_by_peer(sock: socket.socket, within: float) -> bool:
    sock.settimeout(within)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def client(source: str) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(local_address=source), timeout=30)


def serves(node: CynodeProcess, source: str = "127.0.9.9") -> bool:
    """A legitimate client still gets an answer from the engine (not the cache)."""
    with client(source) as c:
        reply = c.post(f"{node.base_url}/v1/chat/completions", headers={
            "Authorization": f"Bearer {node.api_key()}", "Cache-Control": "no-cache"},
            json={"model": "sim", "messages": [{"role": "user", "content": f"still there {time.time()}"}], "max_tokens": 3})
    return reply.status_code == 200 and reply.headers.get("X-Cache") == "miss"


def test_slow_headers_and_slow_bodies_are_cut_off_while_others_are_served(node):
    slow = [connect(node, "gateway", "127.0.1.1") for _ in range(5)]
    for sock in slow:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")  # and never the end of the headers
    started = time.monotonic()
    assert serves(node)
    for sock in slow:
        sock.sendall(b"X-a: b\r\n")  # dribbling does not extend the deadline
    assert all(closed_by_peer(sock, 10) for sock in slow)
    assert time.monotonic() - started < 10
    body = connect(node, "gateway", "127.0.1.2")
    body.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 1000\r\n\r\n{\"model\": ")
    answer = b""
    while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
        chunk = body.recv(65536)
        if not chunk:
            break
        answer += chunk
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408") and json.loads(payload)["error"]["code"] == "request_timeout"
    assert closed_by_peer(body, 5)


def test_one_address_cannot_hold_every_connection(node):
    held = [connect(node, "gateway", "127.0.2.1") for _ in range(LIMITS["max_connections_per_client"])]
    extra = [connect(node, "gateway", "127.0.2.1") for _ in range(5)]
    assert not closed_by_peer(held[-1], 0.3)  # well within the header time-out
    assert all(closed_by_peer(sock, 1) for sock in extra)  # closed on arrival
    assert serves(node, "127.0.2.2")  # another address is not affected
    for sock in held:
        sock.close()


def test_a_flood_from_one_address_gets_429_with_retry_after_and_others_are_served(node):
    key = node.api_key()
    with client("127.0.3.1") as c:
        replies = [c.get(f"{node.base_url}/v1/models", headers={"Authorization": f"Bearer {key}"}) for _ in range(80)]
        unauthenticated = c.get(f"{node.base_url}/v1/models")
    limited = [r for r in replies if r.status_code == 429]
    assert limited and all(r.status_code in (200, 429) for r in replies)
    assert limited[0].json()["error"]["code"] == "rate_limit_exceeded" and int(limited[0].headers["Retry-After"]) >= 1
    assert unauthenticated.status_code == 429  # the limit comes before the key is even looked at
    assert serves(node, "127.0.3.2")


def _garbage(rng: random.Random, size: int) -> bytes:
    return rng.randbytes(rng.randrange(size + 1))


def _fuzzed_body(rng: random.Random) -> bytes:
    valid = {"model": "sim", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    values = [None, True, -1, 0, 2**70, 1e308, float("nan"), "", "x" * 5000, "\u202e\ud7ff", [], {}, [[[[[]]]]],
              {"role": "system"}, [{"role": "user"}], [{"role": "tool", "content": 3}], "sim", 10**6]
    pick = rng.randrange(6)
    if pick == 0:
        return _garbage(rng, 2000)
    if pick == 1:
        return b"[" * rng.randrange(1, 5000)  # deep nesting
    body = dict(valid)
    for _ in range(rng.randrange(1, 4)):
        field = rng.choice(["model", "messages", "max_tokens", "temperature", "top_p", "n", "stop", "stream", "seed",
                            "logprobs", "response_format", "tools", "user", rng.choice(["", "\0", "a" * 300])])
        body[field] = rng.choice(values)
    text = json.dumps(body, allow_nan=True).encode()
    if pick == 2 and text:
        cut = rng.randrange(len(text))
        text = text[:cut] + rng.randbytes(rng.randrange(8)) + text[cut + 1:]
    return text


def fuzz_round(node: CynodeProcess, rng: random.Random, seconds: float, worker_key: bytes) -> list:
    """Garbage at every listener for `seconds`; returns the HTTP answers that were 5xx."""
    bad, deadline, round_ = [], time.monotonic() + seconds, 0
    key = node.api_key()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    while time.monotonic() < deadline:
        round_ += 1
        source = f"127.10.{round_ // 200 % 250}.{round_ % 200 + 1}"  # new addresses: the rate limit is tested elsewhere
        with client(source) as c:
            for _ in range(10):
                reply = c.post(f"{node.base_url}/v1/chat/completions", content=_fuzzed_body(rng),
                               headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json",
                                        "Cache-Control": "no-cache"})
                if reply.status_code >= 500:
                    bad.append((reply.status_code, reply.text[:300]))
            for path in ("/v1/models", "/%ff%00", "/v1/chat/completions?" + "a=" * 500, "/" + "x" * 9000):
                reply = c.get(f"{node.base_url}{path}", headers={"Authorization": rng.choice([f"Bearer {key}", "Bearer " + "a" * 5000, "x"])})
                if reply.status_code >= 500:
                    bad.append((reply.status_code, path[:50]))
        for port in ("gateway", "metrics", "worker", "coordinator", "gossip"):
            with connect(node, port, source) as sock:
                prefix = rng.choice([b"", b"GET / HTTP/1.1\r\n", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
                                     b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", b"\xff\xff\xff\xff", b"\x00\x00\x00\x10"])
                try:
                    sock.sendall(prefix + _garbage(rng, 4096))
                except OSError:
                    pass
        for _ in range(50):
            udp.sendto(rng.choice([b"\x01\x00\x07default", b"\x01\x01\x07default", b""]) + _garbage(rng, 1400),
                       (node.host, node.ports["gossip"]))
    udp.close()
    return bad


async def member_health(node: CynodeProcess, key: bytes) -> bool:
    async with PeerAuth((key,)).channel(f"{node.host}:{node.ports['worker']}") as channel:
        return (await worker_pb2_grpc.WorkerStub(channel).Health(worker_pb2.HealthRequest(), timeout=10)).ready


@pytest.mark.timeout(300)
def test_garbage_at_every_listener_crashes_nothing_draws_no_5xx_and_memory_stays_bounded(node):
    print(f"fuzz seed {SEED} (CYNODE_FUZZ_SEED={SEED} replays it)")
    rng = random.Random(SEED)
    (cluster_key,) = load_keys(node.workdir / "data" / "cluster.key")
    assert fuzz_round(node, rng, 5, cluster_key) == []  # warm up: allocator arenas, caches, lazy imports
    baseline = rss_bytes(node.proc.pid)
    for _ in range(3):
        assert fuzz_round(node, rng, 8, cluster_key) == []
        assert node.proc.poll() is None and serves(node)
        assert asyncio.run(member_health(node, cluster_key))
    grown = rss_bytes(node.proc.pid) - baseline
    print(f"RSS {baseline / 2**20:.0f} MiB after warm-up, grew {grown / 2**20:.1f} MiB over 24 s of fuzzing")
    assert grown < 64 * 2**20
    members = httpx.get(f"{node.metrics_url}/v1/cluster/members", headers={"Authorization": f"Bearer {node.api_key()}"},
                        timeout=10).json()["members"]
    assert [m["state"] for m in members] == ["alive"]
    assert "Traceback" not in node.log_path.read_text()
