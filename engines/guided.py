"""Constrained decoding: a request's `Guide` (cynode.sampling) as one xgrammar grammar, for both engines.

The grammar is built here once, the same way for every engine, so a guided request means the same
thing on the transformers and the vLLM engine:
- "json": one JSON value valid against the schema, written compactly (`,` and `:` without spaces,
  as vLLM's `disable_any_whitespace`): a small model given free whitespace can pad forever.
- "tool_call": `<tool_call>\\n` + the call's JSON (`{"name": ..., "arguments": {...}}`, valid against
  the schema) + `\\n</tool_call>`, the Hermes/Qwen format that `chat_prompt` asks the model for and
  the gateway parses.

The transformers engine compiles it against its tokenizer (`GrammarCache`) and masks each step's
logits with a `GrammarMatcher` (`engines/sampling.py`); the vLLM engine hands the same grammar, as
EBNF text, to vLLM's structured outputs (`StructuredOutputsParams(grammar=...)`), whose xgrammar
backend compiles it again on its side. A schema xgrammar cannot compile is the client's error: a 400
naming `response_format` (or `tool_choice`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from functools import lru_cache

import xgrammar as xgr

from cynode.errors import RequestError
from cynode.inference import TOOL_CALL_CLOSE, TOOL_CALL_OPEN
from cynode.sampling import Guide

__all__ = ["GrammarCache", "grammar_for", "vllm_structured_outputs"]
JSON_SEPARATORS = (",", ":")


def _param(guide: Guide) -> str:
    return "tool_choice" if guide.kind == "tool_call" else "response_format"


@lru_cache(maxsize=256)
def grammar_for(guide: Guide) -> xgr.Grammar:
    """The grammar of a guide; RequestError (400) when its schema cannot be compiled."""
    try:
        body = xgr.Grammar.from_json_schema(guide.schema, any_whitespace=False, separators=JSON_SEPARATORS)
    except Exception as exc:  # xgrammar raises RuntimeError/ValueError/InvalidJSONError for what it cannot do
        where = "a tool's parameters" if guide.kind == "tool_call" else "response_format's JSON Schema"
        raise RequestError(f"{where} cannot be used for constrained decoding: {exc}", status=400,
                           param=_param(guide), code="invalid_value") from exc
    if guide.kind == "json":
        return body
    if guide.kind == "tool_call":
        return xgr.Grammar.concat(_literal(TOOL_CALL_OPEN), body, _literal(TOOL_CALL_CLOSE))
    raise RequestError(f"unknown guide kind {guide.kind!r}", status=400, param="guide", code="invalid_value")


def _literal(text: str) -> xgr.Grammar:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return xgr.Grammar.from_ebnf(f'root ::= "{escaped}"')


def vllm_structured_outputs(guide: Guide) -> dict:
    """Keyword arguments for vLLM's `StructuredOutputsParams`: the same grammar, as EBNF text."""
    return {"grammar": str(grammar_for(guide))}


class GrammarCache:
    """Compiled grammars for one tokenizer, and a fresh matcher per request.

    Compiling a JSON schema against a 49k-token vocabulary takes milliseconds to a second; xgrammar's
    compiler caches by grammar, so a repeated schema costs nothing. Call `matcher` off the event
    loop. Each matcher is then used by one sequence on the scheduler thread only.
    """

    def __init__(self, tokenizer, vocab_size: int, stop_ids: Iterable[int]) -> None:
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size, stop_token_ids=sorted(stop_ids))
        self.vocab_size = vocab_size
        self._compiler = xgr.GrammarCompiler(info, max_threads=2)
        self._lock = threading.Lock()

    def matcher(self, guide: Guide, continuation: str = "") -> xgr.GrammarMatcher:
        """A matcher at the start of the answer, or (a migrated request) after `continuation`."""
        grammar = grammar_for(guide)
        with self._lock:
            compiled = self._compiler.compile_grammar(grammar)
        matcher = xgr.GrammarMatcher(compiled)
        if continuation and not matcher.accept_string(continuation):
            raise RequestError("the answer so far does not fit the requested format; it cannot be resumed",
                               status=400, param=_param(guide), code="invalid_value")
        return matcher
