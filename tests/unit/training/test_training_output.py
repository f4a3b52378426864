"""The job's output: a PEFT adapter folder with a manifest of hashes, the serving rules, versioned
publishing, merging, and a finished job that is not trained twice."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cynode.engines.training import (
    JobSpec, adapter_problems, check_adapter, merge_adapter, publish_adapter, run_job, verify_manifest,
)
from cynode.engines.training.output import versions
from cynode.engines.training.output.manifest import sha256_file, write_manifest
from cynode.errors import TrainingError
from training_testkit import job, secret_rows, write_jsonl


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    """One short job's output folder and its spec."""
    root = tmp_path_factory.mktemp("trained")
    data = write_jsonl(root / "secret.jsonl", secret_rows())
    spec = JobSpec.from_dict(job(tiny_model_dir, data, root / "out", job_id="job-out",
                                 hyperparameters={"max_steps": 3}, base_model_id="tiny-llama"))
    events: list = []
    terminal = run_job(spec, events.append)
    assert terminal.type == "finished", terminal
    return spec, terminal


def test_the_adapter_folder_holds_the_peft_files_and_a_manifest_of_their_hashes(trained):
    spec, finished = trained
    folder = Path(finished.adapter_dir)
    assert sorted(p.name for p in folder.iterdir()) == ["adapter_config.json", "adapter_model.safetensors",
                                                        "manifest.json"]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest == finished.manifest
    assert set(manifest["files"]) == {"adapter_config.json", "adapter_model.safetensors"}
    for name, entry in manifest["files"].items():
        assert entry["sha256"] == sha256_file(folder / name) and entry["bytes"] == (folder / name).stat().st_size
    assert manifest["job_id"] == "job-out" and manifest["base_model"]["id"] == "tiny-llama"
    assert manifest["base_model"]["version"].startswith("sha256:") and manifest["created"]
    assert manifest["training"]["steps"] == 3 and manifest["training"]["tokens"] == finished.tokens > 0
    assert manifest["lora"]["r"] == 16 and manifest["lora"]["target_modules"]
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "tiny-llama" and config["r"] == 16 and not config["use_dora"]
    assert not list(folder.parent.glob(".adapter.tmp-*"))  # the temporary folder was renamed into place


def test_peft_loads_the_adapter_and_it_changes_the_model(trained, tiny_model_dir):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        before = base(input_ids=ids).logits
        tuned = PeftModel.from_pretrained(base, trained[1].adapter_dir)
        after = tuned(input_ids=ids).logits
    assert (after - before).abs().max() > 1e-3


def test_a_changed_file_fails_verification(trained, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(trained[1].adapter_dir, copy)
    verify_manifest(copy)
    (copy / "adapter_config.json").write_text((copy / "adapter_config.json").read_text().replace('"r": 16', '"r": 8'))
    with pytest.raises(TrainingError, match="adapter_config.json does not match its sha256"):
        verify_manifest(copy)
    shutil.copy2(Path(trained[1].adapter_dir) / "adapter_config.json", copy / "adapter_config.json")
    (copy / "adapter_model.safetensors").unlink()
    with pytest.raises(TrainingError, match="adapter_model.safetensors is listed in the manifest but missing"):
        verify_manifest(copy)


@pytest.mark.parametrize("change, for_vllm, words", [
    ({"use_dora": True}, True, "DoRA"),
    ({"r": 32}, True, "rank 32 is above the serving max_lora_rank 16"),
    ({"rank_pattern": {"q_proj": 64}}, False, "rank 64"),
    ({"modules_to_save": ["lm_head"]}, True, "modules_to_save"),
    ({"target_modules": ["q_proj", "lm_head"]}, True, "lm_head"),
    ({"bias": "all"}, True, "bias"),
    ({"init_lora_weights": "pissa"}, True, "init_lora_weights"),
])
def test_the_serving_rules_refuse_what_vllm_cannot_load(trained, tmp_path, change, for_vllm, words):
    copy = tmp_path / "a"
    shutil.copytree(trained[1].adapter_dir, copy)
    assert adapter_problems(copy) == []
    config = json.loads((copy / "adapter_config.json").read_text())
    (copy / "adapter_config.json").write_text(json.dumps({**config, **change}))
    problems = adapter_problems(copy, for_vllm=for_vllm)
    assert len(problems) == 1 and words in problems[0]
    with pytest.raises(TrainingError) as info:
        check_adapter(copy, for_vllm=for_vllm)
    assert info.value.code == "adapter_not_servable"


def test_dora_is_fine_for_the_transformers_engine_only(trained, tmp_path):
    copy = tmp_path / "a"
    shutil.copytree(trained[1].adapter_dir, copy)
    config = json.loads((copy / "adapter_config.json").read_text())
    (copy / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    assert adapter_problems(copy, for_vllm=False) == []
    assert adapter_problems(copy, for_vllm=True)


def test_publishing_adds_one_version_per_adapter_and_none_for_a_repeat(trained, tmp_path):
    store = tmp_path / "store"
    first = publish_adapter(trained[1].adapter_dir, store, "tiny-llama:ft-secret")
    assert first.version == 1 and verify_manifest(first.path)["job_id"] == "job-out"
    again = publish_adapter(trained[1].adapter_dir, store, "tiny-llama:ft-secret")
    assert again.version == 1  # the same job published twice (a crash between publish and report)
    other = tmp_path / "other"
    shutil.copytree(trained[1].adapter_dir, other)
    manifest = json.loads((other / "manifest.json").read_text())
    (other / "manifest.json").unlink()
    write_manifest(other, {k: v for k, v in manifest.items() if k not in ("files", "created", "schema")}
                   | {"job_id": "job-two"})
    assert publish_adapter(other, store, "tiny-llama:ft-secret").version == 2
    assert versions(store, "tiny-llama:ft-secret") == [1, 2]


def test_an_unservable_or_altered_adapter_is_not_published(trained, tmp_path):
    copy = tmp_path / "a"
    shutil.copytree(trained[1].adapter_dir, copy)
    (copy / "adapter_model.safetensors").write_bytes(b"garbage")
    with pytest.raises(TrainingError, match="sha256"):
        publish_adapter(copy, tmp_path / "store", "x")
    assert versions(tmp_path / "store", "x") == []
    with pytest.raises(TrainingError, match="adapter id"):
        publish_adapter(trained[1].adapter_dir, tmp_path / "store", "../escape")


def test_merge_folds_the_adapter_into_a_full_model(trained, tiny_model_dir, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    merged_dir = merge_adapter(tiny_model_dir, trained[1].adapter_dir, tmp_path / "merged",
                               manifest_fields={"job_id": "job-out"})
    assert (merged_dir / "config.json").is_file() and (merged_dir / "tokenizer_config.json").is_file()
    assert verify_manifest(merged_dir)["job_id"] == "job-out"
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    with torch.no_grad():
        merged = AutoModelForCausalLM.from_pretrained(str(merged_dir), dtype=torch.float32)(input_ids=ids).logits
        base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
        adapted = PeftModel.from_pretrained(base, trained[1].adapter_dir)(input_ids=ids).logits
    torch.testing.assert_close(merged, adapted, rtol=1e-4, atol=1e-4)


def test_a_finished_job_run_again_reports_its_adapter_without_training(trained):
    spec, finished = trained
    events: list = []
    again = run_job(spec, events.append)
    assert [e.type for e in events] == ["finished"]
    assert again.manifest == finished.manifest and again.adapter_dir == finished.adapter_dir


def test_a_job_with_merge_writes_the_merged_model_too(tiny_model_dir, secret_file, tmp_path):
    spec = JobSpec.from_dict(job(tiny_model_dir, secret_file, tmp_path / "o", merge=True,
                                 hyperparameters={"max_steps": 1}))
    finished = run_job(spec, lambda e: None)
    assert finished.type == "finished" and finished.merged_dir == str(tmp_path / "o" / "merged")
    manifest = verify_manifest(finished.merged_dir)
    assert manifest["kind"] == "merged" and manifest["job_id"] == "test-job"
    assert "model.safetensors" in manifest["files"]
