"""cynode on vLLM versus vLLM's own OpenAI server, same machine, same run.

    make bench-vllm

For 1, 4 and 16 concurrent streams (greedy, 64 new tokens, a distinct prompt per request): aggregate
output tokens/s, time to first token p50/p99 and inter-token latency p99, for (b) `VllmEngine`
called in this process, (c) `python -m vllm.entrypoints.openai.api_server` on a loopback port and
(d) a whole cynode node (gateway, coordinator with its Redis queue, worker on `cpu-vllm`) over
HTTP, the last two driven by the same streaming HTTP client below. Both run the same engine settings (fp32, eager, 2048 context, 16 sequences,
2 GiB KV cache, no stats logging) on the same prompts; each prompt is used once per system, so
prefix caching favours neither. The three stay loaded side by side (vLLM's idle CPU threads sleep
after 5 ms) and run in the order b c d d c b at each level, so a drift in the machine's background
load hits all alike. The node is asked with `Cache-Control: no-cache`. Bars: (b)/(c) >= 0.95
tokens/s at every level; at 16 streams (d)/(c) >= 0.99 tokens/s, and p99 TTFT and p99 inter-token
latency <= 1.1x.

The pieces are functions (`measure`, `engine_stream`, `openai_stream`, `print_table`) so other
engines' rows (the transformers engine takes `engine_stream` as is) can join the same table.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parents[2]
from cynode.engines import BUILTIN_MODEL_ID, ensure_builtin_model  # noqa: E402
from cynode.engines.base import ChatMessage, GenerationRequest, InferenceEngine, SamplingParams  # noqa: E402

LEVELS = (1, 4, 16)
MAX_TOKENS = 64
REQUESTS_PER_RUN = {1: 4, 4: 8, 16: 32}  # each level runs twice per system (b c c b)
ENGINE_SETTINGS = dict(dtype="float32", enforce_eager=True, max_model_len=2048, max_concurrency=16, kv_cache_gib=2)
TOPICS = ("a lighthouse keeper", "a lost robot", "a dragon who hates gold", "a baker in Paris", "a comet",
          "an old violin", "a desert caravan", "a submarine crew", "a talking cat", "a winter market",
          "a clockmaker", "a mountain rescue", "a forgotten library", "a river pirate", "a chess prodigy",
          "a space gardener", "a haunted train", "a beekeeper", "a glass city", "a storm chaser")
STYLES = ("Write a long story about {}.", "Tell a detailed tale of {}.",
          "Describe, at length, a day in the life of {}.")

# One streamed answer: (seconds to the first text, output tokens, finish reason, text, gaps between
# successive pieces of text in seconds).
Result = tuple[float, int, str, str, list[float]]
StreamFn = Callable[[str], Awaitable[Result]]


@dataclass
class Row:
    system: str
    concurrency: int
    requests: int = 0
    tokens: int = 0
    seconds: float = 0.0  # wall time of the runs, summed
    ttfts: list[float] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)  # inter-token latencies, every stream's
    finish: dict[str, int] = field(default_factory=dict)
    load: list[float] = field(default_factory=list)  # 1-minute load average at the start of each run
    texts: dict[str, str] = field(default_factory=dict)  # prompt -> answer

    @property
    def tok_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    def ttft_ms(self, q: float) -> float:
        return _quantile_ms(self.ttfts, q)

    def itl_ms(self, q: float) -> float:
        return _quantile_ms(self.gaps, q)


def _quantile_ms(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return 1000 * ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def prompts(count: int, start: int) -> list[str]:
    """`count` distinct prompts; `start` picks a fresh slice so no prompt repeats within a system."""
    return [STYLES[(i // len(TOPICS)) % len(STYLES)].format(TOPICS[i % len(TOPICS)]) + f" (#{i})"
            for i in range(start, start + count)]


async def measure(stream: StreamFn, concurrency: int, batch: list[str], row: Row) -> None:
    """Closed loop: `concurrency` clients, each sending its next prompt when its answer ends."""
    queue = list(reversed(batch))
    row.load.append(os.getloadavg()[0])

    async def client() -> None:
        while queue:
            prompt = queue.pop()
            ttft, tokens, finish, text, gaps = await stream(prompt)
            row.ttfts.append(ttft)
            row.gaps += gaps
            row.tokens += tokens
            row.requests += 1
            row.finish[finish] = row.finish.get(finish, 0) + 1
            row.texts[prompt] = text

    start = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for _ in range(concurrency):
            group.create_task(client())
    row.seconds += time.perf_counter() - start


def engine_stream(engine: InferenceEngine, model: str = BUILTIN_MODEL_ID) -> StreamFn:
    """Any cynode engine, called in-process the way the worker's Predict calls it."""
    counter = iter(range(1 << 62))

    async def stream(prompt: str) -> Result:
        request = GenerationRequest(f"bench-{next(counter)}", model, (ChatMessage("user", prompt),),
                                    sampling=SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS))
        start, first, parts, last, times = time.perf_counter(), None, [], None, []
        async with contextlib.aclosing(engine.generate(request)) as deltas:
            async for delta in deltas:
                if delta.text:
                    times.append(time.perf_counter())
                    first = first or times[-1]
                parts.append(delta.text)
                last = delta
        return ((first or time.perf_counter()) - start, last.usage.completion_tokens, last.finish_reason, "".join(parts),
                _gaps(times))

    return stream


def _gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in zip(times, times[1:])]


def openai_stream(session: aiohttp.ClientSession, base_url: str, model: str = BUILTIN_MODEL_ID,
                  headers: dict[str, str] | None = None) -> StreamFn:
    """An OpenAI-compatible server, streamed over SSE with usage in the last chunk."""

    async def stream(prompt: str) -> Result:
        body = {"model": model, "messages": [{"role": "user", "content": prompt}], "temperature": 0,
                "max_tokens": MAX_TOKENS, "stream": True, "stream_options": {"include_usage": True}}
        start, first, parts, tokens, finish, times = time.perf_counter(), None, [], 0, "", []
        async with session.post(f"{base_url}/v1/chat/completions", json=body, headers=headers) as reply:
            reply.raise_for_status()
            async for raw in reply.content:
                line = raw.decode().strip()
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                for choice in chunk.get("choices") or ():
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        times.append(time.perf_counter())
                        first = first or times[-1]
                        parts.append(text)
                    finish = choice.get("finish_reason") or finish
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
        return (first or time.perf_counter()) - start, tokens, finish, "".join(parts), _gaps(times)

    return stream


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def vllm_server(model_dir: Path, log_path: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """vLLM's own OpenAI server with the engine settings `VllmEngine` gets in this benchmark."""
    port = free_port()
    s = ENGINE_SETTINGS
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
               "--served-model-name", BUILTIN_MODEL_ID, "--host", "127.0.0.1", "--port", str(port),
               "--dtype", s["dtype"], "--enforce-eager", "--max-model-len", str(s["max_model_len"]),
               "--max-num-seqs", str(s["max_concurrency"]),
               "--kv-cache-memory-bytes", str(int(s["kv_cache_gib"] * (1 << 30))), "--disable-log-stats"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        yield f"http://127.0.0.1:{port}", proc
    finally:
        proc.terminate()  # the server stops its engine core on SIGTERM
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def wait_ready(session: aiohttp.ClientSession, base_url: str, proc: subprocess.Popen, log_path: Path,
                     within: float = 600) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"vLLM's server exited ({proc.returncode}):\n" + log_path.read_text()[-3000:])
        with contextlib.suppress(aiohttp.ClientError):
            async with session.get(f"{base_url}/health") as reply:
                if reply.status == 200:
                    return
        await asyncio.sleep(1)
    raise RuntimeError(f"vLLM's server was not ready within {within:.0f} s; see {log_path}")


def print_table(rows: list[Row], *, baseline: str, title: str) -> None:
    """One line per system and level, then each system's tokens/s over the baseline's, per level."""
    print(f"\n{title}")
    print(f"{'system':<34}{'streams':>8}{'requests':>9}{'tok/s':>9}{'TTFT p50 ms':>13}{'TTFT p99 ms':>13}"
          f"{'ITL p99 ms':>12}{'finish':>18}{'load1':>16}")
    for row in sorted(rows, key=lambda r: (r.concurrency, r.system)):
        finish = ",".join(f"{k}:{v}" for k, v in sorted(row.finish.items()))
        load = "/".join(f"{x:.1f}" for x in row.load)
        print(f"{row.system:<34}{row.concurrency:>8}{row.requests:>9}{row.tok_s:>9.1f}{row.ttft_ms(0.5):>13.0f}"
              f"{row.ttft_ms(0.99):>13.0f}{row.itl_ms(0.99):>12.0f}{finish:>18}{load:>16}")
    base = {r.concurrency: r for r in rows if r.system == baseline}
    for system in sorted({r.system for r in rows} - {baseline}):
        for row in sorted((r for r in rows if r.system == system), key=lambda r: r.concurrency):
            ref = base.get(row.concurrency)
            if ref and ref.tok_s:
                print(f"ratio {system} / {baseline} at {row.concurrency:>2} streams: tok/s {row.tok_s / ref.tok_s:.3f}"
                      f"   TTFT p50 {row.ttft_ms(0.5) / ref.ttft_ms(0.5):.3f}   TTFT p99 "
                      f"{row.ttft_ms(0.99) / ref.ttft_ms(0.99):.3f}   ITL p99 {row.itl_ms(0.99) / max(ref.itl_ms(0.99), 1e-9):.3f}")


@contextlib.contextmanager
def cynode_node(workdir: Path, models_dir: Path):
    """A whole cynode node on `cpu-vllm` with the same engine settings, and its own Redis."""
    sys.path.insert(0, str(REPO / "tests"))
    from daemon_harness import CynodeProcess
    from redis_harness import RedisServer

    registry = workdir / "models.json"
    registry.write_text(json.dumps({"models": [{"id": BUILTIN_MODEL_ID, "source": "builtin", "engine": "vllm",
                                                "dtype": ENGINE_SETTINGS["dtype"],
                                                "context_length": ENGINE_SETTINGS["max_model_len"]}]}))
    redis = RedisServer(workdir / "redis").start()
    node = CynodeProcess(workdir / "node", redis_url=redis.url, models_dir=models_dir, extra={
        "worker": {"backend": "cpu-vllm", "model_registry": str(registry), "max_concurrency": ENGINE_SETTINGS["max_concurrency"]},
        "node": {"log_level": "warning"}})
    try:
        yield node
    finally:
        node.terminate()
        redis.stop()


async def compare(model_dir: Path, log_path: Path, models_dir: Path) -> list[Row]:
    from cynode.engines.vllm_engine import VllmEngine

    engine_name, server_name = "(b) cynode VllmEngine in-process", "(c) vLLM OpenAI server (HTTP)"
    node_name = "(d) cynode node (HTTP, cpu-vllm)"
    rows: list[Row] = []
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None)) as session:
        with vllm_server(model_dir, log_path) as (base_url, proc), cynode_node(log_path.parent, models_dir) as node:
            engine = VllmEngine(model_dir, BUILTIN_MODEL_ID, **ENGINE_SETTINGS)
            try:
                started = time.perf_counter()
                await asyncio.gather(engine.start(), wait_ready(session, base_url, proc, log_path),
                                     asyncio.to_thread(node.start, 900))
                await asyncio.to_thread(_load_on_node, node)
                print(f"all three loaded in {time.perf_counter() - started:.0f} s", flush=True)
                node_headers = {"Authorization": f"Bearer {node.api_key()}", "Cache-Control": "no-cache"}
                systems = {engine_name: engine_stream(engine), server_name: openai_stream(session, base_url),
                           node_name: openai_stream(session, node.base_url, headers=node_headers)}
                for name, stream in systems.items():  # warm-up, not counted
                    await measure(stream, 2, prompts(2, 10_000), Row(name, 0))
                start = 0
                for level in LEVELS:
                    count = REQUESTS_PER_RUN[level]
                    first, second = prompts(count, start), prompts(count, start + count)
                    start += 2 * count
                    by_name = {name: Row(name, level) for name in systems}
                    for name, batch in ((engine_name, first), (server_name, first), (node_name, first),
                                        (node_name, second), (server_name, second), (engine_name, second)):
                        await measure(systems[name], level, batch, by_name[name])
                        print(f"  {name} at {level}: {by_name[name].requests} requests done", flush=True)
                    rows += by_name.values()
                    same = sum(by_name[engine_name].texts[p] == by_name[server_name].texts[p] for p in first + second)
                    via_node = sum(by_name[node_name].texts[p] == by_name[server_name].texts[p] for p in first + second)
                    print(f"  level {level}: {same}/{2 * count} answers identical between (b) and (c), "
                          f"{via_node}/{2 * count} between (d) and (c)", flush=True)
            finally:
                await engine.close()
    return rows


def _load_on_node(node) -> None:
    """Wait until the node's worker has loaded the model (vLLM starts on the first request's load)."""
    import urllib.request

    deadline = time.monotonic() + 900
    body = json.dumps({"model": BUILTIN_MODEL_ID, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}).encode()
    while time.monotonic() < deadline:
        request = urllib.request.Request(f"{node.base_url}/v1/chat/completions", data=body, headers={
            "Authorization": f"Bearer {node.api_key()}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=900) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(2)
    raise RuntimeError("the cynode node never answered")


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    models_dir = REPO / ".test-cache" / "models"
    model_dir = ensure_builtin_model(models_dir)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        log_path = Path(tmp) / "vllm-server.log"
        rows = asyncio.run(compare(model_dir, log_path, models_dir))
    print_table(rows, baseline="(c) vLLM OpenAI server (HTTP)",
                title=f"SmolLM2-135M-Instruct, cpu-vllm, greedy, {MAX_TOKENS} new tokens, {os.cpu_count()} cores; "
                      f"load average before: {' '.join(f'{x:.2f}' for x in load_before)}, "
                      f"after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    node = next(r for r in rows if r.system.startswith("(d)") and r.concurrency == 16)
    server = next(r for r in rows if r.system.startswith("(c)") and r.concurrency == 16)
    ratios = (node.tok_s / server.tok_s, node.ttft_ms(0.99) / server.ttft_ms(0.99), node.itl_ms(0.99) / server.itl_ms(0.99))
    met = ratios[0] >= 0.99 and ratios[1] <= 1.1 and ratios[2] <= 1.1
    print(f"bar at 16 streams, (d) cynode node / (c) vLLM's server: tok/s {ratios[0]:.3f} >= 0.99, "
          f"TTFT p99 {ratios[1]:.3f} <= 1.1, ITL p99 {ratios[2]:.3f} <= 1.1: {'met' if met else 'NOT met'}")


if __name__ == "__main__":  # vLLM spawns its engine core, which re-imports this module
    main()
