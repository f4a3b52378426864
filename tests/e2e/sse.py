"""Reading an OpenAI-style SSE stream the way a client would."""

from __future__ import annotations

import json


def events(lines):
    """Yield each `data:` payload: a dict, or the string "[DONE]"."""
    for line in lines:
        if not line.startswith("data: "):
            continue
        payload = line[len("data: "):]
        yield payload if payload == "[DONE]" else json.loads(payload)


def content_of(chunks) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if isinstance(c, dict) and c.get("choices"))
