"""`GET /v1/models/{id}`: one model, by id or alias, as the healthy workers serve it."""

from __future__ import annotations

import time

from aiohttp import web
from cynode.errors import RequestError
from cynode.rpc import common_pb2

from . import openai_format as fmt
from .state import GatewayState


async def get_model(request: web.Request) -> web.Response:
    state: GatewayState = request.app["state"]
    key = state.authenticate(request, "inference")
    name = request.match_info["model"]
    models = (await state.upstream.call("ListModels", common_pb2.ListModelsRequest())).models
    found = next((m for m in models if name == m.id or name in m.aliases), None)
    # A model the key may not use is as absent as one nobody serves: its existence is not the key's business.
    if found is None or not key.allows_model(found.id):
        raise RequestError(f"The model {name!r} does not exist or is not served by any healthy worker; "
                           "GET /v1/models lists those you can use", status=404, param="model", code="model_not_found")
    return web.Response(body=fmt.json_bytes(fmt.model_card(found.id, "cynode", int(time.time()))),
                        content_type="application/json")
