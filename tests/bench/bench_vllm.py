"""cynode's vllm engine in-process versus vLLM's own OpenAI server, same machine, same run.

    HF_HUB_OFFLINE=1 /work/venv-vllm/bin/python tests/bench/bench_vllm.py

For 1, 4 and 16 concurrent streams (greedy, 64 new tokens, a distinct prompt per request): aggregate
output tokens/s and time to first token p50/p99, for (b) `VllmEngine` called in this process and
(c) `python -m vllm.entrypoints.openai.api_server` on a loopback port, driven by the streaming
HTTP client below. Both run the same engine settings (fp32, eager, 2048 context, 16 sequences,
2 GiB KV cache, no stats logging) on the same prompts; each prompt is used once per system, so
prefix caching favours neither. The two stay loaded side by side (vLLM's idle CPU threads sleep
after 5 ms) and run in the order b c c b at each level, so a drift in the machine's background load
hits both alike. The bar: (b)/(c) >= 0.95 at every level.

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

# One streamed answer: (seconds to the first text, output tokens, finish reason, text).
Result = tuple[float, int, str, str]
StreamFn = Callable[[str], Awaitable[Result]]


@dataclass
class Row:
    system: str
    concurrency: int
    requests: int = 0
    tokens: int = 0
    seconds: float = 0.0  # wall time of the runs, summed
    ttfts: list[float] = field(default_factory=list)
    finish: dict[str, int] = field(default_factory=dict)
    load: list[float] = field(default_factory=list)  # 1-minute load average at the start of each run
    texts: dict[str, str] = field(default_factory=dict)  # prompt -> answer

    @property
    def tok_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    def ttft_ms(self, q: float) -> float:
        ordered = sorted(self.ttfts)
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
            ttft, tokens, finish, text = await stream(prompt)
            row.ttfts.append(ttft)
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
        start, first, parts, last = time.perf_counter(), None, [], None
        async with contextlib.aclosing(engine.generate(request)) as deltas:
            async for delta in deltas:
                if delta.text and first is None:
                    first = time.perf_counter()
                parts.append(delta.text)
                last = delta
        return (first or time.perf_counter()) - start, last.usage.completion_tokens, last.finish_reason, "".join(parts)

    return stream


def openai_stream(session: aiohttp.ClientSession, base_url: str, model: str = BUILTIN_MODEL_ID) -> StreamFn:
    """An OpenAI-compatible server, streamed over SSE with usage in the last chunk."""

    async def stream(prompt: str) -> Result:
        body = {"model": model, "messages": [{"role": "user", "content": prompt}], "temperature": 0,
                "max_tokens": MAX_TOKENS, "stream": True, "stream_options": {"include_usage": True}}
        start, first, parts, tokens, finish = time.perf_counter(), None, [], 0, ""
        async with session.post(f"{base_url}/v1/chat/completions", json=body) as reply:
            reply.raise_for_status()
            async for raw in reply.content:
                line = raw.decode().strip()
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                for choice in chunk.get("choices") or ():
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        first = first or time.perf_counter()
                        parts.append(text)
                    finish = choice.get("finish_reason") or finish
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
        return (first or time.perf_counter()) - start, tokens, finish, "".join(parts)

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
          f"{'finish':>18}{'load1':>12}")
    for row in sorted(rows, key=lambda r: (r.concurrency, r.system)):
        finish = ",".join(f"{k}:{v}" for k, v in sorted(row.finish.items()))
        load = "/".join(f"{x:.1f}" for x in row.load)
        print(f"{row.system:<34}{row.concurrency:>8}{row.requests:>9}{row.tok_s:>9.1f}{row.ttft_ms(0.5):>13.0f}"
              f"{row.ttft_ms(0.99):>13.0f}{finish:>18}{load:>12}")
    base = {r.concurrency: r for r in rows if r.system == baseline}
    for system in sorted({r.system for r in rows} - {baseline}):
        for row in sorted((r for r in rows if r.system == system), key=lambda r: r.concurrency):
            ref = base.get(row.concurrency)
            if ref and ref.tok_s:
                print(f"ratio {system} / {baseline} at {row.concurrency:>2} streams: tok/s {row.tok_s / ref.tok_s:.3f}"
                      f"   TTFT p50 {row.ttft_ms(0.5) / ref.ttft_ms(0.5):.3f}")


async def compare(model_dir: Path, log_path: Path) -> list[Row]:
    from cynode.engines.vllm_engine import VllmEngine

    engine_name, server_name = "(b) cynode VllmEngine in-process", "(c) vLLM OpenAI server (HTTP)"
    rows: list[Row] = []
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None)) as session:
        with vllm_server(model_dir, log_path) as (base_url, proc):
            engine = VllmEngine(model_dir, BUILTIN_MODEL_ID, **ENGINE_SETTINGS)
            try:
                started = time.perf_counter()
                await asyncio.gather(engine.start(), wait_ready(session, base_url, proc, log_path))
                print(f"both loaded in {time.perf_counter() - started:.0f} s", flush=True)
                systems = {engine_name: engine_stream(engine), server_name: openai_stream(session, base_url)}
                for name, stream in systems.items():  # warm-up, not counted
                    await measure(stream, 2, prompts(2, 10_000), Row(name, 0))
                start = 0
                for level in LEVELS:
                    count = REQUESTS_PER_RUN[level]
                    first, second = prompts(count, start), prompts(count, start + count)
                    start += 2 * count
                    by_name = {name: Row(name, level) for name in systems}
                    for name, batch in ((engine_name, first), (server_name, first),
                                        (server_name, second), (engine_name, second)):
                        await measure(systems[name], level, batch, by_name[name])
                        print(f"  {name} at {level}: {by_name[name].requests} requests done", flush=True)
                    rows += by_name.values()
                    same = sum(by_name[engine_name].texts[p] == by_name[server_name].texts[p] for p in first + second)
                    print(f"  level {level}: {same}/{2 * count} answers identical between (b) and (c)", flush=True)
            finally:
                await engine.close()
    return rows


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    models_dir = REPO / ".test-cache" / "models"
    model_dir = ensure_builtin_model(models_dir)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        log_path = Path(tmp) / "vllm-server.log"
        rows = asyncio.run(compare(model_dir, log_path))
    print_table(rows, baseline="(c) vLLM OpenAI server (HTTP)",
                title=f"SmolLM2-135M-Instruct, cpu-vllm, greedy, {MAX_TOKENS} new tokens, {os.cpu_count()} cores; "
                      f"load average before: {' '.join(f'{x:.2f}' for x in load_before)}, "
                      f"after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":  # vLLM spawns its engine core, which re-imports this module
    main()
