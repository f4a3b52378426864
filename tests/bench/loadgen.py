"""A lean HTTP/1.1 load generator for OpenAI-shaped chat endpoints (run as its own process).

    python loadgen.py '<json job>' OUT.json   → writes the results to OUT.json

The same client measures the zero-work server and cynode, so what differs is the server. It costs
little per request (pre-built request bytes, keep-alive connections, a hand-rolled response reader
on asyncio streams) so that on a 2-core machine the client takes as little CPU as it can from the
servers it measures.

Jobs:
    {"mode": "closed", "url": ..., "key": ..., "body": {...}, "concurrency": c, "requests": n}
        c workers, each sending requests back to back on its own connection; per request: latency
        and (streamed) time to the first content chunk, in seconds.
    {"mode": "paced", "url": ..., "key": ..., "body": {...}, "streams": s, "expect_chunks": k}
        s streams opened at once; per stream: content chunks received and the largest gap between two.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from urllib.parse import urlsplit


def _request_bytes(url: str, key: str, body: dict, headers: dict[str, str]) -> bytes:
    parts = urlsplit(url)
    payload = json.dumps(body).encode()
    lines = [f"POST {parts.path} HTTP/1.1", f"Host: {parts.netloc}", "Content-Type: application/json",
             f"Content-Length: {len(payload)}", f"Authorization: Bearer {key}", "Connection: keep-alive",
             *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    return status, headers


async def _body_chunks(reader: asyncio.StreamReader, headers: dict[str, str]):
    """The body as it arrives: HTTP chunks (chunked encoding) or the whole Content-Length body."""
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                return
            data = await reader.readexactly(size + 2)
            yield data[:-2]
    else:
        yield await reader.readexactly(int(headers.get("content-length", "0")))


class _Connection:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def send(self, request: bytes):
        if self.writer is None or self.writer.is_closing():
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(request)
        status, headers = await _read_head(self.reader)
        if headers.get("connection", "").lower() == "close":
            self.writer = None
        return status, headers


async def _one(conn: _Connection, request: bytes, stream: bool) -> dict:
    start = time.perf_counter()
    status, headers = await conn.send(request)
    first = None
    chunks = 0
    buffer = b""
    async for data in _body_chunks(conn.reader, headers):
        if stream:
            buffer += data
            while b"\n\n" in buffer:
                event, buffer = buffer.split(b"\n\n", 1)
                if b'"content":"' in event and b'"role":"assistant"' not in event:
                    chunks += 1
                    if first is None:
                        first = time.perf_counter()
    end = time.perf_counter()
    return {"status": status, "latency": end - start, "ttft": (first - start) if first else None, "chunks": chunks,
            "cache": headers.get("x-cache", "")}


async def closed_loop(job: dict) -> dict:
    parts = urlsplit(job["url"])
    request = _request_bytes(job["url"], job["key"], job["body"], job.get("headers", {}))
    stream = bool(job["body"].get("stream"))
    remaining = job["requests"]
    records: list[dict] = []

    async def worker() -> None:
        nonlocal remaining
        conn = _Connection(parts.hostname, parts.port)
        while remaining > 0:
            remaining -= 1
            records.append(await _one(conn, request, stream))
        if conn.writer is not None:
            conn.writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(job["concurrency"])))
    elapsed = time.perf_counter() - started
    return {"elapsed": elapsed, "records": records}


async def paced(job: dict) -> dict:
    parts = urlsplit(job["url"])
    request = _request_bytes(job["url"], job["key"], job["body"], job.get("headers", {}))

    async def one_stream() -> dict:
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        writer.write(request)
        status, headers = await _read_head(reader)
        times: list[float] = []
        buffer = b""
        async for data in _body_chunks(reader, headers):
            buffer += data
            while b"\n\n" in buffer:
                event, buffer = buffer.split(b"\n\n", 1)
                if b'"content":"' in event and b'"role":"assistant"' not in event:
                    times.append(time.perf_counter())
        writer.close()
        gaps = [b - a for a, b in zip(times, times[1:])]
        return {"status": status, "chunks": len(times), "max_gap": max(gaps) if gaps else 0.0}

    results = await asyncio.gather(*(one_stream() for _ in range(job["streams"])), return_exceptions=True)
    out = []
    for result in results:
        out.append({"status": 0, "chunks": 0, "max_gap": 0.0, "error": repr(result)} if isinstance(result, BaseException)
                   else result)
    return {"records": out}


def main() -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    job = json.loads(sys.argv[1])
    result = asyncio.run(closed_loop(job) if job["mode"] == "closed" else paced(job))
    with open(sys.argv[2], "w") as out:
        json.dump(result, out)


if __name__ == "__main__":
    main()
