"""What one cynode node adds to a request, against a zero-work OpenAI-shaped server.

    make bench-overhead        (add --quick for a short run)

"direct" is `zero_server.py` (parses the request, answers in OpenAI's shape, nothing else);
"through" is one real `cynode run` node (gateway + coordinator + `sim` worker, first token at once,
a very high token rate, a real Redis for the queue, prompt cache skipped with Cache-Control:
no-cache). Both answer 16 tokens; the same client (`loadgen.py`, its own process) drives both in
interleaved rounds, so a machine that gets busier or quieter does so for both. Printed:

- added latency p50/p99 at concurrency 1 and 16, whole and streamed, and added time to first token;
- the requests/s ceiling of the node at concurrency 16;
- how many paced streams (64 chunks, one every 20 ms) one node relays with no frame lost and no
  gap between two chunks over 10x the pace (200 ms).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))

from daemon_harness import CynodeProcess, free_port  # noqa: E402
from redis_harness import RedisServer  # noqa: E402

HERE = Path(__file__).resolve().parent
TOKENS = 16
BARS = {"c1_p50": 1.5, "c1_p99": 3.0, "c16_p50": 15.0, "rps": 800, "streams": 256}


def loadgen(job: dict) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as results:
        out = subprocess.run([sys.executable, str(HERE / "loadgen.py"), json.dumps(job), results.name],
                             capture_output=True, text=True, timeout=600)
        if out.returncode != 0:
            raise RuntimeError(f"loadgen failed: {out.stderr[-2000:]}")
        return json.loads(Path(results.name).read_text())


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def body(model: str, stream: bool, n: int = TOKENS) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "Say something."}], "max_tokens": n,
            "temperature": 0, "stream": stream}


def sim_node(workdir: Path, redis_url: str, gateway: dict | None = None, **sim) -> CynodeProcess:
    """`gateway`: settings added to the [gateway] section (bench_limits gives its key file)."""
    extra = {"worker": {"backend": "sim", "max_concurrency": 1024, "sim": sim}, "cluster": {"name": workdir.name},
             "node": {"log_level": "warning"},
             # The per-client guards stay checked, but far above what one load generator sends (it is one
             # address: the default 256 connections per client would cut the paced rounds short).
             "gateway": {"request_timeout": "120s", "requests_per_second_per_client": 1_000_000,
                         "max_connections_per_client": 100_000, **(gateway or {})}}
    return CynodeProcess(workdir, redis_url=redis_url, models_dir=workdir / "models", extra=extra).start(timeout=60)


def wait_served(node: CynodeProcess, key: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        request = urllib.request.Request(f"{node.base_url}/v1/models", headers={"Authorization": f"Bearer {key}"})
        with urllib.request.urlopen(request, timeout=5) as reply:
            if json.loads(reply.read())["data"]:
                return
        time.sleep(0.2)
    raise RuntimeError("the sim model is not served")


def measure(url: str, key: str, model: str, *, stream: bool, concurrency: int, requests: int, headers: dict) -> dict:
    result = loadgen({"mode": "closed", "url": url, "key": key, "body": body(model, stream), "concurrency": concurrency,
                      "requests": requests, "headers": headers})
    records = result["records"]
    bad = [r for r in records if r["status"] != 200]
    if bad:
        raise RuntimeError(f"{len(bad)} of {len(records)} requests failed: {bad[:3]}")
    if stream and any(r["chunks"] != TOKENS for r in records):
        raise RuntimeError("a stream lost chunks")
    if headers and any(r["cache"] != "miss" for r in records):
        raise RuntimeError("a request was answered by the prompt cache")
    return {"latency": [r["latency"] for r in records], "ttft": [r["ttft"] for r in records if r["ttft"] is not None],
            "rps": len(records) / result["elapsed"]}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer rounds, for a smoke test")
    args = parser.parse_args()
    rounds, per_round = (2, 100) if args.quick else (6, 400)
    with tempfile.TemporaryDirectory(prefix="cynode-bench-") as tmp:
        tmp_path = Path(tmp)
        redis = RedisServer(tmp_path / "redis").start()
        zero_port = free_port()
        zero = subprocess.Popen([sys.executable, str(HERE / "zero_server.py"), str(zero_port), str(TOKENS)])
        node = paced_node = None
        try:
            node = sim_node(tmp_path / "node", redis.url, ttft="0s", tokens_per_second=1e6, answer_tokens=TOKENS)
            key = node.api_key()
            wait_served(node, key)
            direct_url = f"http://127.0.0.1:{zero_port}/v1/chat/completions"
            through_url = f"{node.base_url}/v1/chat/completions"
            no_cache = {"Cache-Control": "no-cache"}
            for url, headers in ((direct_url, {}), (through_url, no_cache)):  # warm both up
                measure(url, key, "sim", stream=False, concurrency=4, requests=200, headers=headers)

            rows = {}
            for stream in (False, True):
                for concurrency in (1, 16):
                    samples = {"direct": {"latency": [], "ttft": [], "rps": []},
                               "through": {"latency": [], "ttft": [], "rps": []}}
                    for _ in range(rounds):
                        for name, url, headers in (("direct", direct_url, {}), ("through", through_url, no_cache)):
                            got = measure(url, key, "sim", stream=stream, concurrency=concurrency,
                                          requests=per_round, headers=headers)
                            samples[name]["latency"] += got["latency"]
                            samples[name]["ttft"] += got["ttft"]
                            samples[name]["rps"].append(got["rps"])
                    rows[(stream, concurrency)] = samples

            print(f"bench-overhead: one node (gateway + coordinator + sim worker, Redis queue, no-cache) vs a zero-work "
                  f"server, {TOKENS}-token answers, {rounds} interleaved rounds x {per_round} requests")
            print(f"{'':26}{'direct p50':>11}{'p99':>8}{'through p50':>13}{'p99':>8}{'added p50':>11}{'p99':>8}   ms")
            added = {}
            for (stream, concurrency), samples in rows.items():
                for what in (("latency", "ttft") if stream else ("latency",)):
                    d, t = samples["direct"][what], samples["through"][what]
                    d50, d99, t50, t99 = (pct(d, 0.5) * 1e3, pct(d, 0.99) * 1e3, pct(t, 0.5) * 1e3, pct(t, 0.99) * 1e3)
                    label = f"{'streamed' if stream else 'whole'} c={concurrency} {'TTFT' if what == 'ttft' else 'latency'}"
                    added[(stream, concurrency, what)] = (t50 - d50, t99 - d99)
                    print(f"{label:26}{d50:11.2f}{d99:8.2f}{t50:13.2f}{t99:8.2f}{t50 - d50:11.2f}{t99 - d99:8.2f}")
            ceiling = statistics.median(rows[(False, 16)]["through"]["rps"])
            direct_rps = statistics.median(rows[(False, 16)]["direct"]["rps"])
            print(f"requests/s at c=16, whole: through {ceiling:.0f}  (direct {direct_rps:.0f})")

            paced_node = sim_node(tmp_path / "paced", redis.url, ttft="0s", tokens_per_second=50.0, answer_tokens=64)
            wait_served(paced_node, paced_node.api_key())
            relayed = 0
            for streams in (64, 128, 256, 384, 512):
                result = loadgen({"mode": "paced", "url": f"{paced_node.base_url}/v1/chat/completions",
                                  "key": paced_node.api_key(), "body": body("sim", True, 64), "streams": streams,
                                  "headers": {"Cache-Control": "no-cache"}})
                records = result["records"]
                lost = sum(1 for r in records if r["status"] != 200 or r["chunks"] != 64)
                worst = max(r["max_gap"] for r in records)
                ok = lost == 0 and worst <= 0.2
                print(f"paced streams {streams:4}: {lost} incomplete, worst inter-chunk gap {worst * 1e3:.0f} ms "
                      f"({'ok' if ok else 'over the bar'})")
                if not ok:
                    break
                relayed = streams

            c1, c16 = added[(False, 1, "latency")], added[(False, 16, "latency")]
            print(f"bars: added p50 {c1[0]:.2f} <= {BARS['c1_p50']} ms, p99 {c1[1]:.2f} <= {BARS['c1_p99']} ms at c=1; "
                  f"added p50 {c16[0]:.2f} <= {BARS['c16_p50']} ms at c=16; {ceiling:.0f} >= {BARS['rps']} req/s; "
                  f"{relayed} >= {BARS['streams']} paced streams")
            met = (c1[0] <= BARS["c1_p50"] and c1[1] <= BARS["c1_p99"] and c16[0] <= BARS["c16_p50"]
                   and ceiling >= BARS["rps"] and relayed >= BARS["streams"])
            print("all bars met" if met else "NOT all bars met")
        finally:
            for proc in (node, paced_node):
                if proc is not None:
                    proc.terminate()
            zero.terminate()
            zero.wait(10)
            redis.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
