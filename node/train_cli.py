"""`cynode train`: upload a dataset, start a fine-tuning job and follow it with a live progress line.

Speaks the node's OpenAI-shaped HTTP API (`/v1/files`, `/v1/fine_tuning/jobs`, the job's events as
server-sent events) with the standard library only, so it works from the slim binary too.
"""

from __future__ import annotations

import json
import secrets
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, TextIO

BAR = 24


class ApiError(SystemExit):
    pass


def _request(url: str, key: str, method: str = "GET", body: bytes | None = None, content_type: str | None = None,
             timeout: float = 60.0):
    headers = {"Authorization": f"Bearer {key}"}
    if content_type:
        headers["Content-Type"] = content_type
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        return urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        try:
            message = json.loads(err.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = err.reason
        raise ApiError(f"cynode train: {method} {url} answered {err.code}: {message}") from None
    except (urllib.error.URLError, OSError) as err:
        raise ApiError(f"cynode train: cannot reach {url}: {getattr(err, 'reason', err)}") from None


def _json(url: str, key: str, method: str = "GET", payload: dict | None = None) -> dict:
    body = json.dumps(payload).encode() if payload is not None else None
    with _request(url, key, method, body, "application/json" if body else None) as reply:
        return json.loads(reply.read())


def upload(base: str, key: str, path: Path) -> dict:
    boundary = "cynode-" + secrets.token_hex(12)
    data = path.read_bytes()
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nfine-tune\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{path.name}\"\r\n"
            f"Content-Type: application/jsonl\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    with _request(f"{base}/v1/files", key, "POST", body, f"multipart/form-data; boundary={boundary}",
                  timeout=300) as reply:
        return json.loads(reply.read())


def job_body(args: Any, training_file: str, validation_file: str | None) -> dict[str, Any]:
    hyperparameters: dict[str, Any] = {}
    for name in ("n_epochs", "batch_size", "learning_rate_multiplier", "max_steps", "max_seq_len", "beta"):
        value = getattr(args, name, None)
        if value is not None:
            hyperparameters[name] = value
    body: dict[str, Any] = {"model": args.model, "training_file": training_file,
                            "method": {"type": args.method, args.method: {"hyperparameters": hyperparameters}}}
    if validation_file:
        body["validation_file"] = validation_file
    if args.suffix:
        body["suffix"] = args.suffix
    if args.seed is not None:
        body["seed"] = args.seed
    return body


def progress_line(data: dict[str, Any]) -> str:
    step, total = int(data.get("step", 0)), int(data.get("total_steps") or 0)
    done = min(1.0, step / total) if total else 0.0
    filled = int(done * BAR)
    eta = data.get("eta_seconds")
    eta_text = time.strftime("%H:%M:%S", time.gmtime(eta)) if isinstance(eta, (int, float)) else "?"
    return (f"[{'#' * filled}{'.' * (BAR - filled)}] step {step}/{total}  loss {data.get('train_loss', 0):.4f}  "
            f"{data.get('tokens_per_second', 0):.0f} tok/s  ETA {eta_text}")


def follow(base: str, key: str, job_id: str, out: TextIO = sys.stderr) -> dict:
    """Print the job's events as they come (metrics as one live progress line) until it ends."""
    live = out.isatty()
    with _request(f"{base}/v1/fine_tuning/jobs/{job_id}/events?stream=true", key, timeout=3600) as reply:
        pending_line = False
        for raw in reply:
            line = raw.decode().rstrip("\r\n")
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if event.get("type") == "metrics":
                text = progress_line(event.get("data") or {})
                if live:
                    out.write("\r" + text)
                    pending_line = True
                else:
                    out.write(text + "\n")
            else:
                if pending_line:
                    out.write("\n")
                    pending_line = False
                out.write(f"{event.get('level', 'info'):<5} {event['message']}\n")
            out.flush()
        if pending_line:
            out.write("\n")
    return _json(f"{base}/v1/fine_tuning/jobs/{job_id}", key)


def run(args: Any, base: str, key: str) -> int:
    base = base.rstrip("/")
    training = upload(base, key, Path(args.file))
    print(f"uploaded {args.file} as {training['id']} ({training['bytes']} bytes)", file=sys.stderr)
    validation = upload(base, key, Path(args.validation_file))["id"] if args.validation_file else None
    job = _json(f"{base}/v1/fine_tuning/jobs", key, "POST", job_body(args, training["id"], validation))
    print(f"created job {job['id']} ({job['status']})", file=sys.stderr)
    if args.detach:
        print(job["id"])
        return 0
    final = follow(base, key, job["id"])
    if final["status"] == "succeeded":
        print(final["fine_tuned_model"])
        return 0
    error = (final.get("error") or {}).get("message", "")
    print(f"cynode train: job {final['id']} ended {final['status']}{': ' + error if error else ''}", file=sys.stderr)
    return 1
