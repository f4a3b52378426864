"""`/v1/fine_tuning/jobs`: create, list, read, follow (events, also as SSE), checkpoints, cancel,
pause and resume fine-tuning jobs, in OpenAI's shapes.

The gateway only writes the job into Redis (`cynode.training_store`) in `validating_files`; the
coordinator leader checks its files, queues it with the key's priority and assigns it to a worker
tagged `training`, which appends events as it trains. Every gateway therefore answers about every
job, whichever node created it and through any leader failover.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any

from aiohttp import web
from cynode.api_keys import ApiKey
from cynode.errors import RequestError, TrainingError
from cynode.rpc import common_pb2
from cynode.training_store import TERMINAL, TrainingStore, new_id

from . import openai_format as fmt
from .files_api import store_of
from .files_api import visible as file_visible
from .state import GatewayState

BASE_LEARNING_RATE = 2e-4  # learning_rate_multiplier 1.0 means this (the engine's default)
_FIELDS = {"model", "training_file", "validation_file", "hyperparameters", "method", "suffix", "seed", "metadata",
           "integrations", "cynode"}
# JobSpec settings a client may set through the `cynode` object (`extra_body` in OpenAI's SDK).
EXTRA_SETTINGS = ("lora", "format", "merge", "checkpoint_every", "keep_checkpoints", "eval_every",
                  "early_stopping_patience", "early_stopping_min_delta", "validation_split", "threads",
                  "gradient_checkpointing", "divergence_factor")
_SUFFIX = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")
_POLL_S = 0.25


def routes() -> list[web.RouteDef]:
    return [
        web.post("/v1/fine_tuning/jobs", create_job),
        web.get("/v1/fine_tuning/jobs", list_jobs),
        web.get("/v1/fine_tuning/jobs/{job_id}", retrieve_job),
        web.get("/v1/fine_tuning/jobs/{job_id}/events", list_events),
        web.get("/v1/fine_tuning/jobs/{job_id}/checkpoints", list_checkpoints),
        web.post("/v1/fine_tuning/jobs/{job_id}/cancel", cancel_job),
        web.post("/v1/fine_tuning/jobs/{job_id}/pause", pause_job),
        web.post("/v1/fine_tuning/jobs/{job_id}/resume", resume_job),
    ]


def _json(body: Any) -> web.Response:
    return web.Response(body=fmt.json_bytes(body), content_type="application/json")


def fine_tuned_model_id(base: str, job_id: str, suffix: str | None) -> str:
    short = job_id.removeprefix("ftjob-")
    return f"{base}:ft-{suffix}-{short}" if suffix else f"{base}:ft-{short}"


def job_object(job: dict[str, Any]) -> dict[str, Any]:
    hp = job.get("hyperparameters") or {}
    method = job.get("method") or {"type": "supervised"}
    public_hp = {"n_epochs": hp.get("n_epochs"), "batch_size": hp.get("batch_size"),
                 "learning_rate_multiplier": round(hp.get("learning_rate", BASE_LEARNING_RATE) / BASE_LEARNING_RATE, 6)}
    if method.get("type") == "dpo":
        public_hp["beta"] = hp.get("beta")
    return {
        "object": "fine_tuning.job", "id": job["id"], "model": job["model"],
        "created_at": int(job["created_at"]), "finished_at": _int(job.get("finished_at")),
        "fine_tuned_model": job.get("fine_tuned_model") or None, "organization_id": "org-cynode",
        "result_files": [], "status": job["status"], "training_file": job["training_file"],
        "validation_file": job.get("validation_file") or None, "hyperparameters": public_hp,
        "trained_tokens": _int(job.get("trained_tokens")), "error": job.get("error") or None,
        "user_provided_suffix": job.get("suffix") or None, "seed": _int(job.get("seed")),
        "estimated_finish": _int(job.get("estimated_finish")), "integrations": [],
        "metadata": job.get("metadata") or None,
        "method": {"type": method["type"], method["type"]: {"hyperparameters": public_hp}},
    }


def _int(value: Any) -> int | None:
    return int(float(value)) if value not in (None, "") else None


async def _body(request: web.Request, state: GatewayState) -> dict[str, Any]:
    raw = await state.read_body(request)
    try:
        body = json.loads(raw or b"{}")
    except json.JSONDecodeError as exc:
        raise RequestError(f"the body is not valid JSON: {exc.msg} at position {exc.pos}") from None
    if not isinstance(body, dict):
        raise RequestError("the body must be a JSON object")
    return body


async def create_job(request: web.Request) -> web.Response:
    state: GatewayState = request.app["state"]
    key = state.authenticate(request, "training")
    store = store_of(request)
    body = await _body(request, state)
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise RequestError(f"unknown field {unknown[0]!r} (expected any of {', '.join(sorted(_FIELDS))})",
                           param=unknown[0])
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise RequestError("'model' is required: the id of the base model to fine-tune", param="model")
    state.authorize_model(key, model)
    if body.get("integrations"):
        raise RequestError("integrations are not supported", param="integrations")
    suffix = body.get("suffix")
    if suffix is not None and (not isinstance(suffix, str) or not _SUFFIX.match(suffix)):
        raise RequestError("'suffix' must be 1 to 40 lowercase letters, digits and '-'", param="suffix")
    seed = body.get("seed", 42)
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32:
        raise RequestError("'seed' must be an integer from 0 to 2**32-1", param="seed")
    metadata = body.get("metadata")
    if metadata is not None and (not isinstance(metadata, dict) or len(metadata) > 16
                                 or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())):
        raise RequestError("'metadata' must map at most 16 string keys to string values", param="metadata")
    method_type, hyperparameters = _method_and_hyperparameters(body)
    extras = body.get("cynode") or {}
    if not isinstance(extras, dict) or set(extras) - set(EXTRA_SETTINGS):
        bad = sorted(set(extras) - set(EXTRA_SETTINGS)) if isinstance(extras, dict) else ["cynode"]
        raise RequestError(f"cynode.{bad[0]}: not a setting a job may take (expected any of "
                           f"{', '.join(EXTRA_SETTINGS)})", param="cynode")
    files = {}
    for name in ("training_file", "validation_file"):
        file_id = body.get(name)
        if file_id is None and name == "validation_file":
            continue
        if not isinstance(file_id, str) or not file_id:
            raise RequestError(f"'{name}' is required: the id of an uploaded file", param=name)
        record = await store.get_file(file_id)
        if record is None or not file_visible(key, record):
            raise RequestError(f"{name} {file_id!r}: no such file", status=404, param=name, code="file_not_found")
        if record["purpose"] != "fine-tune":
            raise RequestError(f"{name} {file_id!r} has purpose {record['purpose']!r}, not 'fine-tune'", param=name)
        files[name] = file_id
    _check_spec(method_type, hyperparameters, extras)
    await _check_model_served(state, model)
    job_id = new_id("ftjob")[:18]
    now = int(time.time())
    await store.create_job({
        "id": job_id, "model": model, "training_file": files["training_file"],
        "validation_file": files.get("validation_file", ""), "hyperparameters": hyperparameters,
        "method": {"type": method_type}, "suffix": suffix or "", "seed": seed, "metadata": metadata,
        "cynode": extras, "created_at": now, "priority": key.priority, "owner": key.name,
        "fine_tuned_model_id": fine_tuned_model_id(model, job_id, suffix),
    })
    await store.add_event(job_id, f"Created fine-tuning job: {job_id}")
    await store.add_event(job_id, "Validating training file: " + files["training_file"]
                          + (f" and validation file: {files['validation_file']}" if "validation_file" in files else ""))
    return _json(job_object(await store.job(job_id)))


def _method_and_hyperparameters(body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    method = body.get("method") or {"type": "supervised"}
    if not isinstance(method, dict) or method.get("type") not in ("supervised", "dpo"):
        raise RequestError("'method.type' must be 'supervised' or 'dpo'", param="method")
    method_type = method["type"]
    extra_keys = set(method) - {"type", method_type}
    if extra_keys:
        raise RequestError(f"method.{sorted(extra_keys)[0]}: unknown for method {method_type!r}", param="method")
    given: dict[str, Any] = {}
    for source, where in ((body.get("hyperparameters"), "hyperparameters"),
                          ((method.get(method_type) or {}).get("hyperparameters"), f"method.{method_type}.hyperparameters")):
        if source is None:
            continue
        if not isinstance(source, dict):
            raise RequestError(f"'{where}' must be an object", param=where)
        given.update({k: v for k, v in source.items() if v != "auto"})
    from cynode.engines.training.spec import Hyperparameters

    hp: dict[str, Any] = {}
    for name, value in given.items():
        if name == "learning_rate_multiplier":
            if not isinstance(value, (int, float)) or value <= 0:
                raise RequestError("hyperparameters.learning_rate_multiplier must be a positive number",
                                   param="hyperparameters")
            hp["learning_rate"] = BASE_LEARNING_RATE * value
        elif name in Hyperparameters.model_fields:
            if name == "beta" and method_type != "dpo":
                raise RequestError("hyperparameters.beta applies to method dpo only", param="hyperparameters")
            hp[name] = value
        else:
            raise RequestError(f"hyperparameters.{name}: unknown (expected learning_rate_multiplier or any of "
                               f"{', '.join(Hyperparameters.model_fields)})", param="hyperparameters")
    try:
        resolved = Hyperparameters.model_validate(hp).model_dump(mode="json")
    except ValueError as exc:
        raise RequestError(f"hyperparameters: {exc}", param="hyperparameters") from None
    return method_type, resolved


def _check_spec(method_type: str, hyperparameters: dict[str, Any], extras: dict[str, Any]) -> None:
    """The job's settings make a valid JobSpec (placeholders for what the worker fills in)."""
    from cynode.engines.training.spec import JobSpec

    try:
        JobSpec.from_dict({"job_id": "check", "model_dir": "-", "train_files": ["-"], "output_dir": "-",
                           "method": method_type, "hyperparameters": hyperparameters, **extras})
    except TrainingError as exc:
        raise RequestError(exc.message, code="invalid_job", param="hyperparameters") from None


async def _check_model_served(state: GatewayState, model: str) -> None:
    models = (await state.upstream.call("ListModels", common_pb2.ListModelsRequest())).models
    if model not in {m.id for m in models}:
        raise RequestError(f"model {model!r} is not served by this cluster, so it cannot be fine-tuned here",
                           status=404, param="model", code="model_not_found")


async def _job_or_404(request: web.Request) -> tuple[TrainingStore, dict[str, Any], ApiKey]:
    state: GatewayState = request.app["state"]
    key = state.authenticate(request, "training")
    store = store_of(request)
    job_id = request.match_info["job_id"]
    job = await store.job(job_id)
    if job is None or not _visible(key, job):
        raise RequestError(f"No such fine-tuning job: {job_id}", status=404, param="fine_tuning_job_id",
                           code="job_not_found")
    return store, job, key


def _visible(key: ApiKey, job: dict[str, Any]) -> bool:
    return key.has_scope("admin") or job.get("owner") == key.name


async def list_jobs(request: web.Request) -> web.Response:
    state: GatewayState = request.app["state"]
    key = state.authenticate(request, "training")
    limit = _limit(request)
    jobs, has_more = await store_of(request).list_jobs(after=request.query.get("after"), limit=limit)
    data = [job_object(j) for j in jobs if _visible(key, j)]
    return _json({"object": "list", "data": data, "has_more": has_more})


def _limit(request: web.Request) -> int:
    try:
        limit = int(request.query.get("limit", "20"))
    except ValueError:
        raise RequestError("limit must be an integer", param="limit") from None
    if not 1 <= limit <= 1000:
        raise RequestError("limit must be from 1 to 1000", param="limit")
    return limit


async def retrieve_job(request: web.Request) -> web.Response:
    _, job, _ = await _job_or_404(request)
    return _json(job_object(job))


async def list_events(request: web.Request) -> web.StreamResponse:
    store, job, _ = await _job_or_404(request)
    if request.query.get("stream") in ("true", "1") or "text/event-stream" in request.headers.get("Accept", ""):
        return await _stream_events(request, store, job["id"])
    events = await store.events(job["id"])
    events.reverse()  # newest first, as OpenAI lists them
    after = request.query.get("after")
    if after:
        ids = [e["id"] for e in events]
        events = events[ids.index(after) + 1:] if after in ids else []
    limit = _limit(request)
    return _json({"object": "list", "data": events[:limit], "has_more": len(events) > limit})


async def _stream_events(request: web.Request, store: TrainingStore, job_id: str) -> web.StreamResponse:
    """Every event oldest first, then new ones as they come, until the job ends (or pauses)."""
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    sent = 0
    while True:
        events = await store.events(job_id, sent)
        for event in events:
            await response.write(fmt.sse_event(event))
        sent += len(events)
        job = await store.job(job_id)
        if job is None or (job["status"] in (*TERMINAL, "paused") and not events):
            break
        if not events:
            await asyncio.sleep(_POLL_S)
    await response.write(fmt.SSE_DONE)
    await response.write_eof()
    return response


async def list_checkpoints(request: web.Request) -> web.Response:
    store, job, _ = await _job_or_404(request)
    checkpoints = list(reversed(await store.checkpoints(job["id"])))
    limit = _limit(request)
    return _json({"object": "list", "data": checkpoints[:limit], "has_more": len(checkpoints) > limit,
                  "first_id": checkpoints[0]["id"] if checkpoints else None,
                  "last_id": checkpoints[min(limit, len(checkpoints)) - 1]["id"] if checkpoints else None})


async def _control(request: web.Request, action: str) -> web.Response:
    store, job, key = await _job_or_404(request)
    before, done = await store.control(job["id"], action)
    if not done:
        raise RequestError(f"fine-tuning job {job['id']} is {before}, so it cannot be {_PAST[action]}",
                           param="fine_tuning_job_id", code="invalid_job_state")
    messages = {"cancelled": "Job cancelled", "asked": f"{action.capitalize()} requested by {key.name}",
                "paused": "Job paused", "queued": "Job resumed: queued", "unpaused": "Pause withdrawn"}
    await store.add_event(job["id"], messages[done])
    return _json(job_object(await store.job(job["id"])))


_PAST = {"cancel": "cancelled", "pause": "paused", "resume": "resumed"}


async def cancel_job(request: web.Request) -> web.Response:
    return await _control(request, "cancel")


async def pause_job(request: web.Request) -> web.Response:
    return await _control(request, "pause")


async def resume_job(request: web.Request) -> web.Response:
    return await _control(request, "resume")
