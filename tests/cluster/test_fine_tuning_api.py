"""The fine-tuning API through real daemons and the openai client: files, job life cycle, bad rows.

These run on a `sim` worker, which serves the model `sim` and takes no training jobs (it cannot
train), so a valid job stays `queued`: the queue, cancel, pause and resume are seen without any
training. Training itself is in test_fine_tuning_train.py.
"""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from cluster_harness import wait_for


@pytest.fixture
def gateway(cluster):
    worker = cluster.sim_worker("w0")
    node = cluster.coordinator("c0", [worker], gateway=True)
    cluster.start(worker, node)
    wait_for(cluster.leader, 20, "a leader")
    wait_for(lambda: "sim" in [m.id for m in client_of(node).models.list().data], 30, "the model sim to be served")
    return node


def client_of(node) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{node.base_url}/v1", api_key=node.api_key(), max_retries=0)


def jsonl(rows) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


GOOD = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]} for i in range(3)]


def wait_status(client, job_id, statuses, timeout=30):
    return wait_for(lambda: (j := client.fine_tuning.jobs.retrieve(job_id)).status in statuses and j, timeout,
                    f"job {job_id} to be {statuses}")


def test_files_upload_list_retrieve_content_delete(gateway):
    client = client_of(gateway)
    uploaded = client.files.create(file=("train.jsonl", jsonl(GOOD)), purpose="fine-tune")
    assert uploaded.id.startswith("file-") and uploaded.filename == "train.jsonl"
    assert uploaded.bytes == len(jsonl(GOOD)) and uploaded.purpose == "fine-tune"
    assert uploaded.id in [f.id for f in client.files.list().data]
    assert client.files.retrieve(uploaded.id).bytes == uploaded.bytes
    assert client.files.content(uploaded.id).read() == jsonl(GOOD)
    assert client.files.delete(uploaded.id).deleted is True
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(uploaded.id)


def test_uploads_are_checked(gateway):
    client = client_of(gateway)
    with pytest.raises(openai.BadRequestError, match="purpose"):
        client.files.create(file=("t.jsonl", jsonl(GOOD)), purpose="assistants")
    with pytest.raises(openai.BadRequestError, match="UTF-8"):
        client.files.create(file=("t.jsonl", b"\xff\xfe\x00garbage"), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError, match="empty"):
        client.files.create(file=("t.jsonl", b"\n"), purpose="fine-tune")


def test_a_file_over_the_limit_is_refused_with_413(cluster):
    worker = cluster.sim_worker("w0")
    node = cluster.coordinator("c0", [worker], gateway=True)
    config = node.config_path.read_text().replace('[gateway]\n', '[gateway]\nmax_file_bytes = "2KiB"\n')
    node.config_path.write_text(config)
    cluster.start(worker, node)
    reply = httpx.post(f"{node.base_url}/v1/files", headers={"Authorization": f"Bearer {node.api_key()}"},
                       data={"purpose": "fine-tune"}, files={"file": ("big.jsonl", b"{}\n" * 2000)}, timeout=30)
    assert reply.status_code == 413, reply.text
    assert reply.json()["error"]["code"] == "file_too_large"


def test_a_bad_row_fails_the_job_in_validating_files_naming_file_row_field_and_format(gateway):
    client = client_of(gateway)
    rows = [*GOOD, {"messages": [{"role": "user", "content": "hi"}, {"role": "wizard", "content": "x"}]}]
    training = client.files.create(file=("train.jsonl", jsonl(rows)), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model="sim", training_file=training.id)
    assert job.status == "validating_files"
    failed = wait_status(client, job.id, {"failed", "queued"})
    assert failed.status == "failed"
    error = failed.error
    assert error.code == "invalid_training_file" and error.param == "training_file"
    assert error.message.startswith(f"train.jsonl ({training.id}): row 4: field 'messages[1].role'")
    assert "expected one of system, user, assistant, tool for format 'messages'" in error.message
    messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id).data]
    assert error.message in messages and messages[0] == "The job failed"


def test_a_job_queues_and_is_paused_resumed_and_cancelled(gateway):
    client = client_of(gateway)
    training = client.files.create(file=("train.jsonl", jsonl(GOOD)), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model="sim", training_file=training.id, suffix="demo", seed=7,
                                         hyperparameters={"n_epochs": 2, "learning_rate_multiplier": 5},
                                         metadata={"team": "a"})
    queued = wait_status(client, job.id, {"queued", "failed"})
    assert queued.status == "queued", queued.error
    assert queued.hyperparameters.n_epochs == 2 and queued.hyperparameters.learning_rate_multiplier == 5
    assert queued.seed == 7 and queued.user_provided_suffix == "demo" and queued.metadata == {"team": "a"}
    assert job.id in [j.id for j in client.fine_tuning.jobs.list().data]
    assert client.fine_tuning.jobs.pause(job.id).status == "paused"
    assert client.fine_tuning.jobs.resume(job.id).status == "queued"
    assert client.fine_tuning.jobs.cancel(job.id).status == "cancelled"
    with pytest.raises(openai.BadRequestError, match="cancelled"):
        client.fine_tuning.jobs.cancel(job.id)
    messages = [e.message for e in reversed(client.fine_tuning.jobs.list_events(job.id).data)]
    assert messages[0] == f"Created fine-tuning job: {job.id}"
    assert "Files validated: format messages, 3 training rows" in messages
    assert messages[-3:] == ["Job paused", "Job resumed: queued", "Job cancelled"]
    assert client.fine_tuning.jobs.checkpoints.list(job.id).data == []


def test_bad_job_requests_get_openai_errors(gateway):
    client = client_of(gateway)
    training = client.files.create(file=("train.jsonl", jsonl(GOOD)), purpose="fine-tune")
    with pytest.raises(openai.NotFoundError, match="no such file"):
        client.fine_tuning.jobs.create(model="sim", training_file="file-nope")
    with pytest.raises(openai.NotFoundError, match="not served"):
        client.fine_tuning.jobs.create(model="no-such-model", training_file=training.id)
    with pytest.raises(openai.BadRequestError, match="hyperparameters.warmup"):
        client.fine_tuning.jobs.create(model="sim", training_file=training.id, hyperparameters={"warmup": 3})
    with pytest.raises(openai.BadRequestError, match="suffix"):
        client.fine_tuning.jobs.create(model="sim", training_file=training.id, suffix="Bad Suffix")
    with pytest.raises(openai.BadRequestError, match="packing"):
        client.fine_tuning.jobs.create(model="sim", training_file=training.id,
                                       method={"type": "dpo", "dpo": {"hyperparameters": {"packing": True}}})
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.retrieve("ftjob-nope")


def test_a_key_without_the_training_scope_is_refused(cluster, tmp_path):
    worker = cluster.sim_worker("w0")
    node = cluster.coordinator("c0", [worker], gateway=True)
    keys = node.workdir / "data" / "api-keys.toml"
    keys.parent.mkdir(parents=True, exist_ok=True)
    keys.write_text('[[keys]]\nname = "admin"\nkey = "sk-cynode-admin-test"\nscopes = ["inference", "training", "admin"]\n'
                    '[[keys]]\nname = "chat"\nkey = "sk-cynode-chat-test"\nscopes = ["inference"]\n'
                    '[[keys]]\nname = "trainer"\nkey = "sk-cynode-trainer-test"\nscopes = ["inference", "training"]\n')
    keys.chmod(0o600)
    cluster.start(worker, node)
    chat_only = openai.OpenAI(base_url=f"{node.base_url}/v1", api_key="sk-cynode-chat-test", max_retries=0)
    with pytest.raises(openai.PermissionDeniedError, match="training"):
        chat_only.files.list()
    with pytest.raises(openai.PermissionDeniedError, match="training"):
        chat_only.fine_tuning.jobs.list()
    # A training key without admin sees only its own files.
    admin = openai.OpenAI(base_url=f"{node.base_url}/v1", api_key="sk-cynode-admin-test", max_retries=0)
    trainer = openai.OpenAI(base_url=f"{node.base_url}/v1", api_key="sk-cynode-trainer-test", max_retries=0)
    theirs = admin.files.create(file=("a.jsonl", jsonl(GOOD)), purpose="fine-tune")
    mine = trainer.files.create(file=("b.jsonl", jsonl(GOOD)), purpose="fine-tune")
    assert [f.id for f in trainer.files.list().data] == [mine.id]
    with pytest.raises(openai.NotFoundError):
        trainer.files.retrieve(theirs.id)
    assert {f.id for f in admin.files.list().data} == {theirs.id, mine.id}


def cynode_train(node, *args, timeout=120):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "cynode", "train", *args, "--url", node.base_url,
                           "--key", node.api_key()], capture_output=True, text=True, timeout=timeout)


def test_cynode_train_uploads_submits_and_follows_until_the_job_ends(gateway, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(jsonl([*GOOD, {"text": 3}]))
    result = cynode_train(gateway, str(bad), "--model", "sim", "--epochs", "2")
    assert result.returncode == 1, result
    assert "uploaded" in result.stderr and "created job ftjob-" in result.stderr
    assert "Files validated" not in result.stderr
    assert "row 4" in result.stderr and "ended failed" in result.stderr

    good = tmp_path / "good.jsonl"
    good.write_bytes(jsonl(GOOD))
    detached = cynode_train(gateway, str(good), "--model", "sim", "--suffix", "cli", "--detach")
    assert detached.returncode == 0, detached
    job_id = detached.stdout.strip()
    job = wait_status(client_of(gateway), job_id, {"queued"})
    assert job.user_provided_suffix == "cli"


def test_the_progress_line_shows_step_loss_speed_and_eta():
    from cynode.train_cli import progress_line

    line = progress_line({"step": 5, "total_steps": 10, "train_loss": 1.23456, "tokens_per_second": 321.7,
                          "eta_seconds": 75})
    assert line == "[############............] step 5/10  loss 1.2346  322 tok/s  ETA 00:01:15"
