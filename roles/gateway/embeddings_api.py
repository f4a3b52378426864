"""`POST /v1/embeddings`: vectors from an embedding model, through the same request path as chat.

The coordinator admits the request like any other (queue, priority, a lease on a worker that serves
the model; never the prompt cache, which keeps text), the worker's `Embed` answers in one reply, and
the gateway reports `Complete`. A worker that fails is reported (its breaker counts it) and the
request is admitted again on another, up to `[gateway] max_retries` times; a bad request (an input
too long for the model) is given up at once, with the worker's 400.
"""

from __future__ import annotations

import base64
import logging
import struct
import time
from typing import Any

from aiohttp import web
from cynode.errors import CynodeError, FencedError, RequestError, UnavailableError
from cynode.rpc import common_pb2, coordinator_pb2, worker_pb2
from cynode.rpc.errors import rpc_errors

from . import openai_format as fmt
from .openai_schema import EmbeddingRequest, parse_embedding_request
from .state import GatewayState

log = logging.getLogger(__name__)


async def embeddings(request: web.Request) -> web.Response:
    state: GatewayState = request.app["state"]
    key = state.authenticate(request, "inference")
    body = parse_embedding_request(await state.read_body(request))
    state.authorize_model(key, body.model)
    request_id = "emb-" + fmt.completion_id().removeprefix("chatcmpl-")
    reply = await _run(state, request, body, request_id, key.priority or state.default_priority, key.name)
    data = [{"object": "embedding", "index": i, "embedding": _encoded(e.values, body.encoding_format)}
            for i, e in enumerate(reply.data)]
    usage = {"prompt_tokens": reply.usage.prompt_tokens, "total_tokens": reply.usage.prompt_tokens}
    state.record("ok", 0)
    return web.Response(body=fmt.json_bytes({"object": "list", "data": data, "model": reply.model, "usage": usage}),
                        content_type="application/json", headers={"X-Request-Id": request_id})


def _encoded(values, encoding: str) -> Any:
    if encoding == "base64":  # what the openai client asks for by default: float32, little-endian
        return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()
    return list(values)


async def _run(state: GatewayState, request: web.Request, body: EmbeddingRequest, request_id: str, priority: int,
               key_name: str) -> worker_pb2.EmbedReply:
    upstream = state.upstream
    deadline = time.monotonic() + state.config.request_timeout
    admit = coordinator_pb2.AdmitRequest(
        request_id=request_id, model=body.model, priority=priority, api_key_name=key_name,
        idempotency_key=request.headers.get("Idempotency-Key") or request_id,
        cache_mode=coordinator_pb2.CACHE_NO_STORE, prompt=body.inputs[0][:2048],
    )
    for attempt in range(state.config.max_retries + 1):
        remaining = max(0.5, deadline - time.monotonic())
        reply = await upstream.call("Admit", admit, patience=remaining, timeout=remaining)
        task_id, assignment = reply.task_id, reply.assignment
        upstream.leases.hold(task_id, assignment.lease_id, assignment.lease_deadline_ms)
        fault, error = True, ""
        try:
            with rpc_errors(f"worker {assignment.worker_id}"):
                result = await upstream.worker(assignment.worker_address).Embed(worker_pb2.EmbedRequest(
                    request_id=request_id, model=assignment.model or body.model, input=body.inputs,
                    lease_id=assignment.lease_id, epoch=assignment.epoch, dimensions=body.dimensions or 0,
                ), timeout=max(0.5, deadline - time.monotonic()))
        except RequestError:
            _cancel(state, task_id, assignment, "bad request")
            raise
        except FencedError as exc:
            fault, error = False, exc.message
        except CynodeError as exc:
            error = exc.message
        except BaseException:
            _cancel(state, task_id, assignment, "client went away")
            raise
        else:
            upstream.report("Complete", _complete(task_id, assignment, True, usage=result.usage))
            return result
        finally:
            upstream.leases.release(assignment.lease_id)
        log.warning("embeddings %s: worker %s failed (%s)", request_id, assignment.worker_id, error)
        try:
            done = await upstream.call("Complete", _complete(task_id, assignment, False, error=error, fault=fault),
                                       patience=min(10.0, max(0.5, deadline - time.monotonic())))
        except CynodeError as exc:
            log.warning("failure of task %s not reported (its lease will expire): %s", task_id, exc.message)
            continue
        if done.task_state == "dead":
            break
        if fault:
            admit.exclude_workers.append(assignment.worker_id)
    raise UnavailableError(f"request {request_id} failed on every worker it was given", retry_after=2,
                           code="upstream_failed")


def _complete(task_id: str, assignment: coordinator_pb2.Assignment, ok: bool, *, usage=None, error: str = "",
              fault: bool = False) -> coordinator_pb2.CompleteRequest:
    return coordinator_pb2.CompleteRequest(
        task_id=task_id, lease_id=assignment.lease_id, worker_id=assignment.worker_id, ok=ok, error=error,
        epoch=assignment.epoch, worker_fault=fault, model=assignment.model, finish_reason="stop" if ok else "",
        usage=usage or common_pb2.Usage(),
    )


def _cancel(state: GatewayState, task_id: str, assignment: coordinator_pb2.Assignment, reason: str) -> None:
    state.upstream.report("Cancel", coordinator_pb2.CancelRequest(task_id=task_id, lease_id=assignment.lease_id,
                                                                 reason=reason))
