"""A fine-tuned adapter hot-loaded by a running vLLM worker (cpu-vllm, `[worker.lora] vllm = true`):
published the way a training worker publishes one, it answers under its own model id through the
HTTP API, as peft answers with it, while the base model answers as before, and the worker's vLLM
engine is never restarted."""

from __future__ import annotations

import json
import time

import openai
import psutil
import pytest
import redis
from lora_testkit import make_adapter

from cluster_harness import wait_for
from cynode.engines.builtin_model import ensure_builtin_model
from cynode.engines.training import publish_adapter
from cynode.engines.training.output.manifest import write_manifest

MODEL = "smollm2-135m-instruct"
TUNED = f"{MODEL}:ft-vllm-hot1"
QUESTION = "What is the capital of France?"
TOKENS = 8


def ask(client: openai.OpenAI, model: str) -> str:
    """A greedy answer from the engine itself (the prompt cache skipped, and checked to be)."""
    reply = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": QUESTION}], temperature=0, max_tokens=TOKENS,
        extra_headers={"Cache-Control": "no-cache"})
    assert reply.headers["X-Cache"] == "miss"
    return reply.parse().choices[0].message.content


def engine_processes(pid: int) -> set[int]:
    """The worker daemon's child processes (vLLM's engine core among them)."""
    return {p.pid for p in psutil.Process(pid).children(recursive=True) if p.status() != psutil.STATUS_ZOMBIE}


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_a_published_adapter_is_hot_loaded_by_a_running_vllm_worker_and_answers_under_its_own_id(
        cluster, tmp_path, models_dir):
    trained = tmp_path / "trained"
    peft_answer = make_adapter(ensure_builtin_model(models_dir), trained, QUESTION, TOKENS)
    write_manifest(trained, {"job_id": "ftjob-vllmhot1", "base_model": {"id": MODEL}})

    worker = cluster._node("w0", ["worker"], {"worker": {"backend": "cpu-vllm", "tags": ["inference"],
                                                         "lora": {"vllm": True, "max_lora_rank": 8}}})
    node = cluster.coordinator("c0", [worker], gateway=True)
    worker.start(timeout=900)  # vLLM's start: a minute or more on a busy CPU
    node.start(timeout=120)
    client = openai.OpenAI(base_url=f"{node.base_url}/v1", api_key=node.api_key(), max_retries=2, timeout=120)
    wait_for(lambda: MODEL in [m.id for m in client.models.list().data], 120, "the model to be served")
    base = ask(client, MODEL)
    processes = engine_processes(worker.proc.pid)
    starts = worker.log().count("vLLM engine for")

    # Published as a training worker does: a checked, atomically written version, then its record.
    published = publish_adapter(trained, tmp_path / "adapters", TUNED, max_lora_rank=8)
    with redis.Redis.from_url(cluster.redis_url, decode_responses=True) as r:
        r.hset(f"cynode:{cluster.name}:ft:adapters", TUNED, json.dumps({
            "base": MODEL, "path": str(published.path), "version": published.version, "job_id": "ftjob-vllmhot1",
            "created_at": int(time.time())}))
    began = time.monotonic()
    wait_for(lambda: TUNED in [m.id for m in client.models.list().data], 60, "the adapter to be listed")
    tuned = ask(client, TUNED)
    print(f"published -> answering on vLLM: {time.monotonic() - began:.1f} s")

    assert tuned == peft_answer, "vLLM with the adapter answers as peft does"
    assert tuned != base
    assert ask(client, MODEL) == base, "the base model answers as before, next to the adapter"
    # Hot-loaded: the same daemon, the same vLLM engine-core process, no second engine start.
    assert worker.proc.poll() is None
    assert engine_processes(worker.proc.pid) == processes
    assert worker.log().count("vLLM engine for") == starts
    assert "loading adapter " + TUNED in worker.log()
