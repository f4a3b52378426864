"""A zero-work OpenAI-shaped chat server: the "direct" baseline of `make bench-overhead`.

    python zero_server.py PORT TOKENS

It does what any OpenAI-compatible server must do for a request (parse the JSON body, check the
bearer token, write the answer in OpenAI's shape: one JSON body, or server-sent events with one
chunk per token) and nothing else: no model, no queue, no cluster. Every answer is TOKENS words.
The difference between cynode and this server, measured by the same client in the same run, is
what cynode's gateway, coordinator, queue and worker relay cost.
"""

from __future__ import annotations

import json
import sys
import time

from aiohttp import web

WORD = " word"


def main() -> None:
    port, tokens = int(sys.argv[1]), int(sys.argv[2])

    async def chat(request: web.Request) -> web.StreamResponse:
        if not request.headers.get("Authorization", "").startswith("Bearer "):
            return web.json_response({"error": {"message": "no key"}}, status=401)
        body = json.loads(await request.read())
        created, model, rid = int(time.time()), body["model"], "chatcmpl-zero"
        if not body.get("stream"):
            return web.json_response({
                "id": rid, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": WORD * tokens},
                             "logprobs": None, "finish_reason": "length"}],
                "usage": {"prompt_tokens": 8, "completion_tokens": tokens, "total_tokens": 8 + tokens},
            })
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)

        def event(delta: dict, finish=None) -> bytes:
            chunk = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                     "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
            return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"

        await response.write(event({"role": "assistant", "content": ""}))
        for _ in range(tokens):
            await response.write(event({"content": WORD}))
        await response.write(event({}, "length"))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    app = web.Application()
    app.add_routes([web.post("/v1/chat/completions", chat)])
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


if __name__ == "__main__":
    main()
