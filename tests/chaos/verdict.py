"""What a chaos run's records and Redis say, against the invariants.

- lost: a request the cluster accepted (HTTP 200) whose answer did not arrive whole, or a task that
  ended anywhere but `done`/`cancelled` (dead-lettered, or still queued or leased once the cluster
  settled);
- run twice: a request with more than one task in Redis, or (where no worker was harmed) a task that
  took more than one attempt;
- wrong: an answer whose hash differs from the unbroken reference for its `max_tokens`;
- failures: what a client saw go wrong (non-200, a broken stream, a refused connection on every
  gateway), accepted or not;
- recovery: from the fault to the first token of the first request that arrived after it;
- p99 during the fault: latency of the requests that arrived in the `window` seconds after it.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from load import Record


@dataclass
class Fault:
    kind: str
    at: float  # time.monotonic() when injected
    healed: float | None = None  # when it was undone (SIGCONT, Redis back), if it lasts


@dataclass
class Verdict:
    requests: int
    ok: int
    accepted: int
    lost: list[str]
    run_twice: list[str]
    retried: list[str]
    wrong: list[str]
    failures: list[str]
    recovery_s: list[float | None] = field(default_factory=list)
    p99_during_s: list[float | None] = field(default_factory=list)
    p99_baseline_s: float | None = None

    def summary(self) -> dict:
        return {"requests": self.requests, "ok": self.ok, "accepted": self.accepted, "lost": len(self.lost),
                "run_twice": len(self.run_twice), "retried_tasks": len(self.retried), "wrong": len(self.wrong),
                "client_failures": len(self.failures), "failure_examples": self.failures[:3],
                "recovery_s": [None if r is None else round(r, 3) for r in self.recovery_s],
                "p99_during_s": [None if p is None else round(p, 3) for p in self.p99_during_s],
                "p99_baseline_s": None if self.p99_baseline_s is None else round(self.p99_baseline_s, 3)}


def p99(values: list[float]) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(round(0.99 * (len(values) - 1))))]


def judge(records: list[Record], tasks: list[dict], references: dict[int, str], faults: list[Fault], *,
          window: float = 5.0) -> Verdict:
    by_request: dict[str, list[dict]] = {}
    ids = {r.id for r in records}
    for task in tasks:
        idem = task.get("idem", "")
        rid = next((i for i in (idem, idem.rsplit(":", 1)[-1]) if i in ids), None)
        if rid is not None:
            by_request.setdefault(rid, []).append(task)
    lost, twice, retried, wrong, failures = [], [], [], [], []
    for r in records:
        mine = by_request.get(r.id, [])
        if len(mine) > 1:
            twice.append(r.id)
        if any(int(t.get("attempts", 0) or 0) > 1 for t in mine):
            retried.append(r.id)
        ended_badly = [t for t in mine if t.get("state") not in ("done", "cancelled")]
        if (r.accepted and not r.ok) or ended_badly:
            lost.append(f"{r.id}: status {r.status} finish {r.finish} error {r.error[:120]!r} "
                        f"tasks {[(t.get('state'), t.get('attempts'), t.get('error', '')[:60]) for t in mine]}")
        if not r.ok:
            failures.append(f"{r.id}: status {r.status} {r.error[:160]!r}")
        elif references.get(r.max_tokens) != r.text_hash:
            wrong.append(f"{r.id}: max_tokens {r.max_tokens} hash {r.text_hash} != {references.get(r.max_tokens)}")
    recovery, during = [], []
    for fault in faults:
        after = [r for r in records if r.start >= fault.at and r.ok and r.first is not None]
        recovery.append(min(r.first for r in after) - fault.at if after else None)
        during.append(p99([r.end - r.start for r in records if fault.at <= r.start < fault.at + window and r.ok]))
    first_fault = min((f.at for f in faults), default=float("inf"))
    baseline = p99([r.end - r.start for r in records if r.ok and r.end is not None and r.end < first_fault])
    return Verdict(requests=len(records), ok=sum(r.ok for r in records), accepted=sum(r.accepted for r in records),
                   lost=lost, run_twice=twice, retried=retried, wrong=wrong, failures=failures,
                   recovery_s=recovery, p99_during_s=during, p99_baseline_s=baseline)


def median(values: list[float]) -> float:
    return statistics.median(values)
