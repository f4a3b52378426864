"""The one sampling model: what a request asks of the sampler, and the one table of rules for it.

`SamplingParams` holds only what was asked for: a field left `None` was not given, so a model's
`default_sampling` (models.json) can fill it and the prompt cache key ignores it. Engines call
`resolved()` for concrete values. `guide` constrains what may be generated (structured output, a
forced tool call): engines compile it into a grammar (`cynode.engines.guided`). `RULES` is the single table of types, ranges and defaults that
the OpenAI request schema, the model registry and every engine check against; each of them words
the failure in its own place (`temperature must be between 0 and 2; got 3`,
`models[0].default_sampling.temperature: must be between 0 and 2, got 3`).

Importable without torch: the gateway and the coordinator use it too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

__all__ = ["GUIDE_KINDS", "MAX_LOGPROBS", "MAX_STOP", "RULES", "Guide", "Rule", "SamplingParams", "check_stop",
           "check_value"]

MAX_STOP = 4
MAX_LOGPROBS = 20  # alternatives per token, as OpenAI allows
_INT64 = (-(2**63), 2**63 - 1)
_INT32_MAX = 2**31 - 1  # top_k and max_tokens travel as int32 (common.proto): a bigger one is a 400, not a 500

# "json": the answer is one JSON value valid against `schema` (response_format json_object is the
# schema {"type": "object"}); "tool_call": the answer is one `<tool_call>` block whose JSON,
# {"name": ..., "arguments": {...}}, is valid against `schema` (tool_choice required or named).
GUIDE_KINDS = ("json", "tool_call")


@dataclass(frozen=True, slots=True)
class Guide:
    """A constraint on the generated text: `kind` (GUIDE_KINDS) and a JSON Schema as compact JSON
    text, in the client's key order (properties are generated in that order), so it compares, hashes
    and cache-keys as text."""

    kind: str
    schema: str


@dataclass(frozen=True, slots=True)
class Rule:
    kind: type  # float accepts ints too; int accepts only ints; never booleans
    low: float
    high: float
    default: Any
    low_open: bool = False
    cap: float = math.inf  # the most the wire carries, beyond an open-ended range

    def bounds(self) -> str:
        if self.high == math.inf:
            return f"greater than {self.low:g}" if self.low_open else f"at least {self.low:g}"
        if self.low_open:
            return f"greater than {self.low:g} and at most {self.high:g}"
        return f"between {self.low:g} and {self.high:g}"


RULES: dict[str, Rule] = {
    "temperature": Rule(float, 0.0, 2.0, 1.0),  # 0 = greedy
    "top_p": Rule(float, 0.0, 1.0, 1.0, low_open=True),
    "top_k": Rule(int, 0, math.inf, 0, cap=_INT32_MAX),  # 0 = no top-k cut
    "max_tokens": Rule(int, 1, math.inf, None, cap=_INT32_MAX),  # None = up to the context length
    "seed": Rule(int, _INT64[0], _INT64[1], None),
    "presence_penalty": Rule(float, -2.0, 2.0, 0.0),
    "frequency_penalty": Rule(float, -2.0, 2.0, 0.0),
    "repetition_penalty": Rule(float, 0.0, math.inf, 1.0, low_open=True),
}


def check_value(name: str, value: Any) -> tuple[str, str] | None:
    """None when `value` is acceptable for parameter `name`, else (code, "must be ...")."""
    rule = RULES[name]
    if isinstance(value, bool) or not isinstance(value, (int, float) if rule.kind is float else int):
        return "invalid_type", "must be a number" if rule.kind is float else "must be an integer"
    too_low = value <= rule.low if rule.low_open else value < rule.low
    # 1e400 parses as inf, which no sampler can use.
    if too_low or value > rule.high or not math.isfinite(value):
        return "invalid_value", f"must be {rule.bounds()}"
    if value > rule.cap:
        return "invalid_value", f"must be at most {rule.cap:.0f}"
    return None


def check_stop(value: Any) -> tuple[str, str, str, Any] | None:
    """None when `value` is a valid `stop` (a string or up to MAX_STOP non-empty strings), else
    (code, where, "must ...", what was wrong) with `where` naming the offending item (`stop[2]`)."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        return "invalid_type", "stop", "must be a string or an array of strings", value
    if len(items) > MAX_STOP:
        return "invalid_value", "stop", f"may hold at most {MAX_STOP} sequences", len(items)
    for i, item in enumerate(items):
        where = "stop" if isinstance(value, str) else f"stop[{i}]"
        if not isinstance(item, str):
            return "invalid_type", where, "must be a string", item
        if not item:
            return "invalid_value", where, "must not be an empty string", item
    return None


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """OpenAI sampling semantics; `None` means "not given" (see `resolved`)."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    # Not a sampling parameter, but asked for with them (as in vLLM): None = no log probabilities;
    # N = each generated token's and its N most likely alternatives'.
    logprobs: int | None = None
    # Not a sampling parameter either, but it shapes the sampler: None = free text.
    guide: Guide | None = None

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> SamplingParams:
        """From checked values (models.json's default_sampling, say); unknown keys are ignored."""
        # A guide is asked for per request (response_format, tool_choice), never a model default.
        known = {k: v for k, v in values.items() if k in _FIELDS and k != "guide" and v is not None}
        stop = known.get("stop")
        if stop is not None:
            known["stop"] = (stop,) if isinstance(stop, str) else tuple(stop)
        for name in ("temperature", "top_p", "presence_penalty", "frequency_penalty", "repetition_penalty"):
            if name in known:
                known[name] = float(known[name])
        return cls(**known)

    def given(self) -> dict[str, Any]:
        """Only what was asked for: the prompt-cache key and the wire carry this."""
        values = {name: getattr(self, name) for name in RULES if getattr(self, name) is not None}
        if self.stop:
            values["stop"] = list(self.stop)
        if self.logprobs is not None:
            values["logprobs"] = self.logprobs
        if self.guide is not None:
            values["guide"] = {"kind": self.guide.kind, "schema": self.guide.schema}
        return values

    def over(self, defaults: SamplingParams) -> SamplingParams:
        """These parameters with `defaults` filling what was not given."""
        mine = self.given()
        if not mine:
            return defaults
        if "stop" in mine:
            mine["stop"] = self.stop
        if "guide" in mine:
            mine["guide"] = self.guide
        return replace(defaults, **mine)

    def resolved(self) -> SamplingParams:
        """Every parameter concrete (the rules' defaults where not given); what engines sample with."""
        missing = {name: rule.default for name, rule in RULES.items()
                   if getattr(self, name) is None and rule.default is not None}
        return replace(self, **missing) if missing else self

    @property
    def greedy(self) -> bool:
        return (self.temperature if self.temperature is not None else RULES["temperature"].default) <= 0.0

    @property
    def deterministic(self) -> bool:
        """Greedy, or sampled with a fixed seed: the same request gives the same answer."""
        return (self.temperature is not None and self.temperature <= 0.0) or self.seed is not None

    def problems(self) -> list[tuple[str, str, str]]:
        """Every value outside the rules, as (param, code, "must ...")."""
        found = []
        for name in RULES:
            value = getattr(self, name)
            if value is not None and (bad := check_value(name, value)):
                found.append((name, *bad))
        if self.stop and (bad := check_stop(list(self.stop))):
            found.append((bad[1], bad[0], bad[2]))  # (where, code, rule)
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_LOGPROBS:
            found.append(("logprobs", "invalid_value", f"must be between 0 and {MAX_LOGPROBS}"))
        if self.guide is not None and self.guide.kind not in GUIDE_KINDS:
            found.append(("guide", "invalid_value", f"must be one of {', '.join(GUIDE_KINDS)}"))
        return found


_FIELDS = frozenset(f.name for f in fields(SamplingParams))
