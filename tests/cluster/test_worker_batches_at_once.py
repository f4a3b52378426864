"""32 concurrent requests to one worker: generated at once when its memory allows, in arrival order
when it does not (issue 14). Real daemons (a worker, a coordinator + gateway), the real SmolLM2 on
cpu-transformers, real Redis.

"At once" is read from the worker itself: its `worker_active_requests` gauge (requests past its
admission gate, inside the engine) is 32 while every one of the 32 streams has produced a token and
none has ended; a request waiting for a slot would have produced none. The streams are then closed
(aborted), so the test does not wait for 32 long answers.
"""

from __future__ import annotations

import concurrent.futures
import json
import threading

import httpx
import pytest

from cluster_harness import Cluster, chat, wait_for
from cynode.engines import BUILTIN_MODEL_ID
from cynode.engines.memory_manager import estimate_footprint
from cynode.engines.registry import builtin_spec
from test_worker_capacity import budget_for, gossip_meta

pytestmark = pytest.mark.slow

STREAMS = 32


def worker_active(worker) -> float:
    """The worker's own gauge of requests it is generating, from its /metrics."""
    text = httpx.get(f"{worker.metrics_url}/metrics", timeout=10).text
    return next(float(line.split()[-1]) for line in text.splitlines() if line.startswith("worker_active_requests "))


def one_worker(cluster: Cluster, worker_settings: dict):
    worker = cluster._node("w1", ["worker"], {"worker": {"backend": "cpu-transformers", **worker_settings}})
    front = cluster.coordinator("c1", [worker], gateway=True, cluster={"seeds": [f"{worker.host}:{worker.ports['gossip']}"]})
    cluster.start(worker)
    cluster.start(front)
    return worker, front


def prompt(i: int) -> str:
    return f"Count from {i} to {i + 500}, one number per line."


def body(i: int, max_tokens: int) -> dict:
    return {"model": BUILTIN_MODEL_ID, "temperature": 0, "max_tokens": max_tokens, "stream": True,
            "messages": [{"role": "user", "content": prompt(i)}]}


@pytest.mark.timeout(600)
def test_with_the_default_configuration_32_concurrent_requests_to_one_worker_are_all_generated_at_once(
        cluster: Cluster):
    worker, front = one_worker(cluster, {})  # no memory_budget, no max_concurrency: the defaults
    wait_for(lambda: gossip_meta(front, "w1").get("capacity"), 60, "w1's capacity in gossip")
    capacity = gossip_meta(front, "w1")["capacity"]
    if capacity < STREAMS:  # the default budget is 80% of the memory available at start
        pytest.skip(f"this host's memory gives the worker a capacity of {capacity} (< {STREAMS}) by default")

    headers = {"Authorization": f"Bearer {front.api_key()}", "Cache-Control": "no-cache"}
    started = [threading.Event() for _ in range(STREAMS)]
    ended = [threading.Event() for _ in range(STREAMS)]
    release = threading.Event()
    caches: list[str | None] = [None] * STREAMS

    def stream(i: int) -> None:
        with httpx.stream("POST", f"{front.base_url}/v1/chat/completions", json=body(i, 400), headers=headers,
                          timeout=300) as reply:
            assert reply.status_code == 200, reply.read()
            caches[i] = reply.headers.get("X-Cache")
            for line in reply.iter_lines():
                if release.is_set():
                    return  # closing the stream aborts the request
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if event.get("choices") and event["choices"][0]["delta"].get("content"):
                    started[i].set()
                if event.get("choices") and event["choices"][0].get("finish_reason"):
                    ended[i].set()
        ended[i].set()

    with concurrent.futures.ThreadPoolExecutor(STREAMS) as threads:
        futures = [threads.submit(stream, i) for i in range(STREAMS)]
        try:
            wait_for(lambda: all(e.is_set() for e in started) or any(e.is_set() for e in ended), 300,
                     "every stream's first token")
            assert not any(e.is_set() for e in ended), "a stream ended before all 32 had started"
            assert all(e.is_set() for e in started)
            active = worker_active(worker)  # read while all 32 are open and none has ended
        finally:
            release.set()
        for future in futures:
            future.result()
    assert active == STREAMS, f"the worker was generating {active} requests, not all {STREAMS}"
    assert caches == ["miss"] * STREAMS
    wait_for(lambda: worker_active(worker) == 0, 60, "the closed streams to leave the worker")


@pytest.mark.timeout(600)
def test_32_concurrent_requests_to_a_worker_whose_memory_fits_one_run_one_at_a_time_in_arrival_order(
        cluster: Cluster):
    worker, front = one_worker(cluster, {"memory_budget": budget_for(estimate_footprint(builtin_spec()), 1)})
    wait_for(lambda: gossip_meta(front, "w1").get("capacity") == 1, 60, "w1's capacity 1 in gossip")
    clock = threading.Lock()
    order: list[int] = []
    seen_active: list[float] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            seen_active.append(worker_active(worker))
            stop.wait(0.05)

    def ask(i: int):
        def on_first() -> None:
            with clock:
                order.append(i)
        text, finish, _ = chat(front, BUILTIN_MODEL_ID, content=prompt(i), max_tokens=4, stream=True,
                                cache=False, timeout=300, on_first=on_first)
        return text, finish

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        with concurrent.futures.ThreadPoolExecutor(STREAMS) as threads:
            futures = []
            for i in range(STREAMS):  # sent in order: each once the coordinator has queued the one before
                futures.append(threads.submit(ask, i))
                wait_for(lambda: len(cluster.tasks()) > i, 60, f"request {i} in the coordinator's queue")
            answers = [f.result() for f in futures]
    finally:
        stop.set()
        watcher.join(10)
    assert all(finish in ("stop", "length") and text for text, finish in answers)
    assert max(seen_active) == 1, seen_active  # never more than the one the memory fits
    assert order == list(range(STREAMS)), order  # each waited its turn, first come first served

