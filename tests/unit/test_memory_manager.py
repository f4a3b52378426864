"""The MemoryManager on two tiny random-weight Llamas served by the real TransformersEngine.

Each model is a 2-layer, 64-wide Llama with the SmolLM2 tokenizer (tied embeddings, about 13 MB), so a
load takes a fraction of a second. The budget is set from the real footprint estimate to hold one
model and a half: loading the second one has to evict the first.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from pathlib import Path

import pytest
import pytest_asyncio

from cynode.engines.base import GenerationRequest, SamplingParams
from cynode.engines.footprint import estimate_footprint
from cynode.engines.memory_manager import MemoryManager
from cynode.engines.registry import ModelRegistry, ModelSpec
from cynode.engines.transformers_engine import TransformersEngine
from cynode.errors import EngineError, RequestError

pytestmark = pytest.mark.asyncio(loop_scope="session")

_ids = itertools.count()


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory, builtin_model_dir: Path) -> dict[str, Path]:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("tiny-models")
    tokenizer = AutoTokenizer.from_pretrained(builtin_model_dir, local_files_only=True)
    folders = {}
    for seed, name in enumerate(("tiny-a", "tiny-b")):
        torch.manual_seed(seed)
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                             tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                             eos_token_id=tokenizer.eos_token_id)
        folder = root / name
        LlamaForCausalLM(config).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        folders[name] = folder
    folders["tiny-c"] = folders["tiny-a"]  # a third registry entry, for eviction order; same weights
    return folders


def registry_of(tmp_path: Path, folders: dict[str, Path], names=("tiny-a", "tiny-b")) -> ModelRegistry:
    path = tmp_path / f"models-{next(_ids)}.json"
    path.write_text(json.dumps({"models": [
        {"id": name, "aliases": [name[-1]], "source": {"path": str(folders[name])}, "dtype": "float32"}
        for name in names]}))
    return ModelRegistry.load(path)


class CountingFactory:
    """Builds real TransformersEngines and counts the calls; can be told to fail the next ones."""

    def __init__(self, fail: int = 0, delay: float = 0.0) -> None:
        self.calls: list[str] = []
        self.fail = fail
        self.delay = delay

    def __call__(self, spec: ModelSpec) -> TransformersEngine:
        self.calls.append(spec.id)
        if self.delay:
            import time

            time.sleep(self.delay)  # runs in a worker thread: makes concurrent first users overlap the load
        if self.fail:
            self.fail -= 1
            raise EngineError(f"model {spec.id}: the disk went away")
        return TransformersEngine(spec.path, spec.id, aliases=spec.aliases, dtype=spec.dtype, max_concurrency=4)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest_asyncio.fixture(loop_scope="session")
async def make_manager(tmp_path, tiny_models):
    made: list[MemoryManager] = []

    def make(*, models_that_fit: float = 1.5, names=("tiny-a", "tiny-b"), **kwargs) -> MemoryManager:
        registry = registry_of(tmp_path, tiny_models, names)
        one = estimate_footprint(registry.resolve(names[0]))
        kwargs.setdefault("factory", CountingFactory())
        manager = MemoryManager(registry, budget_bytes=int(one * models_that_fit), **kwargs)
        made.append(manager)
        return manager

    yield make
    for manager in made:
        await manager.close()


async def complete(engine, name: str, max_tokens: int = 3) -> str:
    request = GenerationRequest(request_id=f"r{next(_ids)}", model=name, prompt="Hello",
                                sampling=SamplingParams(temperature=0.0, max_tokens=max_tokens))
    deltas = [d async for d in engine.generate(request)]
    assert deltas[-1].finish_reason in ("stop", "length")
    return "".join(d.text for d in deltas)


def status_of(manager: MemoryManager, model_id: str) -> dict:
    return next(s for s in manager.status() if s["id"] == model_id)


async def test_the_footprint_estimate_counts_the_weights_as_float32_plus_a_fixed_overhead(tiny_models, tmp_path):
    from cynode.engines.footprint import FIXED_OVERHEAD

    spec = registry_of(tmp_path, tiny_models).resolve("tiny-a")
    weights = (tiny_models["tiny-a"] / "model.safetensors").stat().st_size
    assert estimate_footprint(spec) == weights + FIXED_OVERHEAD  # saved as float32, loaded as float32


async def test_a_model_loads_on_first_use_and_answers(make_manager):
    manager = make_manager()
    assert manager.loaded() == []
    async with manager.use("a") as (engine, spec):  # an alias
        assert spec.id == "tiny-a"
        assert await complete(engine, "tiny-a")
    assert manager.loaded() == ["tiny-a"]
    assert status_of(manager, "tiny-a")["in_use"] == 0 and status_of(manager, "tiny-a")["footprint"] > 0


async def test_an_unknown_model_is_a_404_naming_the_model_param(make_manager):
    manager = make_manager()
    with pytest.raises(RequestError) as info:
        async with manager.use("gpt-5"):
            pass
    assert (info.value.status, info.value.code, info.value.param) == (404, "model_not_found", "model")


async def test_loading_a_second_model_evicts_the_idle_first_one_when_both_do_not_fit(make_manager):
    manager = make_manager()
    async with manager.use("tiny-a") as (engine, _):
        await complete(engine, "tiny-a")
    async with manager.use("tiny-b") as (engine, _):
        await complete(engine, "tiny-b")
    assert manager.loaded() == ["tiny-b"]
    assert manager.used_bytes <= manager.budget_bytes


async def test_the_least_recently_used_idle_model_is_the_one_evicted(make_manager):
    clock = FakeClock()
    manager = make_manager(models_that_fit=2.5, names=("tiny-a", "tiny-b", "tiny-c"), clock=clock)
    for name in ("tiny-a", "tiny-b"):
        clock.now += 1
        await manager.load(name)
    clock.now += 1
    async with manager.use("tiny-a"):  # a is now the more recently used
        pass
    clock.now += 1
    await manager.load("tiny-c")
    assert manager.loaded() == ["tiny-a", "tiny-c"]


async def test_a_model_in_use_is_never_evicted_and_the_other_load_fails_with_a_clear_retryable_error(make_manager):
    manager = make_manager()
    async with manager.use("tiny-a") as (engine_a, _):
        with pytest.raises(EngineError) as info:
            async with manager.use("tiny-b"):
                pass
        assert "not enough memory to load model tiny-b" in info.value.message
        assert "in use by busy models: tiny-a" in info.value.message and "1 request(s)" in info.value.message
        assert info.value.retryable
        assert manager.loaded() == ["tiny-a"]
        assert await complete(engine_a, "tiny-a")  # still serving
    async with manager.use("tiny-b") as (engine_b, _):
        assert await complete(engine_b, "tiny-b")
    assert manager.loaded() == ["tiny-b"]


async def test_twenty_simultaneous_first_requests_cause_exactly_one_load(make_manager):
    factory = CountingFactory(delay=0.2)
    manager = make_manager(factory=factory, per_model_concurrency=20)
    engines = []

    async def one():
        async with manager.use("tiny-a") as (engine, _):
            engines.append(engine)
            await complete(engine, "tiny-a", max_tokens=1)

    await asyncio.gather(*(one() for _ in range(20)))
    assert factory.calls == ["tiny-a"]
    assert len(engines) == 20 and len({id(e) for e in engines}) == 1


async def test_a_failed_load_reaches_every_waiting_user_and_the_next_request_loads_the_model(make_manager):
    factory = CountingFactory(fail=1, delay=0.1)
    manager = make_manager(factory=factory)

    async def one():
        async with manager.use("tiny-a"):
            pass

    results = await asyncio.gather(*(one() for _ in range(3)), return_exceptions=True)
    assert all(isinstance(r, EngineError) and "the disk went away" in r.message for r in results)
    assert factory.calls == ["tiny-a"]
    assert manager.loaded() == [] and manager.used_bytes == 0
    async with manager.use("tiny-a") as (engine, _):
        assert await complete(engine, "tiny-a")
    assert factory.calls == ["tiny-a", "tiny-a"]


async def test_users_beyond_the_per_model_limit_queue_and_enter_first_in_first_out(make_manager):
    manager = make_manager(per_model_concurrency=2)
    await manager.load("tiny-a")
    release = [asyncio.Event() for _ in range(4)]
    entered: list[int] = []

    async def user(i: int):
        async with manager.use("tiny-a"):
            entered.append(i)
            await release[i].wait()

    tasks = []
    for i in range(4):
        tasks.append(asyncio.create_task(user(i)))
        await asyncio.sleep(0)  # a fixed arrival order
    for _ in range(5):
        await asyncio.sleep(0)
    assert entered == [0, 1]
    assert (status_of(manager, "tiny-a")["in_use"], status_of(manager, "tiny-a")["waiting"]) == (2, 2)
    release[1].set()
    await asyncio.wait_for(_until(lambda: len(entered) == 3), 10)
    assert entered == [0, 1, 2]
    for event in release:
        event.set()
    await asyncio.gather(*tasks)
    assert entered == [0, 1, 2, 3]


async def test_a_model_idle_longer_than_idle_unload_is_unloaded_by_the_reaper(make_manager):
    clock = FakeClock()
    manager = make_manager(idle_unload=60.0, clock=clock)
    async with manager.use("tiny-a"):
        clock.now += 600  # time spent in use does not count as idle
        assert await manager.reap_idle() == []
    clock.now += 30
    assert await manager.reap_idle() == []
    assert manager.loaded() == ["tiny-a"]
    clock.now += 31
    assert await manager.reap_idle() == ["tiny-a"]
    assert manager.loaded() == [] and manager.used_bytes == 0


async def test_update_registry_adds_a_model_without_disturbing_one_in_use(make_manager, tmp_path, tiny_models):
    factory = CountingFactory()
    manager = make_manager(models_that_fit=2.5, names=("tiny-a",), factory=factory)
    with pytest.raises(RequestError):
        async with manager.use("tiny-b"):
            pass
    async with manager.use("tiny-a") as (engine_a, _):
        request = GenerationRequest(request_id="long", model="tiny-a", prompt="Hello",
                                    sampling=SamplingParams(temperature=0.0, max_tokens=20))
        stream = engine_a.generate(request)
        first = await anext(stream)
        manager.update_registry(registry_of(tmp_path, tiny_models, ("tiny-a", "tiny-b")))
        async with manager.use("tiny-b") as (engine_b, _):
            assert await complete(engine_b, "tiny-b")
        rest = [d async for d in stream]
        assert first.text is not None and rest[-1].finish_reason in ("stop", "length")
        assert status_of(manager, "tiny-a")["in_use"] == 1
    async with manager.use("tiny-a") as (again, _):
        assert again is engine_a
    assert factory.calls == ["tiny-a", "tiny-b"]


async def test_a_model_removed_from_the_registry_is_unloaded_once_its_last_user_leaves(make_manager, tmp_path, tiny_models):
    manager = make_manager(models_that_fit=2.5)
    await manager.load("tiny-b")
    async with manager.use("tiny-a") as (engine, _):
        manager.update_registry(registry_of(tmp_path, tiny_models, ("tiny-b",)))
        assert await complete(engine, "tiny-a")  # the request in flight finishes
        with pytest.raises(RequestError):
            async with manager.use("tiny-a"):
                pass
        assert manager.loaded() == ["tiny-a", "tiny-b"]
    assert manager.loaded() == ["tiny-b"]


async def _until(condition) -> None:
    while not condition():
        await asyncio.sleep(0.01)


async def test_two_loaded_models_split_the_kv_memory_their_weights_leave_and_an_unload_gives_it_back(
        make_manager, tiny_models, tmp_path):
    def uncapped(spec: ModelSpec) -> TransformersEngine:  # no ceiling: capacity from the KV share alone
        return TransformersEngine(spec.path, spec.id, aliases=spec.aliases, dtype=spec.dtype)

    registry = registry_of(tmp_path, tiny_models)
    weights = estimate_footprint(registry.resolve("tiny-a"))  # tiny-b has the same shape
    per_sequence = 2 * 2 * 2 * 16 * 4 * 512  # tiny Llama: 2 layers x 2 KV heads x 16 dims, float32, 512 context
    budget = 2 * weights + 2 * 10 * per_sequence  # both sets of weights, and ten sequences for each model
    manager = MemoryManager(registry, budget_bytes=budget, factory=uncapped)
    try:
        async with manager.use("tiny-a") as (engine_a, _):
            assert status_of(manager, "tiny-a")["kv_budget"] == budget - weights  # alone: all that is left
            assert engine_a.capacity() == 256  # MAX_BATCH: far more than ten sequences fit
            async with manager.use("tiny-b") as (engine_b, _):
                shares = [status_of(manager, m)["kv_budget"] for m in ("tiny-a", "tiny-b")]
                assert shares == [10 * per_sequence] * 2  # split, not each counting on the same bytes
                assert manager.used_bytes + sum(shares) == budget
                assert engine_a.capacity() == engine_b.capacity() == 10 == manager.capacity()
                assert (engine_a._batcher.max_batch, engine_a._batcher.kv_tokens) == (10, 10 * 512)
                assert await complete(engine_a, "tiny-a") and await complete(engine_b, "tiny-b")
        await manager.unload("tiny-b")
        assert status_of(manager, "tiny-a")["kv_budget"] == budget - weights
        assert engine_a.capacity() == 256 and engine_a._batcher.max_batch == 256
    finally:
        await manager.close()


async def test_before_its_first_load_a_model_folder_is_announced_with_the_capacity_its_load_gives(
        tiny_models, tmp_path):
    registry = registry_of(tmp_path, tiny_models, ("tiny-a",))
    per_sequence = 2 * 2 * 2 * 16 * 4 * 512
    budget = estimate_footprint(registry.resolve("tiny-a")) + 7 * per_sequence + 100
    manager = MemoryManager(registry, budget_bytes=budget, factory=lambda spec: TransformersEngine(
        spec.path, spec.id, aliases=spec.aliases, dtype=spec.dtype))
    try:
        assert manager.loaded() == [] and manager.capacity() == 7  # from config.json: what gossip says now
        await manager.load("tiny-a")
        assert manager.capacity() == 7 and manager._slots["tiny-a"].engine.capacity() == 7
    finally:
        await manager.close()
