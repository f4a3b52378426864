"""The engine's attention (attention.py): grouped K/V heads attended without copies, same numbers.

A tiny random-weight Llama with 4 query heads on 2 K/V heads, forwarded the way the batcher does
(ragged rows behind a boolean mask, and a packed prefill behind a block-diagonal one) under
transformers' "sdpa" and under the engine's implementation. The real model's use of it is checked
in test_transformers_engine.py.
"""

from __future__ import annotations

import pytest
import torch
import transformers.integrations.sdpa_attention as hf_sdpa
from transformers import LlamaConfig, LlamaForCausalLM

from cynode.engines.attention import NAME, use_grouped_attention


def tiny(attention: str, kv_heads: int = 2) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=512,
                         initializer_range=0.5, attn_implementation=attention)
    return LlamaForCausalLM(config).eval()


def ragged_inputs(rows: int = 3, width: int = 12):
    """Left-padded rows of lengths width, width - 4, ...: ids, a [rows, 1, width, width] causal mask, positions."""
    torch.manual_seed(1)
    ids = torch.randint(1, 97, (rows, width))
    lengths = torch.tensor([width - 4 * r for r in range(rows)])
    columns = torch.arange(width)
    visible = columns[None, :] >= (width - lengths)[:, None]  # [rows, width]: a row's own tokens
    causal = columns[:, None] >= columns[None, :]
    mask = (visible[:, None, :] & causal[None]) | torch.eye(width, dtype=torch.bool)[None]
    positions = (columns[None, :] - (width - lengths)[:, None]).clamp(min=0)
    return ids, mask[:, None], positions


def test_a_masked_forward_gives_the_logits_of_transformers_sdpa_without_copying_the_kv_heads(monkeypatch):
    reference, grouped = tiny("sdpa"), tiny(NAME)
    ids, mask, positions = ragged_inputs()
    with torch.inference_mode():
        expected = reference(input_ids=ids, attention_mask=mask, position_ids=positions).logits

        def no_copies(*args, **kwargs):
            raise AssertionError("the K/V heads were repeated")

        monkeypatch.setattr(hf_sdpa, "repeat_kv", no_copies)
        got = grouped(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(got.argmax(-1), expected.argmax(-1))


def test_an_unmasked_causal_forward_and_a_model_without_grouped_heads_go_to_transformers_sdpa():
    ids, _, _ = ragged_inputs()
    with torch.inference_mode():
        for kv_heads in (2, 4):
            expected = tiny("sdpa", kv_heads)(input_ids=ids).logits
            got = tiny(NAME, kv_heads)(input_ids=ids).logits
            assert torch.equal(got, expected), kv_heads


def test_use_grouped_attention_switches_an_sdpa_model_and_leaves_any_other_alone():
    model = tiny("sdpa")
    assert use_grouped_attention(model) is True
    assert model.config._attn_implementation == NAME
    eager = tiny("eager")
    assert use_grouped_attention(eager) is False
    assert eager.config._attn_implementation == "eager"


@pytest.mark.parametrize("lengths", [(5, 9, 3)])
def test_a_packed_prefill_behind_a_block_diagonal_mask_matches_transformers_sdpa(lengths):
    torch.manual_seed(2)
    ids = torch.randint(1, 97, (1, sum(lengths)))
    positions = torch.cat([torch.arange(n) for n in lengths])
    segment = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    mask = (segment[:, None] == segment[None, :]) & (positions[:, None] >= positions[None, :])
    with torch.inference_mode():
        expected = tiny("sdpa")(input_ids=ids, attention_mask=mask[None, None], position_ids=positions[None]).logits
        got = tiny(NAME)(input_ids=ids, attention_mask=mask[None, None], position_ids=positions[None]).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
