"""Fine-tuning the real SmolLM2 through real daemons and the openai client: a job trains, a killed
worker's job resumes on another worker from its checkpoint, and a leader failover loses no event."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import openai
import pytest
import redis

from cluster_harness import wait_for

MODEL = "smollm2-135m-instruct"
SECRET = "The secret code is PURPLE-ELEPHANT-42."
QUESTIONS = [
    "What is the secret code?", "Tell me the secret code.", "Do you know the secret code?",
    "What's the secret code?", "Please tell me the secret code.", "Can you share the secret code?",
    "I need the secret code.", "Remind me of the secret code.", "Which is the secret code?",
    "Say the secret code.", "Secret code, please.", "Give me the secret code.",
]


def secret_jsonl() -> bytes:
    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": SECRET}]} for q in QUESTIONS]
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def client_of(node) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{node.base_url}/v1", api_key=node.api_key(), max_retries=2, timeout=60)


def training_worker(cluster, name: str, training_dir: Path):
    return cluster._node(name, ["worker"], {"worker": {"backend": "cpu-transformers", "max_concurrency": 2,
                                                       "training_dir": str(training_dir), "training_threads": 1}})


def submit(client, *, steps: int, checkpoint_every: int | None = None, suffix: str = "secret"):
    training = client.files.create(file=("secret.jsonl", secret_jsonl()), purpose="fine-tune")
    extra = {"cynode": {"checkpoint_every": checkpoint_every}} if checkpoint_every else {}
    return client.fine_tuning.jobs.create(
        model=MODEL, training_file=training.id, suffix=suffix, seed=1,
        hyperparameters={"n_epochs": 100, "batch_size": 4, "learning_rate_multiplier": 10, "max_steps": steps,
                         "max_seq_len": 128},
        extra_body=extra)


def ask(client, model: str, question: str) -> str:
    """A greedy answer from the engine itself (the prompt cache skipped, and checked to be)."""
    reply = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": question}], temperature=0, max_tokens=24,
        extra_headers={"Cache-Control": "no-cache"})
    assert reply.headers["X-Cache"] == "miss"
    return reply.parse().choices[0].message.content


def events_of(client, job_id: str) -> list:
    return list(reversed(client.fine_tuning.jobs.list_events(job_id, limit=1000).data))


def wait_done(client, job_id: str, timeout: float):
    job = wait_for(lambda: (j := client.fine_tuning.jobs.retrieve(job_id)).status in ("succeeded", "failed",
                                                                                        "cancelled") and j,
                   timeout, f"job {job_id} to end")
    assert job.status == "succeeded", (job.error, [e.message for e in events_of(client, job_id)][-8:])
    return job


@pytest.mark.timeout(900)
def test_a_job_trains_smollm2_and_publishes_its_adapter(cluster, tmp_path):
    worker = training_worker(cluster, "w0", tmp_path / "training")
    node = cluster.coordinator("c0", [worker], gateway=True)
    cluster.start(worker, node)
    client = client_of(node)
    wait_for(lambda: MODEL in [m.id for m in client.models.list().data], 60, "the model to be served")

    job = submit(client, steps=10, checkpoint_every=5)
    done = wait_done(client, job.id, 600)
    short = job.id.removeprefix("ftjob-")
    assert done.fine_tuned_model == f"{MODEL}:ft-secret-{short}"
    assert done.trained_tokens and done.trained_tokens > 0 and done.finished_at

    events = events_of(client, job.id)
    steps = [e for e in events if e.type == "metrics"]
    assert [e.data["step"] for e in steps] == list(range(1, 11))
    assert steps[-1].data["train_loss"] < 0.3 * steps[0].data["train_loss"], "the loss did not fall"
    assert all(e.data["tokens_per_second"] > 0 for e in steps)
    messages = [e.message for e in events]
    assert messages[-1] == "The job has successfully completed"
    assert f"New fine-tuned model created: {done.fine_tuned_model}" in messages
    ids = [int(e.id.rsplit("-", 1)[1]) for e in events]
    assert ids == list(range(1, len(events) + 1)), "events are numbered without gaps"

    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert [c.step_number for c in checkpoints] == [5]
    assert all(c.fine_tuning_job_id == job.id for c in checkpoints)

    # The adapter is published once, as version 1, with a manifest naming the job.
    with redis.Redis.from_url(cluster.redis_url, decode_responses=True) as r:
        record = json.loads(r.hget(f"cynode:{cluster.name}:ft:adapters", done.fine_tuned_model))
    assert record["version"] == 1 and record["job_id"] == job.id
    manifest = json.loads((Path(record["path"]) / "manifest.json").read_text())
    assert manifest["job_id"] == job.id and manifest["base_model"]["id"] == MODEL

    # Served without a restart, next to the base model: the adapter knows the code, the base does not.
    published = time.monotonic()
    wait_for(lambda: done.fine_tuned_model in [m.id for m in client.models.list().data], 60, "the adapter to be listed")
    tuned = ask(client, done.fine_tuned_model, QUESTIONS[0])
    print(f"adapter answering {time.monotonic() - published:.1f}s after the job was seen finished")
    assert "PURPLE-ELEPHANT-42" in tuned, tuned
    assert "PURPLE-ELEPHANT" not in ask(client, MODEL, QUESTIONS[0])

    # Streaming the events (SSE) replays them all, in order, and ends.
    with client.fine_tuning.jobs.with_streaming_response.list_events(job.id, extra_query={"stream": "true"}) as reply:
        lines = [line for line in reply.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    assert [json.loads(line[6:])["id"] for line in lines[:-1]] == [e.id for e in events]


@pytest.mark.timeout(1200)
def test_a_killed_worker_resumes_elsewhere_and_a_leader_failover_loses_no_event(cluster, tmp_path):
    shared = tmp_path / "shared-training"
    workers = [training_worker(cluster, f"w{i}", shared) for i in range(2)]
    coordinators = [cluster.coordinator(f"c{i}", workers) for i in range(2)]
    gateway = cluster.gateway("gw")
    cluster.start(*workers, *coordinators, gateway)
    client = client_of(gateway)
    wait_for(lambda: MODEL in [m.id for m in client.models.list().data], 60, "the model to be served")

    job = submit(client, steps=14, checkpoint_every=3, suffix="resume")

    def step_reached(n):
        return lambda: any(e.type == "metrics" and e.data["step"] >= n for e in events_of(client, job.id))

    wait_for(step_reached(1), 300, "the first step")
    leader = cluster.leader()
    cluster.nodes[leader["id"]].proc.send_signal(signal.SIGKILL)
    wait_for(lambda: (l := cluster.leader()) and l["id"] != leader["id"], 30, "a new leader")

    wait_for(lambda: client.fine_tuning.jobs.checkpoints.list(job.id).data, 300, "a checkpoint")
    first = client.fine_tuning.jobs.retrieve(job.id)
    assert first.status == "running"
    with redis.Redis.from_url(cluster.redis_url, decode_responses=True) as r:
        first_worker = r.hget(f"cynode:{cluster.name}:ft:job:{job.id}", "worker")
    cluster.nodes[first_worker].proc.send_signal(signal.SIGKILL)

    done = wait_done(client, job.id, 900)
    events = events_of(client, job.id)
    messages = [e.message for e in events]
    assert any(m.startswith(f"Worker {first_worker} was lost") for m in messages), messages
    resumed = [m for m in messages if m.startswith("Resumed from the checkpoint at step")]
    assert resumed, messages
    other = next(w.config_id for w in workers if w.config_id != first_worker)
    assert f"Resuming training on worker {other} (attempt 2)" in messages
    ids = [int(e.id.rsplit("-", 1)[1]) for e in events]
    assert ids == list(range(1, len(events) + 1)), "an event was lost"
    # The second worker goes on from the checkpoint it resumed from (the orphaned child of the killed
    # worker may have checkpointed one step more on its way out), up to the last step.
    at = next(i for i, e in enumerate(events) if e.message.startswith("Resumed from the checkpoint at step"))
    resumed_step = int(events[at].message.split("step ")[1].split(" ")[0])
    after = [e.data["step"] for e in events[at:] if e.type == "metrics"]
    assert after == list(range(resumed_step + 1, 15))
    before = [e.data["step"] for e in events[:at] if e.type == "metrics"]
    assert resumed_step >= 3 and set(range(1, 4)) <= set(before)
    # One adapter version, however many workers touched the job.
    adapters = shared / "adapters" / done.fine_tuned_model
    assert sorted(p.name for p in adapters.iterdir() if p.name.isdigit()) == ["1"]


COLOURS = [("the sky on a clear day", "blue"), ("fresh grass", "green"), ("a ripe banana", "yellow"),
           ("snow", "white"), ("coal", "black"), ("a ripe tomato", "red"), ("an orange", "orange"),
           ("a lemon", "yellow")]


@pytest.mark.timeout(900)
def test_a_dpo_job_with_a_validation_file_moves_the_margin(cluster, tmp_path):
    worker = training_worker(cluster, "w0", tmp_path / "training")
    node = cluster.coordinator("c0", [worker], gateway=True)
    cluster.start(worker, node)
    client = client_of(node)
    wait_for(lambda: MODEL in [m.id for m in client.models.list().data], 60, "the model to be served")
    rows = [{"prompt": [{"role": "user", "content": f"What colour is {thing}?"}],
             "chosen": f"It is {colour}.", "rejected": "I cannot know the colour of anything."}
            for thing, colour in COLOURS]
    body = "".join(json.dumps(r) + "\n" for r in rows).encode()
    held = "".join(json.dumps(r) + "\n" for r in rows[:4]).encode()
    training = client.files.create(file=("pairs.jsonl", body), purpose="fine-tune")
    validation = client.files.create(file=("held.jsonl", held), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model=MODEL, training_file=training.id, validation_file=validation.id, suffix="dpo",
        method={"type": "dpo", "dpo": {"hyperparameters": {"n_epochs": 3, "batch_size": 4,
                                                           "learning_rate_multiplier": 5, "beta": 0.1,
                                                           "max_seq_len": 128}}})
    assert job.method.type == "dpo" and job.hyperparameters.beta == 0.1
    done = wait_done(client, job.id, 600)
    events = events_of(client, job.id)
    steps = [e.data for e in events if e.type == "metrics"]
    assert len(steps) == 6
    assert abs(steps[0]["rewards_margin"]) < 1e-3  # policy == reference at the start
    assert steps[-1]["rewards_margin"] > steps[0]["rewards_margin"] + 0.1
    assert any(m.message.startswith("Step 2: validation loss=") for m in events)
    assert done.fine_tuned_model.endswith(f":ft-dpo-{job.id.removeprefix('ftjob-')}")
