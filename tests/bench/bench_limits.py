"""What per-key limits cost a request: the same node, the same load, two keys.

    make bench-limits          (add --quick for a short run)

One real `cynode run` node (gateway + coordinator + `sim` worker, first token at once, a very high
token rate, a real Redis, prompt cache skipped with Cache-Control: no-cache), as in
`bench_overhead.py`, whose helpers this reuses. Two keys from one key file drive it in interleaved
rounds: "plain" (auth, and the usage accounting every key gets, off the response path) and
"metered" (the same plus requests_per_minute, tokens_per_minute, max_concurrent_requests and a
daily budget, all set far above what the run uses so nothing is refused: one Redis script before
the first token, one after the answer). A zero-work server measured in the same rounds gives the
node's added latency for each key. Printed: p50/p99 latency and added latency per key at
concurrency 1 and 16, whole and streamed, the requests/s ceiling at 16, and metered/plain ratios
(bars: added p50 and the ceiling within 10% of the plain key's, or under 0.5 ms added; and the
request-path bars of bench_overhead, 10% looser, met by the metered key).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from bench_overhead import BARS, TOKENS, measure, pct, sim_node, wait_served  # noqa: E402
from daemon_harness import free_port  # noqa: E402
from redis_harness import RedisServer  # noqa: E402

PLAIN = "sk-cynode-bench-plain-0123456789abcdef"
METERED = "sk-cynode-bench-metered-0123456789abcdef"
BAR_RATIO = 1.10
BAR_ABS_MS = 0.5


def keys_file(path: Path) -> Path:
    path.write_text(f"""
[[keys]]
name = "plain"
key = "{PLAIN}"

[[keys]]
name = "metered"
key = "{METERED}"
requests_per_minute = 10000000
tokens_per_minute = 1000000000
max_concurrent_requests = 100000
tokens_per_day = 1000000000000
""")
    os.chmod(path, 0o600)
    return path


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer rounds, for a smoke test")
    args = parser.parse_args()
    rounds, per_round = (2, 100) if args.quick else (6, 400)
    with tempfile.TemporaryDirectory(prefix="cynode-bench-limits-") as tmp:
        tmp_path = Path(tmp)
        redis = RedisServer(tmp_path / "redis").start()
        zero_port = free_port()
        zero = subprocess.Popen([sys.executable, str(HERE / "zero_server.py"), str(zero_port), str(TOKENS)])
        node = None
        try:
            (tmp_path / "node").mkdir()
            keys = keys_file(tmp_path / "node" / "bench-keys.toml")
            node = sim_node(tmp_path / "node", redis.url, gateway={"api_keys_file": str(keys)},
                            ttft="0s", tokens_per_second=1e6, answer_tokens=TOKENS)
            wait_served(node, PLAIN)
            direct_url = f"http://127.0.0.1:{zero_port}/v1/chat/completions"
            through_url = f"{node.base_url}/v1/chat/completions"
            no_cache = {"Cache-Control": "no-cache"}
            runs = (("direct", direct_url, PLAIN, {}), ("plain", through_url, PLAIN, no_cache),
                    ("metered", through_url, METERED, no_cache))
            for _, url, key, headers in runs:  # warm up
                measure(url, key, "sim", stream=False, concurrency=4, requests=200, headers=headers)

            rows = {}
            for stream in (False, True):
                for concurrency in (1, 16):
                    samples = {name: {"latency": [], "rps": []} for name, *_ in runs}
                    for _ in range(rounds):
                        for name, url, key, headers in runs:
                            got = measure(url, key, "sim", stream=stream, concurrency=concurrency,
                                          requests=per_round, headers=headers)
                            samples[name]["latency"] += got["latency"]
                            samples[name]["rps"].append(got["rps"])
                    rows[(stream, concurrency)] = samples

            print(f"bench-limits: one node (gateway + coordinator + sim worker, Redis, no-cache), key 'plain' (auth + "
                  f"usage) vs 'metered' (+ rpm, tpm, concurrency, daily budget), {TOKENS}-token answers, "
                  f"{rounds} interleaved rounds x {per_round} requests")
            print(f"{'':22}{'direct p50':>11}{'plain p50':>11}{'p99':>8}{'metered p50':>13}{'p99':>8}"
                  f"{'added plain':>13}{'added metered':>15}{'ratio':>7}   ms")
            met = True
            for (stream, concurrency), samples in rows.items():
                d50 = pct(samples["direct"]["latency"], 0.5) * 1e3
                p50, p99 = (pct(samples["plain"]["latency"], q) * 1e3 for q in (0.5, 0.99))
                m50, m99 = (pct(samples["metered"]["latency"], q) * 1e3 for q in (0.5, 0.99))
                added_plain, added_metered = p50 - d50, m50 - d50
                ratio = added_metered / added_plain if added_plain > 0 else float("nan")
                ok = ratio <= BAR_RATIO or added_metered - added_plain <= BAR_ABS_MS
                met &= ok
                label = f"{'streamed' if stream else 'whole'} c={concurrency} latency"
                print(f"{label:22}{d50:11.2f}{p50:11.2f}{p99:8.2f}{m50:13.2f}{m99:8.2f}{added_plain:13.2f}"
                      f"{added_metered:15.2f}{ratio:7.2f}{'' if ok else '  over the bar'}")
            plain_rps = statistics.median(rows[(False, 16)]["plain"]["rps"])
            metered_rps = statistics.median(rows[(False, 16)]["metered"]["rps"])
            direct_rps = statistics.median(rows[(False, 16)]["direct"]["rps"])
            rps_ratio = metered_rps / plain_rps
            met &= rps_ratio >= 1 / BAR_RATIO
            print(f"requests/s at c=16, whole: metered {metered_rps:.0f}, plain {plain_rps:.0f} "
                  f"(ratio {rps_ratio:.2f}; direct {direct_rps:.0f})")
            print(f"against plain, same run: metered added p50 within {BAR_RATIO - 1:.0%} of plain (or {BAR_ABS_MS} ms "
                  f"more), ceiling within {BAR_RATIO - 1:.0%}: {'met' if met else 'NOT met'}")
            # The request-path bars of bench_overhead, 10% looser, met by the metered key.
            w1 = [(pct(rows[(False, 1)]["metered"]["latency"], q) - pct(rows[(False, 1)]["direct"]["latency"], q)) * 1e3
                  for q in (0.5, 0.99)]
            w16 = (pct(rows[(False, 16)]["metered"]["latency"], 0.5) - pct(rows[(False, 16)]["direct"]["latency"], 0.5)) * 1e3
            limits = {k: v * BAR_RATIO for k, v in BARS.items() if k != "rps"}
            floor = BARS["rps"] / BAR_RATIO
            path_met = (w1[0] <= limits["c1_p50"] and w1[1] <= limits["c1_p99"] and w16 <= limits["c16_p50"]
                        and metered_rps >= floor)
            print(f"against the request-path bars +10%: metered added p50 {w1[0]:.2f} <= {limits['c1_p50']:.2f} ms, "
                  f"p99 {w1[1]:.2f} <= {limits['c1_p99']:.2f} ms at c=1; {w16:.2f} <= {limits['c16_p50']:.2f} ms at "
                  f"c=16; {metered_rps:.0f} >= {floor:.0f} req/s: {'met' if path_met else 'NOT met'}")
        finally:
            if node is not None:
                node.terminate()
            zero.terminate()
            zero.wait(10)
            redis.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
