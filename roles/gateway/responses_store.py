"""Stored responses of `/v1/responses` (`store: true`, the default), kept in Redis for every gateway.

    <p>response:<id>   STRING JSON: owner (the API key's name), response (the object as returned),
                       messages (the conversation it ends, for `previous_response_id`), TTL_S

A response belongs to the key that made it: any other key is told it does not exist (404), the
same answer as for an id that never was, so ids cannot be probed. The conversation is kept as
messages (input and output, instructions left out, as OpenAI does not carry them over), so a
follow-up request is its stored messages plus its own input, whichever gateway it reaches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from cynode.api_keys import ApiKey
from cynode.errors import RequestError
from cynode.inference import ChatMessage
from cynode.redis_conn import RedisConnection, translate_errors

__all__ = ["TTL_S", "ResponseStore", "StoredResponse", "not_found"]

TTL_S = 30 * 86400  # as OpenAI keeps them: 30 days


@dataclass(frozen=True)
class StoredResponse:
    owner: str
    response: dict[str, Any]
    messages: tuple[ChatMessage, ...]


def not_found(response_id: str, param: str | None = None) -> RequestError:
    return RequestError(f"Response with id {response_id!r} not found.", status=404, param=param,
                        code="response_not_found")


class ResponseStore:
    def __init__(self, redis: RedisConnection, ttl_s: int = TTL_S) -> None:
        self._redis = redis
        self._ttl_s = ttl_s

    def _key(self, response_id: str) -> str:
        return self._redis.key("response", response_id)

    async def put(self, owner: ApiKey, response: dict[str, Any], messages: tuple[ChatMessage, ...]) -> None:
        record = {"owner": owner.name, "response": response,
                  "messages": [{"role": m.role, "content": m.content} for m in messages]}
        with translate_errors("storing a response"):
            await self._redis.client.set(self._key(response["id"]), orjson.dumps(record), ex=self._ttl_s)

    async def get(self, owner: ApiKey, response_id: str, *, param: str | None = None) -> StoredResponse:
        """The response if `owner` made it; else the 404 an unknown id gets."""
        with translate_errors("reading a response"):
            raw = await self._redis.client.get(self._key(response_id))
        if raw is None:
            raise not_found(response_id, param)
        record = orjson.loads(raw)
        if record.get("owner") != owner.name:
            raise not_found(response_id, param)
        return StoredResponse(owner=record["owner"], response=record["response"],
                              messages=tuple(ChatMessage(role=m["role"], content=m["content"])
                                             for m in record["messages"]))

    async def delete(self, owner: ApiKey, response_id: str) -> None:
        await self.get(owner, response_id)  # another key's response is not there for this one
        with translate_errors("deleting a response"):
            await self._redis.client.delete(self._key(response_id))
