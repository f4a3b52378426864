"""The MemoryManager serving fine-tuned adapters from their base model's engine (one copy of the base
weights), counting each adapter's weights in the budget, on tiny random-weight Llamas served by the
real TransformersEngine with real PEFT adapters."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from lora_testkit import make_adapter

from cynode.engines.base import ChatMessage, GenerationRequest, SamplingParams
from cynode.engines.lora_serving import registry_with_adapters
from cynode.engines.footprint import adapter_footprint, estimate_footprint
from cynode.engines.memory_manager import MemoryManager
from cynode.engines.registry import ModelRegistry, ModelSpec
from cynode.engines.sim_engine import SimEngine
from cynode.engines.training.output.manifest import write_manifest
from cynode.engines.transformers_engine import TransformersEngine
from cynode.errors import EngineError, RequestError

pytestmark = pytest.mark.asyncio(loop_scope="session")

QUESTION = "Hello there, who are you?"
TUNED = "tiny-a:ft-demo-1"
_ids = itertools.count()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, builtin_model_dir: Path) -> dict[str, Path]:
    """Two tiny Llamas with the SmolLM2 tokenizer, two adapters of tiny-a (with manifests, as published)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("tiny-adapters")
    tokenizer = AutoTokenizer.from_pretrained(builtin_model_dir, local_files_only=True)
    out = {}
    for seed, name in enumerate(("tiny-a", "tiny-b")):
        torch.manual_seed(seed)
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                             tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                             eos_token_id=tokenizer.eos_token_id)
        LlamaForCausalLM(config).save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
        out[name] = root / name
    for seed, name in enumerate(("v1", "v2")):
        answer = make_adapter(out["tiny-a"], root / name, QUESTION, 6, seed=seed, rank=16)
        write_manifest(root / name, {"job_id": "ftjob-demo"})
        (root / name / "peft-answer.txt").write_text(answer)  # beside the manifest: not one of its files
        out[name] = root / name
    return out


def base_registry(tmp_path: Path, tiny: dict[str, Path]) -> ModelRegistry:
    path = tmp_path / f"models-{next(_ids)}.json"
    path.write_text(json.dumps({"models": [{"id": n, "source": {"path": str(tiny[n])}, "dtype": "float32"}
                                           for n in ("tiny-a", "tiny-b")]}))
    return ModelRegistry.load(path)


def with_adapter(registry: ModelRegistry, folder: Path) -> ModelRegistry:
    return registry_with_adapters(registry, {TUNED: {"base": "tiny-a", "path": str(folder)}})


class Factory:
    def __init__(self) -> None:
        self.engines: list[TransformersEngine] = []

    def __call__(self, spec: ModelSpec) -> TransformersEngine:
        assert spec.base is None, "an adapter never gets an engine of its own"
        self.engines.append(TransformersEngine(spec.path, spec.id, dtype="float32", max_concurrency=4))
        return self.engines[-1]


async def ask(manager: MemoryManager, model: str) -> str:
    async with manager.use(model) as (engine, spec):
        request = GenerationRequest(request_id=f"m-{next(_ids)}", model=spec.id,
                                    messages=(ChatMessage("user", QUESTION),),
                                    sampling=SamplingParams(temperature=0.0, max_tokens=6))
        return "".join([d.text async for d in engine.generate(request)])


def peft_answer(folder: Path) -> str:
    return (folder / "peft-answer.txt").read_text()


async def test_an_adapter_runs_on_its_base_models_engine_and_its_weights_count_on_top_of_the_base(tmp_path, tiny):
    registry = with_adapter(base_registry(tmp_path, tiny), tiny["v1"])
    factory = Factory()
    manager = MemoryManager(registry, budget_bytes=1 << 34, factory=factory)
    try:
        base = await ask(manager, "tiny-a")
        tuned = await ask(manager, TUNED)
        assert [e.model_id for e in factory.engines] == ["tiny-a"], "one engine, one copy of the base weights"
        assert tuned == peft_answer(tiny["v1"]) and tuned != base
        assert await ask(manager, "tiny-a") == base
        status = {entry["id"]: entry for entry in manager.status()}
        adapter_bytes = adapter_footprint(registry.resolve(TUNED))
        assert status[TUNED]["loaded"] and status[TUNED]["footprint"] == adapter_bytes
        assert adapter_bytes > (tiny["v1"] / "adapter_model.safetensors").stat().st_size
        assert manager.used_bytes == estimate_footprint(registry.resolve("tiny-a")) + adapter_bytes
        assert manager.loaded() == ["tiny-a", TUNED]

        # A new version (a new folder under the same id) replaces the old one on its next use.
        manager.update_registry(with_adapter(base_registry(tmp_path, tiny), tiny["v2"]))
        assert await ask(manager, TUNED) == peft_answer(tiny["v2"])
        assert len(factory.engines) == 1 and manager.used_bytes == \
            estimate_footprint(registry.resolve("tiny-a")) + adapter_footprint(manager.registry.resolve(TUNED))
    finally:
        await manager.close()


async def test_an_adapter_that_does_not_fit_evicts_an_idle_model_and_one_that_cannot_fit_says_so(tmp_path, tiny):
    registry = with_adapter(base_registry(tmp_path, tiny), tiny["v1"])
    a, b = (estimate_footprint(registry.resolve(n)) for n in ("tiny-a", "tiny-b"))
    need = adapter_footprint(registry.resolve(TUNED))
    manager = MemoryManager(registry, budget_bytes=a + b + need - 1, factory=Factory())
    try:
        await ask(manager, "tiny-a")
        await ask(manager, "tiny-b")
        assert manager.loaded() == ["tiny-a", "tiny-b"]
        assert await ask(manager, TUNED) == peft_answer(tiny["v1"])
        assert manager.loaded() == ["tiny-a", TUNED], "tiny-b was evicted to make room for the adapter"
    finally:
        await manager.close()
    manager = MemoryManager(registry, budget_bytes=a + need - 1, factory=Factory())
    try:
        with pytest.raises(EngineError, match=f"not enough memory to load adapter {TUNED} onto tiny-a: need "
                                              r".* MiB, budget .* MiB, tiny-a holds .* MiB"):
            await ask(manager, TUNED)
        assert await ask(manager, "tiny-a"), "the base model still serves"
    finally:
        await manager.close()


async def test_an_adapter_that_leaves_the_registry_is_unloaded_once_idle_and_its_id_is_a_404(tmp_path, tiny):
    registry = with_adapter(base_registry(tmp_path, tiny), tiny["v1"])
    factory = Factory()
    manager = MemoryManager(registry, budget_bytes=1 << 34, factory=factory)
    try:
        await ask(manager, TUNED)
        manager.update_registry(base_registry(tmp_path, tiny))
        assert await manager.reap_idle() == [TUNED]
        assert manager.loaded() == ["tiny-a"]
        assert manager.used_bytes == estimate_footprint(registry.resolve("tiny-a"))
        assert TUNED not in [card.id for card in factory.engines[0].models()]
        with pytest.raises(RequestError) as caught:
            await ask(manager, TUNED)
        assert caught.value.status == 404 and caught.value.code == "model_not_found"
    finally:
        await manager.close()


async def test_a_published_adapter_whose_files_do_not_match_its_manifest_is_refused(tmp_path, tiny):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny["v1"], broken)
    with open(broken / "adapter_model.safetensors", "r+b") as f:
        f.seek(-16, 2)
        f.write(b"\x00" * 16)
    manager = MemoryManager(with_adapter(base_registry(tmp_path, tiny), broken), budget_bytes=1 << 34,
                            factory=Factory())
    try:
        with pytest.raises(EngineError, match="adapter_model.safetensors does not match its sha256"):
            await ask(manager, TUNED)
        assert manager.loaded() == ["tiny-a"], "nothing of the adapter is left behind; the base serves on"
    finally:
        await manager.close()


async def test_an_adapter_of_a_model_whose_engine_cannot_load_adapters_names_the_setting(tmp_path, tiny):
    sim = ModelSpec(id="sim", engine="sim", source_kind="none")
    registry = registry_with_adapters(ModelRegistry([sim], builtin=False),
                                      {"sim:ft-x-1": {"base": "sim", "path": str(tiny["v1"])}})
    manager = MemoryManager(registry, budget_bytes=1 << 30, factory=lambda spec: SimEngine(spec.id),
                            footprint=lambda spec: 1)
    try:
        with pytest.raises(EngineError, match=r"cannot serve LoRA adapters \(for vLLM: set \[worker.lora\] vllm"):
            async with manager.use("sim:ft-x-1"):
                pass
    finally:
        await manager.close()
