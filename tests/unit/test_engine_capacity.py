"""Capacity from the engine: the KV arithmetic, the FIFO gate whose limit follows the engine, and the
MemoryManager admitting what the engine says (under the optional ceiling)."""

from __future__ import annotations

import asyncio

import pytest
from transformers import LlamaConfig

from cynode.engines.admission import DEFAULT_CONCURRENCY, AdmissionGate
from cynode.engines.kv_memory import MAX_BATCH, batch_capacity, kv_bytes_per_token
from cynode.engines.memory_manager import MemoryManager
from cynode.engines.registry import ModelRegistry, sim_spec
from cynode.engines.sim_engine import SimEngine


def test_kv_bytes_per_token_counts_keys_and_values_of_every_layer_and_kv_head():
    # SmolLM2-135M: 30 layers, 3 KV heads of 64 dims; float32
    config = LlamaConfig(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3)
    assert kv_bytes_per_token(config, 4) == 2 * 30 * 3 * 64 * 4


def test_capacity_is_what_fits_at_full_context_under_the_ceiling_and_at_least_one():
    per_token, context = 46080, 8192
    assert batch_capacity(20 * 2**30, per_token, context) == 20 * 2**30 // (per_token * context)
    assert batch_capacity(20 * 2**30, per_token, context, ceiling=4) == 4
    assert batch_capacity(1, per_token, context) == 1
    assert batch_capacity(2**50, per_token, context) == MAX_BATCH


async def test_the_gate_admits_in_order_and_raising_the_limit_lets_waiters_in_at_once():
    gate = AdmissionGate(1)
    order = []

    async def user(name):
        await gate.acquire()
        order.append(name)

    await gate.acquire()
    tasks = [asyncio.create_task(user(i)) for i in range(4)]
    await asyncio.sleep(0)
    assert gate.waiting == 4 and order == []
    gate.set_limit(3)  # two more places: the first two waiters, in order
    await asyncio.sleep(0)
    assert order == [0, 1]
    gate.release()
    await asyncio.sleep(0)
    assert order == [0, 1, 2]
    tasks[3].cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert gate.waiting == 0 and gate.inside == 3


@pytest.mark.parametrize("engine_capacity, ceiling, expected", [(40, None, 40), (40, 6, 6), (3, 6, 3)])
async def test_the_manager_admits_the_engines_capacity_under_the_ceiling(engine_capacity, ceiling, expected):
    manager = MemoryManager(ModelRegistry([sim_spec()], builtin=False), budget_bytes=1 << 30,
                            factory=lambda spec: SimEngine(spec.id, max_concurrency=engine_capacity, ttft=0.0),
                            per_model_concurrency=ceiling)
    assert manager.capacity() == (ceiling or DEFAULT_CONCURRENCY)  # provisional until loaded
    await manager.load("sim")
    assert manager.capacity() == expected
    await manager.close()
