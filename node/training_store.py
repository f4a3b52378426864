"""Fine-tuning files, jobs, events, checkpoints and published adapters, as they live in Redis.

Shared by the gateway (creates files and jobs, reads them, asks for cancel/pause/resume), the
coordinator leader (validates, queues by priority, assigns, requeues a dead worker's job) and the
training worker (runs the job, appends events, publishes the adapter). Everything a job is lives
here, in the Redis every coordinator reads, so a leader failover loses nothing and a job survives
the worker that ran it. Keys (under the cluster prefix):

    ft:file:<id>            hash: id, filename, purpose, bytes, created_at
    ft:file:<id>:data       the file's text (uploads are small JSONL; every worker can read Redis)
    ft:files                zset of file ids by creation time
    ft:job:<id>             hash: the job's fields (see `JOB_FIELDS`), status, worker, attempt, control
    ft:job:<id>:events      list of event JSON, oldest first (ids ftevent-<job>-<n>)
    ft:job:<id>:checkpoints list of checkpoint JSON, oldest first
    ft:job:<id>:lease       the worker running it (PX lease, renewed while it runs)
    ft:jobs                 zset of job ids by creation time
    ft:validating           set of jobs whose files are to be checked
    ft:queue                zset of queued jobs, best first (priority, then age)
    ft:running              set of jobs assigned to a worker
    ft:workers              hash: worker id -> JSON {models, free_memory, job, address}
    ft:worker:<id>          the worker's liveness (PX)
    ft:assign:<worker>      list of job ids handed to that worker
    ft:adapters             hash: served model id -> JSON {base, path, version, job_id, created_at}

Status changes are Lua scripts that check the status they expect (and, for the leader, the fencing
epoch; for the worker, that the job is still its own attempt), so two actors never both win.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

from .redis_conn import RedisConnection, translate_errors

STATUSES = ("validating_files", "queued", "running", "succeeded", "failed", "cancelled", "paused")
TERMINAL = ("succeeded", "failed", "cancelled")
JOB_LEASE_MS = 10_000
WORKER_TTL_MS = 6_000
JSON_FIELDS = ("hyperparameters", "method", "metadata", "error", "cynode", "spec")

# Leader: validating_files -> queued | failed. KEYS: job, validating, queue, epoch. ARGV: epoch, status, score, error
_VALIDATED = """
if redis.call('GET', KEYS[4]) ~= ARGV[1] then return -1 end
redis.call('SREM', KEYS[2], ARGV[5])
if redis.call('HGET', KEYS[1], 'status') ~= 'validating_files' then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[2])
if ARGV[2] == 'queued' then redis.call('ZADD', KEYS[3], ARGV[3], ARGV[5])
else redis.call('HSET', KEYS[1], 'error', ARGV[4], 'finished_at', ARGV[6]) end
return 1
"""

# Leader: queued -> running on a worker. KEYS: job, queue, running, lease, assign, epoch.
# ARGV: epoch, worker, lease ms, job id
_ASSIGN = """
if redis.call('GET', KEYS[6]) ~= ARGV[1] then return -1 end
if redis.call('ZREM', KEYS[2], ARGV[4]) == 0 then return 0 end
if redis.call('HGET', KEYS[1], 'status') ~= 'queued' then return 0 end
local attempt = redis.call('HINCRBY', KEYS[1], 'attempt', 1)
redis.call('HSET', KEYS[1], 'status', 'running', 'worker', ARGV[2], 'epoch', ARGV[1])
redis.call('SADD', KEYS[3], ARGV[4])
redis.call('SET', KEYS[4], ARGV[2] .. ':' .. attempt, 'PX', ARGV[3])
redis.call('RPUSH', KEYS[5], ARGV[4] .. ':' .. attempt)
return attempt
"""

# Leader: a running job whose lease is gone goes back to the queue. KEYS: job, running, lease, queue, epoch.
# ARGV: epoch, job id, score
_REQUEUE = """
if redis.call('GET', KEYS[5]) ~= ARGV[1] then return -1 end
if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
redis.call('SREM', KEYS[2], ARGV[2])
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
redis.call('HSET', KEYS[1], 'status', 'queued', 'worker', '', 'control', '')
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[2])
return 1
"""

# Worker: renew its lease while the job is still its attempt. KEYS: lease, job. ARGV: owner, ms
_RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

# Worker: fields (and an optional end) while the job is its attempt. KEYS: job, lease, running.
# ARGV: owner, job id, end (''|status), then field, value pairs
_UPDATE = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
for i = 4, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
if ARGV[3] ~= '' then
  redis.call('HSET', KEYS[1], 'status', ARGV[3], 'control', '')
  redis.call('SREM', KEYS[3], ARGV[2])
  redis.call('DEL', KEYS[2])
end
return 1
"""

# Gateway: cancel / pause / resume. KEYS: job, queue, validating. ARGV: action, score, now
_CONTROL = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'', ''} end
local id = redis.call('HGET', KEYS[1], 'id')
local action = ARGV[1]
if action == 'cancel' then
  if status == 'queued' or status == 'validating_files' or status == 'paused' then
    redis.call('ZREM', KEYS[2], id); redis.call('SREM', KEYS[3], id)
    redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished_at', ARGV[3])
    return {status, 'cancelled'}
  elseif status == 'running' then
    redis.call('HSET', KEYS[1], 'control', 'cancel')
    return {status, 'asked'}
  end
elseif action == 'pause' then
  if status == 'queued' then
    redis.call('ZREM', KEYS[2], id)
    redis.call('HSET', KEYS[1], 'status', 'paused')
    return {status, 'paused'}
  elseif status == 'running' then
    redis.call('HSET', KEYS[1], 'control', 'pause')
    return {status, 'asked'}
  end
elseif action == 'resume' then
  if status == 'paused' then
    redis.call('HSET', KEYS[1], 'status', 'queued', 'control', '')
    redis.call('ZADD', KEYS[2], ARGV[2], id)
    return {status, 'queued'}
  elseif status == 'running' and redis.call('HGET', KEYS[1], 'control') == 'pause' then
    redis.call('HSET', KEYS[1], 'control', '')
    return {status, 'unpaused'}
  end
end
return {status, ''}
"""

# Anyone: append an event with the next sequence number. KEYS: job, events. ARGV: event JSON (no id yet), job id
_EVENT = """
local n = redis.call('HINCRBY', KEYS[1], 'events_n', 1)
local event = cjson.decode(ARGV[1])
event['id'] = 'ftevent-' .. ARGV[2] .. '-' .. n
redis.call('RPUSH', KEYS[2], cjson.encode(event))
return n
"""


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def queue_score(priority: int, created_at: float) -> float:
    """Higher priority first, then older first (ZRANGE ascending)."""
    return -priority * 1e11 + created_at


class TrainingStore:
    def __init__(self, redis: RedisConnection) -> None:
        self.redis = redis
        self.r = redis.client
        self._validated = self.r.register_script(_VALIDATED)
        self._assign = self.r.register_script(_ASSIGN)
        self._requeue = self.r.register_script(_REQUEUE)
        self._renew = self.r.register_script(_RENEW)
        self._update = self.r.register_script(_UPDATE)
        self._control = self.r.register_script(_CONTROL)
        self._event = self.r.register_script(_EVENT)

    def k(self, *parts: str) -> str:
        return self.redis.key("ft", *parts)

    # ---- files -----------------------------------------------------------------------------------

    async def put_file(self, filename: str, purpose: str, text: str, owner: str = "") -> dict[str, Any]:
        file_id = new_id("file")
        record = {"id": file_id, "filename": filename, "purpose": purpose, "bytes": len(text.encode()),
                  "created_at": int(time.time()), "owner": owner}
        with translate_errors("file upload"):
            pipe = self.r.pipeline(transaction=True)
            pipe.set(self.k("file", file_id, "data"), text)
            pipe.hset(self.k("file", file_id), mapping=record)
            pipe.zadd(self.k("files"), {file_id: time.time()})
            await pipe.execute()
        return record

    async def get_file(self, file_id: str) -> dict[str, Any] | None:
        with translate_errors("file lookup"):
            raw = await self.r.hgetall(self.k("file", file_id))
        if not raw:
            return None
        return {**raw, "bytes": int(raw["bytes"]), "created_at": int(raw["created_at"])}

    async def file_text(self, file_id: str) -> str | None:
        with translate_errors("file read"):
            return await self.r.get(self.k("file", file_id, "data"))

    async def list_files(self) -> list[dict[str, Any]]:
        with translate_errors("file list"):
            ids = await self.r.zrange(self.k("files"), 0, -1)
        files = [await self.get_file(i) for i in ids]
        return [f for f in files if f]

    async def delete_file(self, file_id: str) -> bool:
        with translate_errors("file delete"):
            pipe = self.r.pipeline(transaction=True)
            pipe.delete(self.k("file", file_id), self.k("file", file_id, "data"))
            pipe.zrem(self.k("files"), file_id)
            deleted, _ = await pipe.execute()
        return bool(deleted)

    # ---- jobs ------------------------------------------------------------------------------------

    async def create_job(self, fields: dict[str, Any]) -> str:
        """Store a new job in validating_files; the leader checks its files next."""
        job_id = fields["id"]
        with translate_errors("job create"):
            pipe = self.r.pipeline(transaction=True)
            pipe.hset(self.k("job", job_id), mapping=_encode(fields | {"status": "validating_files", "attempt": 0}))
            pipe.zadd(self.k("jobs"), {job_id: float(fields["created_at"])})
            pipe.sadd(self.k("validating"), job_id)
            await pipe.execute()
        return job_id

    async def job(self, job_id: str) -> dict[str, Any] | None:
        with translate_errors("job lookup"):
            raw = await self.r.hgetall(self.k("job", job_id))
        return _decode(raw) if raw else None

    async def list_jobs(self, *, after: str | None = None, limit: int = 20) -> tuple[list[dict[str, Any]], bool]:
        """Newest first; `after` is the id of the last job of the previous page."""
        with translate_errors("job list"):
            ids = await self.r.zrevrange(self.k("jobs"), 0, -1)
        if after and after in ids:
            ids = ids[ids.index(after) + 1:]
        page = ids[:limit]
        jobs = [await self.job(i) for i in page]
        return [j for j in jobs if j], len(ids) > limit

    async def set_fields(self, job_id: str, **fields: Any) -> None:
        with translate_errors("job update"):
            await self.r.hset(self.k("job", job_id), mapping=_encode(fields))

    async def add_event(self, job_id: str, message: str, *, level: str = "info", kind: str = "message",
                        data: dict[str, Any] | None = None) -> int:
        event = {"object": "fine_tuning.job.event", "created_at": int(time.time()), "level": level,
                 "message": message, "type": kind, "data": data or {}}
        with translate_errors("job event"):
            return int(await self._event(keys=[self.k("job", job_id), self.k("job", job_id, "events")],
                                         args=[json.dumps(event), job_id]))

    async def events(self, job_id: str, start: int = 0) -> list[dict[str, Any]]:
        """Events from index `start` on, oldest first."""
        with translate_errors("job events"):
            raw = await self.r.lrange(self.k("job", job_id, "events"), start, -1)
        return [json.loads(e) for e in raw]

    async def add_checkpoint(self, job_id: str, checkpoint: dict[str, Any]) -> None:
        with translate_errors("job checkpoint"):
            await self.r.rpush(self.k("job", job_id, "checkpoints"), json.dumps(checkpoint))

    async def checkpoints(self, job_id: str) -> list[dict[str, Any]]:
        with translate_errors("job checkpoints"):
            raw = await self.r.lrange(self.k("job", job_id, "checkpoints"), 0, -1)
        return [json.loads(c) for c in raw]

    async def control(self, job_id: str, action: str) -> tuple[str, str]:
        """cancel | pause | resume: (status before, what happened: cancelled, paused, queued, asked, '')."""
        job = await self.job(job_id)
        if job is None:
            return "", ""
        score = queue_score(int(job.get("priority") or 0), float(job.get("created_at") or 0))
        with translate_errors(f"job {action}"):
            before, done = await self._control(
                keys=[self.k("job", job_id), self.k("queue"), self.k("validating")],
                args=[action, score, int(time.time())])
        return before, done

    # ---- the leader --------------------------------------------------------------------------------

    def _epoch_key(self) -> str:
        return self.redis.key("leader", "epoch")

    async def validating(self) -> list[str]:
        with translate_errors("validating jobs"):
            return sorted(await self.r.smembers(self.k("validating")))

    async def mark_validated(self, job_id: str, epoch: int, *, error: dict[str, Any] | None = None) -> int:
        job = await self.job(job_id) or {}
        score = queue_score(int(job.get("priority") or 0), float(job.get("created_at") or 0))
        with translate_errors("job validated"):
            return int(await self._validated(
                keys=[self.k("job", job_id), self.k("validating"), self.k("queue"), self._epoch_key()],
                args=[epoch, "failed" if error else "queued", score, json.dumps(error) if error else "", job_id,
                      int(time.time())]))

    async def queued(self) -> list[str]:
        with translate_errors("queued jobs"):
            return await self.r.zrange(self.k("queue"), 0, -1)

    async def assign(self, job_id: str, worker: str, epoch: int) -> int:
        """The attempt number, 0 if the job is no longer queued, -1 if `epoch` is stale."""
        with translate_errors("job assign"):
            return int(await self._assign(
                keys=[self.k("job", job_id), self.k("queue"), self.k("running"), self.k("job", job_id, "lease"),
                      self.k("assign", worker), self._epoch_key()],
                args=[epoch, worker, JOB_LEASE_MS, job_id]))

    async def running(self) -> list[str]:
        with translate_errors("running jobs"):
            return sorted(await self.r.smembers(self.k("running")))

    async def requeue_if_orphaned(self, job_id: str, epoch: int) -> int:
        job = await self.job(job_id) or {}
        score = queue_score(int(job.get("priority") or 0), float(job.get("created_at") or 0))
        with translate_errors("job requeue"):
            return int(await self._requeue(
                keys=[self.k("job", job_id), self.k("running"), self.k("job", job_id, "lease"), self.k("queue"),
                      self._epoch_key()],
                args=[epoch, job_id, score]))

    async def workers(self) -> dict[str, dict[str, Any]]:
        """Training workers that are alive now, with what they published."""
        with translate_errors("training workers"):
            raw = await self.r.hgetall(self.k("workers"))
            alive = {}
            for worker_id, value in raw.items():
                if await self.r.exists(self.k("worker", worker_id)):
                    alive[worker_id] = json.loads(value)
        return alive

    # ---- the worker --------------------------------------------------------------------------------

    async def heartbeat(self, worker_id: str, info: dict[str, Any]) -> None:
        with translate_errors("worker heartbeat"):
            pipe = self.r.pipeline(transaction=True)
            pipe.hset(self.k("workers"), worker_id, json.dumps(info))
            pipe.set(self.k("worker", worker_id), "1", px=WORKER_TTL_MS)
            await pipe.execute()

    async def take_assignment(self, worker_id: str, timeout: float) -> tuple[str, int] | None:
        with translate_errors("job assignment"):
            item = await self.r.blpop([self.k("assign", worker_id)], timeout=timeout)
        if item is None:
            return None
        job_id, _, attempt = item[1].rpartition(":")
        return job_id, int(attempt)

    async def renew(self, job_id: str, owner: str) -> bool:
        with translate_errors("job lease"):
            return bool(await self._renew(keys=[self.k("job", job_id, "lease"), self.k("job", job_id)],
                                          args=[owner, JOB_LEASE_MS]))

    async def release(self, job_id: str, owner: str) -> None:
        """Give the job up at once (the leader requeues it on its next pass) if it is still `owner`'s."""
        with translate_errors("job lease"):
            await self._renew(keys=[self.k("job", job_id, "lease"), self.k("job", job_id)], args=[owner, 1])

    async def update_owned(self, job_id: str, owner: str, *, end: str = "", **fields: Any) -> bool:
        """Set fields (and end the job with status `end`) if the job is still `owner`'s attempt."""
        args: list[Any] = [owner, job_id, end]
        for name, value in _encode(fields).items():
            args += [name, value]
        with translate_errors("job update"):
            return bool(await self._update(
                keys=[self.k("job", job_id), self.k("job", job_id, "lease"), self.k("running")], args=args))

    # ---- adapters ----------------------------------------------------------------------------------

    async def publish_adapter(self, model_id: str, record: dict[str, Any]) -> None:
        with translate_errors("adapter publish"):
            await self.r.hset(self.k("adapters"), model_id, json.dumps(record))

    async def adapters(self) -> dict[str, dict[str, Any]]:
        with translate_errors("adapters"):
            raw = await self.r.hgetall(self.k("adapters"))
        return {model_id: json.loads(v) for model_id, v in raw.items()}


def _encode(fields: dict[str, Any]) -> dict[str, str]:
    out = {}
    for name, value in fields.items():
        if name in JSON_FIELDS:
            out[name] = json.dumps(value)
        elif value is None:
            out[name] = ""
        else:
            out[name] = str(value)
    return out


def _decode(raw: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in raw.items():
        if name in JSON_FIELDS:
            out[name] = json.loads(value) if value else None
        else:
            out[name] = value
    return out


def spec_dict(job: dict[str, Any], *, model_dir: str, train_files: list[str], validation_files: list[str],
              output_dir: str) -> dict[str, Any]:
    """The engine's JobSpec (as a dict) for a stored job: its settings plus where this worker keeps things."""
    method = (job.get("method") or {}).get("type", "supervised")
    return {
        "job_id": job["id"], "model_dir": model_dir, "base_model_id": job["model"], "train_files": train_files,
        "validation_files": validation_files, "method": method, "output_dir": output_dir,
        "hyperparameters": job.get("hyperparameters") or {}, "seed": int(job.get("seed") or 42),
        **(job.get("cynode") or {}),
    }
