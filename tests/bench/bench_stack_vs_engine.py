"""Single-stream speed of the real model: the engine in-process, the worker over gRPC, the full stack.

    make bench

Same machine, same run, same greedy request: first the cpu-transformers engine called directly,
then a real `cynode run` daemon (all roles, embedded Redis): its worker's Predict stream called
directly over signed gRPC, and the full path over HTTP with SSE. Prints time to first token and
decode tokens/s for each and their ratios to the engine: the gaps are what gRPC, and then the
gateway → coordinator → worker path, cost.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))

from daemon_harness import CynodeProcess, free_port  # noqa: E402

from cynode.engines import BUILTIN_MODEL_ID, ensure_builtin_model  # noqa: E402
from cynode.engines.base import ChatMessage, GenerationRequest, SamplingParams  # noqa: E402
from cynode.engines.transformers_engine import TransformersEngine  # noqa: E402

PROMPT = "Write a long story about a lighthouse keeper and a storm."
MAX_TOKENS = 64
RUNS = 5


def summarize(samples: list[tuple[float, float, int]]) -> dict:
    """samples: (ttft s, decode seconds after the first token, tokens)."""
    return {
        "ttft_ms": statistics.median(s[0] for s in samples) * 1000,
        "tok_s": statistics.median((s[2] - 1) / s[1] for s in samples if s[1] > 0),
        "tokens": statistics.median(s[2] for s in samples),
    }


async def engine_in_process(models_dir: Path) -> dict:
    engine = TransformersEngine(ensure_builtin_model(models_dir), BUILTIN_MODEL_ID, max_concurrency=4)
    await engine.start()
    samples = []
    try:
        for run in range(RUNS + 1):
            request = GenerationRequest(f"bench-{run}", BUILTIN_MODEL_ID, (ChatMessage("user", PROMPT),),
                                        sampling=SamplingParams(temperature=0, max_tokens=MAX_TOKENS))
            start = time.perf_counter()
            first = None
            tokens = 0
            async for delta in engine.generate(request):
                if delta.token_ids and first is None:
                    first = time.perf_counter()
                if delta.usage:
                    tokens = delta.usage.completion_tokens
            if run:  # the first run warms caches and is not counted
                samples.append((first - start, time.perf_counter() - first, tokens))
    finally:
        await engine.close()
    return summarize(samples)


async def worker_over_grpc(node) -> dict:
    """Predict on the daemon's worker, signed with its cluster key, as the gateway calls it."""
    from cynode.cluster_key import load_keys
    from cynode.peer_auth import PeerAuth
    from cynode.rpc import common_pb2, worker_pb2, worker_pb2_grpc

    auth = PeerAuth(load_keys(node.workdir / "data" / "cluster.key"), roles=("gateway",))  # Predict is for a gateway
    _, leader = node.get_json("/v1/cluster/leader", node.api_key())
    epoch = leader["epoch"]  # the worker refuses calls from an older leader epoch than it has seen
    samples = []
    async with auth.channel(f"{node.host}:{node.ports['worker']}") as channel:
        stub = worker_pb2_grpc.WorkerStub(channel)
        for run in range(RUNS + 1):
            request = worker_pb2.PredictRequest(
                request_id=f"grpc-{run}", model=BUILTIN_MODEL_ID, messages=[common_pb2.ChatMessage(role="user", content=PROMPT)],
                sampling=common_pb2.SamplingParams(temperature=0, max_tokens=MAX_TOKENS), epoch=epoch)
            start = time.perf_counter()
            first = None
            tokens = 0
            async for chunk in stub.Predict(request, timeout=300):
                if chunk.token_ids and first is None:
                    first = time.perf_counter()
                if chunk.finish_reason:
                    tokens = chunk.usage.completion_tokens
            if run:
                samples.append((first - start, time.perf_counter() - first, tokens))
    return summarize(samples)


def full_stack(models_dir: Path, workdir: Path) -> tuple[dict, dict]:
    node = CynodeProcess(workdir, redis_url=f"redis://127.0.0.1:{free_port()}/0", models_dir=models_dir,
                         embedded_redis=True).start()
    samples = []
    try:
        key = node.api_key()
        body = {"model": BUILTIN_MODEL_ID, "messages": [{"role": "user", "content": PROMPT}], "temperature": 0,
                "max_tokens": MAX_TOKENS, "stream": True, "stream_options": {"include_usage": True}}
        with httpx.Client(timeout=300) as client:
            for run in range(RUNS + 1):
                start = time.perf_counter()
                first = None
                tokens = 0
                with client.stream("POST", f"{node.base_url}/v1/chat/completions", json=body,
                                   # no-cache: identical greedy requests would otherwise be cache hits
                                   headers={"Authorization": f"Bearer {key}", "Cache-Control": "no-cache"}) as reply:
                    for line in reply.iter_lines():
                        if not line.startswith("data: ") or line == "data: [DONE]":
                            continue
                        chunk = json.loads(line[6:])
                        if chunk["choices"] and chunk["choices"][0]["delta"].get("content") and first is None:
                            first = time.perf_counter()
                        if chunk.get("usage"):
                            tokens = chunk["usage"]["completion_tokens"]
                assert reply.headers.get("X-Cache") == "miss", "the benchmark must measure generation, not the cache"
                if run:
                    samples.append((first - start, time.perf_counter() - first, tokens))
        grpc_only = asyncio.run(worker_over_grpc(node))
    finally:
        node.terminate()
    return grpc_only, summarize(samples)


def main() -> None:
    repo = TESTS.parent
    models_dir = repo / ".test-cache" / "models"
    models_dir.mkdir(parents=True, exist_ok=True)
    engine = asyncio.run(engine_in_process(models_dir))
    with tempfile.TemporaryDirectory() as tmp:
        grpc_only, stack = full_stack(models_dir, Path(tmp))
    print(f"\nSmolLM2-135M-Instruct, cpu-transformers, greedy, {MAX_TOKENS} new tokens, median of {RUNS} runs")
    print(f"{'path':<34}{'TTFT ms':>10}{'decode tok/s':>15}{'tokens':>8}")
    print(f"{'engine in-process':<34}{engine['ttft_ms']:>10.1f}{engine['tok_s']:>15.2f}{engine['tokens']:>8.0f}")
    for name, row in (("worker over gRPC", grpc_only), ("full stack (HTTP→coord→worker)", stack)):
        print(f"{name:<34}{row['ttft_ms']:>10.1f}{row['tok_s']:>15.2f}{row['tokens']:>8.0f}")
    for name, row in (("ratio gRPC / engine", grpc_only), ("ratio stack / engine", stack)):
        print(f"{name:<34}{row['ttft_ms'] / engine['ttft_ms']:>10.2f}{row['tok_s'] / engine['tok_s']:>15.2f}")
    print(f"added TTFT: gRPC {grpc_only['ttft_ms'] - engine['ttft_ms']:.1f} ms, "
          f"full stack {stack['ttft_ms'] - engine['ttft_ms']:.1f} ms")


if __name__ == "__main__":
    main()
