"""The admin API for keys, on every gateway (an `admin`-scoped key):

    POST   /v1/admin/keys                  make a key; the answer holds the key itself, once
    GET    /v1/admin/keys                  every key: the file's and those made at run time
    GET    /v1/admin/keys/{name}           one key
    DELETE /v1/admin/keys/{name}           revoke a key made at run time
    GET    /v1/admin/keys/{name}/usage     requests and tokens per UTC day (?days=N, default 7, up to 100)

Every call writes one audit line (logger `cynode.audit`): who, what, which key; never a secret.
`cynode keys create/list/revoke/usage` call these.
"""

from __future__ import annotations

import logging
import time

import orjson
from aiohttp import web
from cynode.api_keys import ApiKey
from cynode.errors import RequestError, UnavailableError

from .keys_store import KeyRecord, parse_key_spec
from .state import GatewayState

audit = logging.getLogger("cynode.audit")

MAX_USAGE_DAYS = 100


def _json(body, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def _file_key(key: ApiKey) -> dict:
    return {"name": key.name, "source": "file", "scopes": sorted(key.scopes), "models": list(key.models),
            "requests_per_minute": key.requests_per_minute, "tokens_per_minute": key.tokens_per_minute,
            "max_concurrent_requests": key.max_concurrent_requests, "tokens_per_day": key.tokens_per_day,
            "tokens_per_month": key.tokens_per_month, "priority": key.priority, "expires_at": key.expires_at,
            "state": "expired" if key.expires_at is not None and time.time() >= key.expires_at else "active"}


def _admin(request: web.Request) -> tuple[GatewayState, ApiKey]:
    state: GatewayState = request.app["state"]
    return state, state.authenticate(request, "admin")


def _runtime(state: GatewayState):
    if state.runtime_keys is None:
        raise UnavailableError("keys made at run time need Redis, which this gateway has none of")
    return state.runtime_keys


async def create_key(request: web.Request) -> web.Response:
    state, admin = _admin(request)
    try:
        body = orjson.loads(await state.read_body(request))
    except orjson.JSONDecodeError as exc:
        raise RequestError(f"the body is not valid JSON: {exc}", code="invalid_json") from None
    record = parse_key_spec(body, now=time.time())
    record.created_by = admin.name
    if any(k.name == record.name for k in state.keys.keys):
        raise RequestError(f"the key file already has a key named {record.name!r}", status=409, param="name",
                           code="key_exists")
    key = await _runtime(state).create(record)
    audit.info("audit: %s created API key %r (scopes %s, models %s, expires %s)", admin.name, record.name,
               ",".join(record.scopes), ",".join(record.models), record.expires_at or "never")
    return _json({**record.public(), "key": key}, status=201)


async def list_keys(request: web.Request) -> web.Response:
    state, admin = _admin(request)
    runtime = await _runtime(state).list() if state.runtime_keys is not None else []
    audit.info("audit: %s listed API keys", admin.name)
    return _json({"object": "list", "data": [_file_key(k) for k in state.keys.keys] + [r.public() for r in runtime]})


async def _find(state: GatewayState, name: str) -> dict:
    for key in state.keys.keys:
        if key.name == name:
            return _file_key(key)
    record: KeyRecord | None = await _runtime(state).get(name) if state.runtime_keys is not None else None
    if record is None:
        raise RequestError(f"no API key named {name!r}", status=404, code="key_not_found")
    return record.public()


async def get_key(request: web.Request) -> web.Response:
    state, admin = _admin(request)
    name = request.match_info["name"]
    found = await _find(state, name)
    audit.info("audit: %s read API key %r", admin.name, name)
    return _json(found)


async def revoke_key(request: web.Request) -> web.Response:
    state, admin = _admin(request)
    name = request.match_info["name"]
    if any(k.name == name for k in state.keys.keys):
        raise RequestError(f"the key {name!r} comes from the key file; remove it there and send SIGHUP",
                           status=409, code="key_in_file")
    record = await _runtime(state).revoke(name, time.time())
    if record is None:
        raise RequestError(f"no API key named {name!r}", status=404, code="key_not_found")
    audit.info("audit: %s revoked API key %r", admin.name, name)
    return _json(record.public())


async def key_usage(request: web.Request) -> web.Response:
    state, admin = _admin(request)
    name = request.match_info["name"]
    await _find(state, name)
    try:
        days = int(request.query.get("days", "7"))
    except ValueError:
        days = 0
    if not 1 <= days <= MAX_USAGE_DAYS:
        raise RequestError(f"days must be an integer from 1 to {MAX_USAGE_DAYS}", param="days", code="invalid_value")
    if state.limits is None:
        raise UnavailableError("usage is kept in Redis, which this gateway has none of")
    now = time.time()
    dates = [time.strftime("%Y%m%d", time.gmtime(now - 86400 * i)) for i in range(days)]
    usage = await state.limits.usage(name, dates)
    audit.info("audit: %s read the usage of API key %r (%d days)", admin.name, name, days)
    return _json({"name": name, "object": "list",
                  "data": [{"date": f"{d[:4]}-{d[4:6]}-{d[6:]}", **usage[d]} for d in dates]})


def admin_routes() -> list[web.RouteDef]:
    return [
        web.post("/v1/admin/keys", create_key),
        web.get("/v1/admin/keys", list_keys),
        web.get("/v1/admin/keys/{name}", get_key),
        web.delete("/v1/admin/keys/{name}", revoke_key),
        web.get("/v1/admin/keys/{name}/usage", key_usage),
    ]
