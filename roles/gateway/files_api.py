"""`/v1/files`: upload, list, read and delete fine-tuning data files, in OpenAI's shapes.

Files are kept in Redis (`cynode.training_store`), not on the gateway's disk: every training
worker, on any host, reads the same Redis, so a job can run (and resume) anywhere without a shared
file system for its data. That is also why uploads are bounded (`[gateway] max_file_bytes`) and
must be UTF-8 text (JSONL as OpenAI asks; JSON and CSV are read too).
"""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage
from cynode.errors import RequestError
from cynode.training_store import TrainingStore

from . import openai_format as fmt
from .state import GatewayState

PURPOSES = ("fine-tune",)
_CHUNK = 1 << 16


def routes() -> list[web.RouteDef]:
    return [
        web.post("/v1/files", create_file),
        web.get("/v1/files", list_files),
        web.get("/v1/files/{file_id}", retrieve_file),
        web.get("/v1/files/{file_id}/content", file_content),
        web.delete("/v1/files/{file_id}", delete_file),
    ]


def store_of(request: web.Request) -> TrainingStore:
    store = request.app.get("training_store")
    if store is None:
        raise RequestError("fine-tuning needs Redis, and this gateway has none", status=503, code="unavailable")
    return store


def visible(key, record: dict) -> bool:
    """A key sees what it uploaded; an admin key sees everything."""
    return key.has_scope("admin") or record.get("owner") == key.name


def file_object(record: dict) -> dict:
    return {"object": "file", "id": record["id"], "bytes": record["bytes"], "created_at": record["created_at"],
            "filename": record["filename"], "purpose": record["purpose"], "status": "processed",
            "status_details": None}


async def create_file(request: web.Request) -> web.Response:
    state: GatewayState = request.app["state"]
    key = state.authenticate(request, "training")
    store = store_of(request)
    if not request.content_type.startswith("multipart/"):
        raise RequestError("POST /v1/files takes multipart/form-data with the fields 'file' and 'purpose'",
                           param="file")
    limit = state.config.max_file_bytes
    purpose, filename, data = None, None, None
    try:
        reader = await request.multipart()
        async with asyncio.timeout(state.config.body_timeout or None):
            while (part := await reader.next()) is not None:
                if part.name == "purpose":
                    purpose = (await part.text()).strip()
                elif part.name == "file":
                    filename = part.filename or "upload.jsonl"
                    data = await _read_limited(part, limit)
                else:
                    await part.release()
    except TimeoutError:
        request.protocol.keep_alive(False)  # the rest of the body would read as a request
        raise RequestError(f"upload not received within {state.config.body_timeout:g}s", status=408,
                           code="request_timeout") from None
    except (KeyError, ValueError, RuntimeError, BadHttpMessage) as exc:
        # aiohttp's multipart reader: no boundary (KeyError), a malformed body or part (ValueError,
        # BadHttpMessage), an unknown part encoding (RuntimeError). All the client's doing.
        detail = "no boundary in its Content-Type" if isinstance(exc, KeyError) else str(exc)
        raise RequestError(f"the multipart/form-data body is malformed: {detail}", param="file",
                           code="invalid_multipart") from None
    if purpose is None:
        raise RequestError("missing the form field 'purpose'", param="purpose")
    if purpose not in PURPOSES:
        raise RequestError(f"purpose {purpose!r} is not supported here (expected one of {', '.join(PURPOSES)})",
                           param="purpose")
    if data is None:
        raise RequestError("missing the form field 'file'", param="file")
    if not data.strip():
        raise RequestError(f"{filename}: the file is empty", param="file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(f"{filename}: not UTF-8 text at byte {exc.start} (expected JSONL)", param="file") from None
    record = await store.put_file(filename, purpose, text, owner=key.name)
    return web.Response(body=fmt.json_bytes(file_object(record)), content_type="application/json")


async def _read_limited(part, limit: int) -> bytes:
    chunks, size = [], 0
    while chunk := await part.read_chunk(_CHUNK):
        size += len(chunk)
        if size > limit:
            raise RequestError(f"the file is larger than {limit} bytes ([gateway] max_file_bytes)", status=413,
                               code="file_too_large", param="file")
        chunks.append(chunk)
    return b"".join(chunks)


async def list_files(request: web.Request) -> web.Response:
    state: GatewayState = request.app["state"]
    key = state.authenticate(request, "training")
    purpose = request.query.get("purpose")
    files = [file_object(f) for f in await store_of(request).list_files()
             if purpose in (None, f["purpose"]) and visible(key, f)]
    return web.Response(body=fmt.json_bytes({"object": "list", "data": files, "has_more": False}),
                        content_type="application/json")


async def _file_or_404(request: web.Request) -> tuple[TrainingStore, dict]:
    state: GatewayState = request.app["state"]
    key = state.authenticate(request, "training")
    store = store_of(request)
    file_id = request.match_info["file_id"]
    record = await store.get_file(file_id)
    if record is None or not visible(key, record):
        raise RequestError(f"No such File object: {file_id}", status=404, param="id", code="file_not_found")
    return store, record


async def retrieve_file(request: web.Request) -> web.Response:
    _, record = await _file_or_404(request)
    return web.Response(body=fmt.json_bytes(file_object(record)), content_type="application/json")


async def file_content(request: web.Request) -> web.Response:
    store, record = await _file_or_404(request)
    text = await store.file_text(record["id"]) or ""
    return web.Response(text=text, content_type="application/octet-stream")


async def delete_file(request: web.Request) -> web.Response:
    store, record = await _file_or_404(request)
    deleted = await store.delete_file(record["id"])
    return web.Response(body=fmt.json_bytes({"object": "file", "id": record["id"], "deleted": deleted}),
                        content_type="application/json")
