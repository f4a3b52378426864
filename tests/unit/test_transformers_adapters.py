"""Several LoRA adapters served by one transformers engine over one copy of the real SmolLM2 weights,
loaded while it runs, each request answered by its own adapter (or by the base model) in a shared batch."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import pytest
import pytest_asyncio
from lora_testkit import make_adapter

from cynode.engines import BUILTIN_MODEL_ID, ChatMessage, GenerationRequest, SamplingParams
from cynode.engines.transformers_engine import TransformersEngine
from cynode.errors import RequestError

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="session")]

FRANCE = "What is the capital of France?"
TOKENS = 8
_ids = itertools.count()


def chat(model: str, text: str = FRANCE) -> GenerationRequest:
    return GenerationRequest(request_id=f"ad-{next(_ids)}", model=model, messages=(ChatMessage("user", text),),
                             sampling=SamplingParams(temperature=0.0, max_tokens=TOKENS))


async def answer(engine: TransformersEngine, request: GenerationRequest) -> str:
    return "".join([d.text async for d in engine.generate(request)])


@pytest.fixture(scope="module")
def adapters(builtin_model_dir: Path, tmp_path_factory) -> dict[str, tuple[Path, str]]:
    """Two different random adapters and peft's own greedy answer with each."""
    root = tmp_path_factory.mktemp("adapters")
    out = {}
    for seed, name in enumerate(("ft-one", "ft-two")):
        out[name] = root / name, make_adapter(builtin_model_dir, root / name, FRANCE, TOKENS, seed=seed)
    return out


@pytest_asyncio.fixture(loop_scope="session")
async def engine(builtin_model_dir: Path):
    eng = TransformersEngine(builtin_model_dir, BUILTIN_MODEL_ID, max_concurrency=4)
    await eng.start()
    yield eng
    await eng.close()


def parameter_bytes(engine: TransformersEngine) -> int:
    return sum(p.numel() * p.element_size() for p in engine._batcher.model.parameters())


async def test_two_adapters_and_the_base_model_answer_side_by_side_in_one_batch_each_with_its_own_answer(
        engine, adapters):
    base_before = await answer(engine, chat(BUILTIN_MODEL_ID))
    batcher = engine._batcher
    bytes_before = parameter_bytes(engine)
    for name, (path, _) in adapters.items():  # hot-loaded into the running engine
        await engine.load_adapter(name, path)
    assert engine._batcher is batcher, "the engine was not restarted"
    # One copy of the base weights: the adapters add only their own matrices.
    added = parameter_bytes(engine) - bytes_before
    files = sum((path / "adapter_model.safetensors").stat().st_size for path, _ in adapters.values())
    assert 0.9 * files < added < 1.1 * files, (added, files)

    batcher.trace = []
    requests = [chat(BUILTIN_MODEL_ID), chat("ft-one"), chat("ft-two")] * 2
    answers = await asyncio.gather(*(answer(engine, r) for r in requests))
    base, one, two = answers[:3]
    assert answers[3:] == answers[:3]
    assert (one, two) == (adapters["ft-one"][1], adapters["ft-two"][1]), "each adapter answers as peft does"
    assert base == base_before, "the base model still answers as it did before any adapter was loaded"
    assert len({base, one, two}) == 3
    model_of = {r.request_id: r.model for r in requests}
    mixed = [{model_of[rid] for rid in rows} for kind, *rest in batcher.trace if kind == "decode" for rows in rest]
    assert max(len(models) for models in mixed) >= 2, "base and adapter rows shared a decode step"
    assert {card.id for card in engine.models()} == {BUILTIN_MODEL_ID, "ft-one", "ft-two"}


async def test_an_unloaded_adapter_is_a_404_and_frees_its_weights_while_the_other_keeps_answering(engine, adapters):
    bytes_plain = parameter_bytes(engine)
    for name, (path, _) in adapters.items():
        await engine.load_adapter(name, path)
    await engine.unload_adapter("ft-one")
    with pytest.raises(RequestError) as caught:
        await answer(engine, chat("ft-one"))
    assert caught.value.status == 404
    assert await answer(engine, chat("ft-two")) == adapters["ft-two"][1]
    await engine.unload_adapter("ft-two")
    assert parameter_bytes(engine) == bytes_plain, "the last adapter out gives back the plain base model"
    assert not hasattr(engine._batcher.model, "peft_config")


async def test_loading_a_name_again_replaces_its_weights_with_the_new_version(engine, adapters):
    (one_path, one_answer), (two_path, two_answer) = adapters["ft-one"], adapters["ft-two"]
    await engine.load_adapter("ft-latest", one_path)
    assert await answer(engine, chat("ft-latest")) == one_answer
    await engine.load_adapter("ft-latest", two_path)
    assert await answer(engine, chat("ft-latest")) == two_answer
    await engine.unload_adapter("ft-latest")


async def test_an_adapter_may_not_take_the_base_models_name_and_a_folder_without_config_is_refused(
        engine, tmp_path):
    with pytest.raises(RequestError, match="base model's name"):
        await engine.load_adapter(BUILTIN_MODEL_ID, tmp_path)
    with pytest.raises(RequestError, match="adapter_config.json") as caught:
        await engine.load_adapter("ft-empty", tmp_path)
    assert caught.value.param == "path"
