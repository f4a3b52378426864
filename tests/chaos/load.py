"""An open-loop load generator with per-request records, for chaos runs.

Arrivals are Poisson (exponential gaps from a seeded RNG) and never wait for earlier requests to
finish: a stalled cluster sees requests pile up as it would in production, instead of a closed loop
politely slowing down. Each request is streamed or not (half and half), asks for one of a few
`max_tokens` values, sends `Cache-Control: no-cache` (the engine must answer) and an
`Idempotency-Key` equal to its own id, so its task in Redis can be found and counted.

A connection refused by a gateway (it is down) is retried on the next gateway, as a load balancer
would: nothing was accepted yet. Anything after the request was sent counts as it happened.

Record per request: id, gateway, stream, max_tokens, start / first token / end (time.monotonic),
status, finish reason, text hash, error, X-Cache.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import threading
import time
from dataclasses import asdict, dataclass
from typing import Callable

import httpx

MAX_TOKENS = (8, 16, 24, 32)


@dataclass
class Record:
    id: str
    gateway: str
    stream: bool
    max_tokens: int
    start: float
    first: float | None = None
    end: float | None = None
    status: int = 0
    finish: str | None = None
    text_hash: str = ""
    error: str = ""
    cache: str = ""
    connect_retries: int = 0

    @property
    def ok(self) -> bool:
        return self.status == 200 and not self.error and self.finish in ("length", "stop")

    @property
    def accepted(self) -> bool:
        """The cluster took the request (answered 200, or failed after sending headers)."""
        return self.status == 200

    def as_dict(self) -> dict:
        return asdict(self)


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class LoadGenerator:
    """Runs in a thread of its own with its own event loop; `start()`, then `stop()` returns records."""

    def __init__(self, targets: Callable[[], list[tuple[str, str, str]]], model: str, *, rate: float,
                 seed: int = 1, stream_share: float = 0.5, timeout: float = 120.0, prefix: str = "r") -> None:
        """`targets()`: the gateways to spread requests over, as (name, base url, API key)."""
        self._targets = targets
        self._model = model
        self._rate = rate
        self._rng = random.Random(seed)
        self._stream_share = stream_share
        self._timeout = timeout
        self._prefix = prefix
        self.records: list[Record] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._counter = 0

    def start(self) -> "LoadGenerator":
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True, name="loadgen")
        self._thread.start()
        return self

    def stop(self, drain_timeout: float = 120.0) -> list[Record]:
        """Stop sending; wait for every request in flight to end (up to `drain_timeout`)."""
        self._stop.set()
        self._thread.join(drain_timeout)
        assert not self._thread.is_alive(), "requests still in flight after the drain timeout"
        return list(self.records)

    async def _main(self) -> None:
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
        async with httpx.AsyncClient(timeout=self._timeout, limits=limits) as client:
            inflight: set[asyncio.Task] = set()
            next_at = time.monotonic()
            while not self._stop.is_set():
                next_at += self._rng.expovariate(self._rate)
                delay = next_at - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                task = asyncio.create_task(self._one(client))
                inflight.add(task)
                task.add_done_callback(inflight.discard)
            if inflight:
                await asyncio.wait(inflight)

    async def _one(self, client: httpx.AsyncClient) -> None:
        self._counter += 1
        rid = f"{self._prefix}{self._counter:06d}"
        stream = self._rng.random() < self._stream_share
        max_tokens = self._rng.choice(MAX_TOKENS)
        record = Record(id=rid, gateway="", stream=stream, max_tokens=max_tokens, start=time.monotonic())
        self.records.append(record)
        body = {"model": self._model, "messages": [{"role": "user", "content": f"chaos request {rid}"}],
                "max_tokens": max_tokens, "temperature": 0, "stream": stream}
        targets = self._targets()
        offset = self._counter % max(1, len(targets))
        for attempt in range(max(1, len(targets))):
            name, url, key = targets[(offset + attempt) % len(targets)]
            record.gateway, record.connect_retries = name, attempt
            headers = {"Authorization": f"Bearer {key}", "Cache-Control": "no-cache", "Idempotency-Key": rid}
            try:
                await self._send(client, url, headers, body, record)
                return
            except httpx.ConnectError as exc:  # refused: nothing accepted, try the next gateway
                record.error = f"connect: {exc}"
            except (httpx.HTTPError, ValueError, KeyError) as exc:
                record.error = f"{type(exc).__name__}: {exc}"
                break
        record.end = time.monotonic()

    async def _send(self, client, url, headers, body, record: Record) -> None:
        record.error = ""
        if not body["stream"]:
            reply = await client.post(f"{url}/v1/chat/completions", json=body, headers=headers)
            record.status, record.cache, record.end = reply.status_code, reply.headers.get("X-Cache", ""), time.monotonic()
            if reply.status_code == 200:
                choice = reply.json()["choices"][0]
                record.first = record.end
                record.finish = choice["finish_reason"]
                record.text_hash = text_hash(choice["message"]["content"] or "")
            else:
                record.error = reply.text[:300]
            return
        text = ""
        async with client.stream("POST", f"{url}/v1/chat/completions", json=body, headers=headers) as reply:
            record.status, record.cache = reply.status_code, reply.headers.get("X-Cache", "")
            if reply.status_code != 200:
                record.error = (await reply.aread()).decode(errors="replace")[:300]
                record.end = time.monotonic()
                return
            async for line in reply.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                event = json.loads(line[6:])
                if "error" in event:
                    record.error = event["error"].get("message", "stream error")
                    continue
                if event.get("choices"):
                    choice = event["choices"][0]
                    piece = choice["delta"].get("content") or ""
                    if piece and record.first is None:
                        record.first = time.monotonic()
                    text += piece
                    record.finish = choice.get("finish_reason") or record.finish
        record.end = time.monotonic()
        record.text_hash = text_hash(text)
