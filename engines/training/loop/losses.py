"""Losses: token-level cross-entropy for supervised LoRA, and DPO's sigmoid loss.

Labels are shifted by padding them on the right rather than slicing the logits, which would copy
the largest tensor of the step (what transformers' own loss does too).
"""

from __future__ import annotations

from typing import Any

from ..data.sample import IGNORE_INDEX


def _shifted(labels: Any) -> Any:
    import torch.nn.functional as F

    return F.pad(labels, (0, 1), value=IGNORE_INDEX)[:, 1:]


def sft_loss_sum(logits: Any, labels: Any) -> Any:
    """Sum of next-token cross-entropy over the trained tokens (divide by their count)."""
    import torch.nn.functional as F

    vocab = logits.shape[-1]
    return F.cross_entropy(logits.float().reshape(-1, vocab), _shifted(labels).reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction="sum")


def count_loss_tokens(labels: Any) -> int:
    return int((_shifted(labels) != IGNORE_INDEX).sum())


def sequence_logps(logits: Any, labels: Any) -> Any:
    """Summed log-probability of each row's trained tokens: shape (rows,)."""
    import torch.nn.functional as F

    rows, length, vocab = logits.shape
    token_nll = F.cross_entropy(logits.float().reshape(-1, vocab), _shifted(labels).reshape(-1),
                                ignore_index=IGNORE_INDEX, reduction="none")
    return -token_nll.view(rows, length).sum(-1)


def dpo_terms(policy_logps: Any, reference_logps: Any, beta: float) -> dict[str, Any]:
    """DPO (sigmoid) per pair from (2n,) log-probs laid out chosen-first: loss and rewards."""
    import torch.nn.functional as F

    n = policy_logps.shape[0] // 2
    chosen_reward = beta * (policy_logps[:n] - reference_logps[:n])
    rejected_reward = beta * (policy_logps[n:] - reference_logps[n:])
    margin = chosen_reward - rejected_reward
    return {
        "losses": -F.logsigmoid(margin),
        "chosen_rewards": chosen_reward.detach(),
        "rejected_rewards": rejected_reward.detach(),
        "margins": margin.detach(),
    }
