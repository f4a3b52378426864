"""The transformers engine in-process, the same engine behind a whole node, first start vs restart,
chunked prefill on vs off, and vLLM's own server: one run, every figure against a baseline of it.

    make bench-engines     [--levels 1 4 16 32] [--no-vllm] [--only stack first-start prefill vllm]

Real model (the built-in SmolLM2-135M-Instruct), greedy, 64 new tokens, a distinct prompt per
request (so no prefix is ever reused), closed-loop clients (bench_vllm.py's `measure`). Sections:

1. stack: (a) `TransformersEngine` in this process and (b) one `cynode run` node (all roles,
   embedded Redis, default [worker] settings: capacity from the memory budget) over HTTP/SSE with
   `Cache-Control: no-cache`, both loaded side by side and run in the order a b b a at each level
   of 1, 4, 16 and 32 streams: aggregate tokens/s, TTFT p50/p99, inter-token p99; (b)/(a) ratios.
2. first-start: (f) a node whose models folder was empty (it converted the GGUF at start, in a
   child process) and (r) a second node started afterwards on the finished folder (what a restart
   sees), both up at once, 1 stream, order f r r f: (f)/(r) ratios. Before the conversion moved to
   a child process, (f) decoded at about half the speed of (r) for the life of the process.
3. prefill: 4 short streams decoding when a 2000-token prompt arrives, on one `ContinuousBatcher`
   with chunked prefill (256 tokens per round) and with it off (the whole prompt in one round), and
   the same 4 streams with no long prompt (the baseline), 3 rounds each in alternating order: the
   short streams' inter-token p50/p99 and their stall (the longest gap while the long prompt was
   prefilled, median of the rounds), as ratios to the baseline and chunked on / off.
4. vllm: vLLM's OpenAI server (cpu-vllm, bench_vllm.py's settings) at 16 streams, the issue's bar
   for (b) at 16 streams. Skipped when vllm is not installed.

Bars (issue 14): (b) >= 0.95x (a) tokens/s at every level; (f) >= 0.95x (r); (b) at 16 streams >=
vLLM's server at 16. The figures depend on what else the machine runs: the load average is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import aiohttp

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parents[1]
sys.path[:0] = [str(BENCH), str(REPO / "tests")]

from bench_vllm import (MAX_TOKENS, Row, engine_stream, measure, openai_stream, print_table,  # noqa: E402
                        prompts, vllm_server, wait_ready)
from daemon_harness import CynodeProcess, free_port  # noqa: E402

from cynode.engines import BUILTIN_MODEL_ID, ensure_builtin_model  # noqa: E402

LEVELS = (1, 4, 16, 32)
REQUESTS = {1: 2, 4: 4, 16: 16, 32: 32}  # per run; each system runs twice per level (a b b a)
ENGINE, NODE = "(a) transformers engine in-process", "(b) cynode node (HTTP, cpu-transformers)"
FIRST, RESTART = "(f) node, first start (converted)", "(r) node, restart (folder there)"
VLLM = "(c) vLLM OpenAI server (cpu-vllm)"
LONG_PROMPT, PREFILL_CHUNK = 2000, 256  # the engine's own chunk (ContinuousBatcher's default)
ROUND_TIMEOUT = 300  # seconds one prefill round may take before the benchmark gives up on it


def node(workdir: Path, models_dir: Path) -> CynodeProcess:
    return CynodeProcess(workdir, redis_url=f"redis://127.0.0.1:{free_port()}/0", models_dir=models_dir,
                         embedded_redis=True, extra={"node": {"log_level": "warning"}})


def headers(process: CynodeProcess) -> dict[str, str]:
    # no-cache: the benchmark measures generation; bench_vllm's prompts are distinct anyway.
    return {"Authorization": f"Bearer {process.api_key()}", "Cache-Control": "no-cache"}


async def interleaved(systems: dict, levels, rows: list[Row], offset: int) -> int:
    """Each level: the systems in the order x y .. y x, each with its own fresh prompts."""
    names = list(systems)
    for level in levels:
        by_name = {name: Row(name, level) for name in names}
        for name in names + names[::-1]:
            count = REQUESTS[level]
            await measure(systems[name], level, prompts(count, offset), by_name[name])
            offset += count
        print(f"  level {level}: " + ", ".join(f"{n.split(')')[0]}) {r.tok_s:.1f} tok/s" for n, r in by_name.items()),
              flush=True)
        rows += by_name.values()
    return offset


async def warm(systems: dict) -> None:
    for name, stream in systems.items():  # the first requests pay for lazy set-up: not counted
        await measure(stream, 2, prompts(2, 50_000), Row(name, 0))


async def stack_section(levels, models_dir: Path, tmp: Path, session) -> tuple[list[Row], dict]:
    from cynode.engines.transformers_engine import TransformersEngine

    engine = TransformersEngine(ensure_builtin_model(models_dir), BUILTIN_MODEL_ID)  # default settings
    the_node = node(tmp / "stack", models_dir)
    rows: list[Row] = []
    try:
        await asyncio.gather(engine.start(), asyncio.to_thread(the_node.start, 600))
        systems = {ENGINE: engine_stream(engine), NODE: openai_stream(session, the_node.base_url, headers=headers(the_node))}
        await warm(systems)
        await interleaved(systems, levels, rows, 0)
        facts = {"engine capacity": engine.capacity(), "engine largest decode batch": engine._batcher.largest_batch,
                 "node capacity (gossip)": await node_capacity(session, the_node)}
    finally:
        await engine.close()
        await asyncio.to_thread(the_node.terminate)
    return rows, facts


async def node_capacity(session, process: CynodeProcess):
    """The capacity the node's worker publishes in gossip, as `cynode members` reads it."""
    async with session.get(f"{process.metrics_url}/v1/cluster/members",
                           headers={"Authorization": f"Bearer {process.api_key()}"}) as reply:
        members = (await reply.json())["members"]
    return next((m["meta"].get("capacity") for m in members if "capacity" in m.get("meta", {})), None)


async def first_start_section(tmp: Path, session, repeat: int = 1) -> list[Row]:
    fresh = tmp / "fresh-models"  # empty: the first node converts the GGUF as it starts
    first, again = node(tmp / "first", fresh), node(tmp / "restart", fresh)
    rows: list[Row] = []
    try:
        started = time.perf_counter()
        await asyncio.to_thread(first.start, 900)
        print(f"  first start (with the conversion) ready in {time.perf_counter() - started:.0f} s", flush=True)
        started = time.perf_counter()
        await asyncio.to_thread(again.start, 600)
        print(f"  restart ready in {time.perf_counter() - started:.0f} s", flush=True)
        systems = {FIRST: openai_stream(session, first.base_url, headers=headers(first)),
                   RESTART: openai_stream(session, again.base_url, headers=headers(again))}
        await warm(systems)
        for n in range(repeat):  # a lone stream's figure is the noisiest: --repeat runs more pairs
            await interleaved(systems, [1], rows, 100_000 + 1000 * n)
    finally:
        await asyncio.gather(asyncio.to_thread(first.terminate), asyncio.to_thread(again.terminate))
    return rows


def merge(rows: list[Row]) -> list[Row]:
    """Rows of the same system and level summed into one."""
    out: dict[tuple[str, int], Row] = {}
    for row in rows:
        into = out.setdefault((row.system, row.concurrency), Row(row.system, row.concurrency))
        into.requests, into.tokens, into.seconds = into.requests + row.requests, into.tokens + row.tokens, \
            into.seconds + row.seconds
        into.ttfts += row.ttfts
        into.gaps += row.gaps
        into.load += row.load
        for k, v in row.finish.items():
            into.finish[k] = into.finish.get(k, 0) + v
    return list(out.values())


# chunked prefill -------------------------------------------------------------------------------

def prefill_section(models_dir: Path, rounds: int = 3) -> list[tuple[str, list[float], list[float]]]:
    """Per case: every inter-token gap of the 4 short streams, and per round the longest gap they saw
    while the long prompt was being prefilled (from its arrival to its first token)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cynode.engines.attention import use_grouped_attention
    from cynode.engines.base import SamplingParams
    from cynode.engines.batcher import ContinuousBatcher, Sequence
    from cynode.engines.sampling import TokenSampler

    folder = ensure_builtin_model(models_dir)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, local_files_only=True).eval()
    use_grouped_attention(model)  # the attention the engine gives it

    def encode(text: str) -> list[int]:
        out = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True)
        return list(out["input_ids"] if hasattr(out, "keys") else out)

    long_ids = encode("Summarise this. " + "The quick brown fox jumps over the lazy dog. " * 200)[:LONG_PROMPT]

    def one(prefill_tokens: int, with_long: bool, round_: int) -> tuple[list[float], float]:
        batcher = ContinuousBatcher(model, eos_ids=(), max_batch=5, prefill_tokens=prefill_tokens)
        batcher.start()
        deadline = time.monotonic() + ROUND_TIMEOUT
        times: list[list[float]] = [[] for _ in range(5)]
        done = [threading.Event() for _ in range(5)]

        errors: list[object] = []

        def sink(i: int):
            def put(kind: str, payload: object) -> None:
                if kind == "tokens":
                    times[i].append(time.perf_counter())
                else:
                    if kind == "error":
                        errors.append(payload)
                    done[i].set()
            return put

        def check(what: str) -> None:
            # A stream that failed, or a round past its deadline, ends the benchmark with the reason
            # instead of waiting forever (a previous run sat here for good on a loaded host).
            if errors:
                raise RuntimeError(f"prefill round {round_}: a stream failed: {errors[0]!r}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"prefill round {round_}: {what} took over {ROUND_TIMEOUT} s "
                                   f"(decode steps so far: {batcher.steps}); is the host overloaded?")

        try:
            for i in range(4):
                ids = encode(prompts(1, 200_000 + 10 * round_ + i)[0])
                batcher.submit(Sequence(f"s{i}", ids, MAX_TOKENS, TokenSampler(SamplingParams(temperature=0.0), ids),
                                        sink(i)))
            while min(map(len, times[:4])) < 8:  # the short streams are decoding
                check("8 tokens of each short stream")
                if any(done[i].is_set() for i in range(4)):
                    raise RuntimeError(f"prefill round {round_}: a short stream ended before its 8th token")
                time.sleep(0.005)
            arrived = time.perf_counter()
            if with_long:
                batcher.submit(Sequence("long", long_ids, 4, TokenSampler(SamplingParams(temperature=0.0), long_ids),
                                        sink(4)))
            else:
                done[4].set()
            for event in done:
                while not event.wait(1.0):
                    check("the streams' end")
            check("the streams' end")
        finally:
            batcher.close()
        gaps = [(a, b - a) for ts in times[:4] for a, b in zip(ts, ts[1:])]
        # The window: from the long prompt's arrival to its first token (or, alone, as long as the
        # 16 next tokens take): the longest gap a short stream saw in it.
        until = times[4][0] if times[4] else arrived + sum(g for _, g in gaps[8:24])
        stall = max((g for a, g in gaps if a + g >= arrived and a <= until), default=0.0)
        return [g for _, g in gaps], stall

    one(PREFILL_CHUNK, False, -1)  # warm-up
    cases = ("no long prompt (baseline)", f"long prompt, chunked prefill ({PREFILL_CHUNK})", "long prompt, chunked prefill off")
    runs: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in cases}
    for round_ in range(rounds):
        for name in (cases if round_ % 2 == 0 else cases[::-1]):
            gaps, stall = one(1 << 20 if name.endswith("off") else PREFILL_CHUNK, not name.startswith("no"), round_)
            runs[name][0].extend(gaps)
            runs[name][1].append(stall)
    return [(name, gaps, stalls) for name, (gaps, stalls) in runs.items()]


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")


def print_prefill(results: list[tuple[str, list[float], list[float]]]) -> None:
    print(f"\nchunked prefill: 4 short streams decoding when a {LONG_PROMPT}-token prompt arrives (in-process batcher, "
          f"{len(results[0][2])} rounds); stall = the longest gap a short stream saw while the long prompt was "
          f"prefilled, median of the rounds")
    print(f"{'case':<40}{'ITL p50 ms':>12}{'ITL p99 ms':>12}{'stall ms':>10}{'ITL p99 / base':>16}{'stall / base':>14}")
    base_p99, base_stall = quantile(results[0][1], 0.99), quantile(results[0][2], 0.5)
    for name, gaps, stalls in results:
        print(f"{name:<40}{1000 * quantile(gaps, 0.5):>12.1f}{1000 * quantile(gaps, 0.99):>12.1f}"
              f"{1000 * quantile(stalls, 0.5):>10.0f}{quantile(gaps, 0.99) / base_p99:>16.2f}"
              f"{quantile(stalls, 0.5) / base_stall:>14.2f}")
    (_, on, on_stalls), (_, off, off_stalls) = results[1], results[2]
    print(f"ratio chunked on / off: ITL p99 {quantile(on, 0.99) / quantile(off, 0.99):.3f}, "
          f"stall {quantile(on_stalls, 0.5) / quantile(off_stalls, 0.5):.3f}")


# vLLM ------------------------------------------------------------------------------------------

async def vllm_section(models_dir: Path, tmp: Path, session) -> list[Row]:
    log_path = tmp / "vllm-server.log"
    rows: list[Row] = []
    with vllm_server(ensure_builtin_model(models_dir), log_path) as (base_url, proc):
        await wait_ready(session, base_url, proc, log_path)
        systems = {VLLM: openai_stream(session, base_url)}
        await warm(systems)
        await interleaved(systems, [16], rows, 300_000)
    return rows


# main ------------------------------------------------------------------------------------------

async def run(args, tmp: Path) -> dict:
    out: dict = {}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None)) as session:
        if "first-start" in args.only:
            print("first start vs restart ...", flush=True)
            out["first"] = merge(await first_start_section(tmp, session, args.repeat))
        if "stack" in args.only:
            print("engine in-process vs node ...", flush=True)
            out["stack"], out["facts"] = await stack_section(sorted(args.levels), args.models_dir, tmp, session)
        if "prefill" in args.only:
            print("chunked prefill on vs off ...", flush=True)
            out["prefill"] = await asyncio.to_thread(prefill_section, args.models_dir)
        if "vllm" in args.only and not args.no_vllm:
            if importlib.util.find_spec("vllm") is None:
                print("vllm is not installed: no vLLM row (make install-vllm)", flush=True)
            else:
                print("vLLM's server at 16 streams ...", flush=True)
                out["vllm"] = await vllm_section(args.models_dir, tmp, session)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--levels", type=int, nargs="+", default=list(LEVELS), choices=LEVELS)
    parser.add_argument("--only", nargs="+", default=["stack", "first-start", "prefill", "vllm"],
                        choices=["stack", "first-start", "prefill", "vllm"])
    parser.add_argument("--no-vllm", action="store_true")
    parser.add_argument("--repeat", type=int, default=1, help="pairs of first-start/restart runs (f r r f each)")
    parser.add_argument("--models-dir", type=Path, default=REPO / ".test-cache" / "models")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        out = asyncio.run(run(args, Path(tmp)))
    load = (f"{os.cpu_count()} CPUs; load average before: {' '.join(f'{x:.2f}' for x in load_before)}, "
            f"after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"\nSmolLM2-135M-Instruct, greedy, {MAX_TOKENS} new tokens, distinct prompts; {load}")
    if "stack" in out:
        rows = out["stack"] + out.get("vllm", [])
        print_table(rows, baseline=ENGINE, title="the engine in-process (a) and through one node (b)")
        print("  " + ", ".join(f"{k}: {v}" for k, v in out["facts"].items()))
        base = {r.concurrency: r for r in rows if r.system == ENGINE}
        stack = {r.concurrency: r for r in rows if r.system == NODE}
        worst = min(stack[c].tok_s / base[c].tok_s for c in stack)
        print(f"bar: (b) >= 0.95x (a) tokens/s at every level: worst {worst:.3f} ({'met' if worst >= 0.95 else 'NOT met'})")
        vllm16 = next((r for r in out.get("vllm", []) if r.concurrency == 16), None)
        if vllm16 is not None and 16 in stack:
            ratio = stack[16].tok_s / vllm16.tok_s
            print(f"bar: (b) at 16 streams >= vLLM's server at 16: {stack[16].tok_s:.1f} vs {vllm16.tok_s:.1f} "
                  f"tok/s, {ratio:.3f}x ({'met' if ratio >= 1 else 'NOT met'})")
    if "first" in out:
        print_table(out["first"], baseline=RESTART, title="first start (f) vs restart (r), 1 stream")
        f, r = (next(x for x in out["first"] if x.system == name) for name in (FIRST, RESTART))
        print(f"bar: (f) >= 0.95x (r) tokens/s: {f.tok_s / r.tok_s:.3f} ({'met' if f.tok_s >= 0.95 * r.tok_s else 'NOT met'})")
    if "prefill" in out:
        print_prefill(out["prefill"])


if __name__ == "__main__":  # vLLM spawns its engine core, which re-imports this module
    main()
