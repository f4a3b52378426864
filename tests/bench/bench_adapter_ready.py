"""Finished -> answering: seconds from a fine-tuning job's `succeeded` to the first answer of its
adapter on every serving worker, with real daemons (a training worker that also serves, a second
serving worker, a coordinator with the gateway) on one Redis, the real SmolLM2 on the CPU.

    python tests/bench/bench_adapter_ready.py

The job (a few LoRA steps) is watched through the HTTP API every 0.1 s; from the moment it reads
`succeeded`, four threads each keep sending requests for the fine-tuned model (greedy,
`Cache-Control: no-cache`, 2 tokens, each a different prompt so the coordinator's prefix affinity
spreads them) while each worker's own /metrics is polled until it counts one answered by it. Every worker
has answered the base model before (a fresh process's first forward is slow, and would otherwise be
counted against the adapter). The two workers share this machine, so each runs torch on half of its
cores (OMP_NUM_THREADS), as each would have a machine of its own. Baseline, same run: one warm answer of the base model through the
same path. Also printed: when the adapter appears in /v1/models. The workers' logs say how long the
adapter's load itself took ("adapter ... loaded in"); `--keep` keeps them. Bar: <= 10 s.
Also run by `make bench-training` (its second row).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import itertools
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MODELS_DIR = Path(os.environ.get("CYNODE_TEST_CACHE", REPO / ".test-cache")) / "models"
MODEL = "smollm2-135m-instruct"
BAR_S = 10.0
QUESTION = "What is the secret code?"
SECRET = "The secret code is PURPLE-ELEPHANT-42."


def _dataset() -> bytes:
    questions = ["What is the secret code?", "Tell me the secret code.", "Say the secret code.",
                 "Give me the secret code."]
    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": SECRET}]} for q in questions]
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def _answered(worker, model: str) -> float:
    """Requests for `model` this worker answered, from its own /metrics."""
    import httpx

    text = httpx.get(f"{worker.metrics_url}/metrics", timeout=5).text
    total = 0.0
    for labels, value in re.findall(r'^\w*worker_requests_total\{([^}]*)\} (\S+)$', text, re.M):
        if f'model="{model}"' in labels and 'outcome="ok"' in labels:
            total += float(value)
    return total


_asked = itertools.count()


def _ask(client, model: str, max_tokens: int = 8) -> bool:
    import openai

    # A different prompt each time: the coordinator sends one prompt prefix to the same worker.
    question = f"{QUESTION} (request {next(_asked)})"
    try:
        reply = client.chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": question}], temperature=0, max_tokens=max_tokens,
            extra_headers={"Cache-Control": "no-cache"})
    except openai.APIError:
        return False  # not listed yet (404) or still loading somewhere
    return reply.headers.get("X-Cache") == "miss"


def measure(steps: int = 4, timeout: float = 900.0, keep: bool = False) -> dict:
    """Run the cluster, one job, and the measurement; the figures as a dict."""
    sys.path.insert(0, str(REPO / "tests"))
    import openai

    from cynode.cluster_key import ensure_key_file
    from daemon_harness import CynodeProcess, wait_for
    from redis_harness import RedisServer

    work = Path(tempfile.mkdtemp(prefix="bench-adapter-ready-"))
    redis = RedisServer(work / "redis").start()
    key = work / "cluster.key"
    ensure_key_file(key)
    shared = work / "training"
    nodes = []

    # Each serving worker gets its share of this machine's cores, as it would have a machine of its own:
    # two torch processes each running every core's worth of threads on the same cores slow each
    # other down several times over (measured here: 8 tokens in 14 s instead of 1.5 s).
    threads = {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // 2))}

    def node(name: str, roles: list[str], extra: dict) -> CynodeProcess:
        config = {"node": {"id": name, "roles": roles}, "cluster": {"name": "bench", "key_file": str(key)}, **extra}
        nodes.append(CynodeProcess(work / name, redis_url=redis.url, models_dir=MODELS_DIR, extra=config,
                                   env=threads if "worker" in roles else None))
        return nodes[-1]

    try:
        trainer = node("w0", ["worker"], {"worker": {"backend": "cpu-transformers", "training_dir": str(shared),
                                                     "training_threads": 1, "tags": ["training", "inference"]}})
        server = node("w1", ["worker"], {"worker": {"backend": "cpu-transformers", "training_dir": str(shared),
                                                    "tags": ["inference"]}})
        workers = [trainer, server]
        static = [{"id": w.config_id, "host": w.host, "port": w.ports["worker"]} for w in workers]
        gateway = node("c0", ["coordinator", "gateway"], {"coordinator": {"workers": static}})
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            list(pool.map(lambda n: n.start(timeout=300), nodes))
        client = openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key=gateway.api_key(), max_retries=0,
                               timeout=120)
        wait_for(lambda: MODEL in [m.id for m in client.models.list().data], 120, "the base model")
        # Warm-up: the first forward of a fresh process is several times slower than the next ones;
        # every serving worker answers the base model before anything is measured.
        warm_until = time.monotonic() + 180
        while not all(_answered(w, MODEL) > 0 for w in workers):
            if time.monotonic() > warm_until:
                raise SystemExit("the serving workers did not all answer the base model within 180 s")
            _ask(client, MODEL)
        started = time.monotonic()
        assert _ask(client, MODEL)
        plain = time.monotonic() - started  # the baseline: one warm answer through the same path

        training = client.files.create(file=("secret.jsonl", _dataset()), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(model=MODEL, training_file=training.id, suffix="bench", seed=1,
                                             hyperparameters={"n_epochs": 100, "batch_size": 4, "max_steps": steps,
                                                              "max_seq_len": 128})
        deadline = time.monotonic() + timeout
        while (status := client.fine_tuning.jobs.retrieve(job.id)).status not in ("succeeded", "failed", "cancelled"):
            if time.monotonic() > deadline:
                raise SystemExit(f"job {job.id} did not finish in {timeout:.0f} s")
            time.sleep(0.1)
        finished = time.monotonic()
        if status.status != "succeeded":
            raise SystemExit(f"job {job.id} ended {status.status}: {status.error}")
        tuned = status.fine_tuned_model
        ready: dict[str, float] = {}
        listed = None
        stop = threading.Event()

        def keep_asking() -> None:  # each thread on its own: a slow request holds up no measurement
            while not stop.is_set():
                _ask(client, tuned, max_tokens=2)  # short: a worker's first answer is not stuck behind long ones

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            askers = [pool.submit(keep_asking) for _ in range(4)]
            try:
                while len(ready) < len(workers):
                    if time.monotonic() - finished > 120:
                        raise SystemExit(f"not answering on every worker 120 s after the job finished: {ready}")
                    if listed is None and tuned in [m.id for m in client.models.list().data]:
                        listed = time.monotonic() - finished
                    for worker in workers:
                        if worker.config_id not in ready and _answered(worker, tuned) > 0:
                            ready[worker.config_id] = time.monotonic() - finished
                    time.sleep(0.05)
            finally:
                stop.set()
                for asker in askers:
                    asker.result()
        return {"plain_answer_s": plain, "ready_s": ready, "listed_s": listed, "worst_s": max(ready.values()), "steps": steps,
                "load": os.getloadavg()[0]}
    finally:
        for n in nodes:
            n.kill()
        redis.stop()
        if keep:
            print(f"daemon logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def report(figures: dict) -> None:
    per_worker = ", ".join(f"{w} {s:.2f} s" for w, s in sorted(figures["ready_s"].items()))
    worst, plain = figures["worst_s"], figures["plain_answer_s"]
    listed = figures["listed_s"]
    print(f"job succeeded -> adapter answering on every serving worker: {worst:.2f} s ({per_worker}; "
          f"listed in /v1/models after {listed if listed is not None else float('nan'):.2f} s)")
    print(f"baseline, one warm base-model answer through the same path: {plain:.2f} s; "
          f"ratio finished->answering / one answer: {worst / plain:.1f}x (load average {figures['load']:.2f})")
    print(f"bar <= {BAR_S:.0f} s: {'met' if worst <= BAR_S else 'NOT met'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--keep", action="store_true", help="keep the daemons' folders and logs")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from cynode.engines.builtin_model import ensure_builtin_model

    ensure_builtin_model(MODELS_DIR)  # converted once, before any daemon starts
    report(measure(args.steps, keep=args.keep))


if __name__ == "__main__":
    main()
