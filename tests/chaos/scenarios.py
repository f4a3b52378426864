"""Load + faults + verdict, shared by the chaos tests (short) and `make report` (longer soaks)."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx

from daemon_harness import CynodeProcess, wait_for
from load import MAX_TOKENS, LoadGenerator, Record, text_hash
from runner import ChaosCluster
from verdict import Fault, Verdict, judge


def references(gateway: CynodeProcess, model: str) -> dict[int, str]:
    """The unbroken answer for each `max_tokens`, from a quiet cluster (streamed and not must agree)."""
    key = gateway.api_key()
    refs = {}
    for max_tokens in MAX_TOKENS:
        body = {"model": model, "messages": [{"role": "user", "content": "reference"}], "max_tokens": max_tokens,
                "temperature": 0}
        headers = {"Authorization": f"Bearer {key}", "Cache-Control": "no-cache"}
        reply = httpx.post(f"{gateway.base_url}/v1/chat/completions", json=body, headers=headers, timeout=60)
        assert reply.status_code == 200 and reply.headers["X-Cache"] == "miss", reply.text
        refs[max_tokens] = text_hash(reply.json()["choices"][0]["message"]["content"])
        text = ""
        with httpx.stream("POST", f"{gateway.base_url}/v1/chat/completions", json={**body, "stream": True},
                          headers=headers, timeout=60) as streamed:
            for line in streamed.iter_lines():
                if line.startswith("data: {"):
                    import json
                    event = json.loads(line[6:])
                    if event.get("choices"):
                        text += event["choices"][0]["delta"].get("content") or ""
        assert text_hash(text) == refs[max_tokens], "streamed and whole answers differ on a quiet cluster"
    return refs


def targets_of(cluster: ChaosCluster, gateways: list[CynodeProcess] | None = None) -> Callable[[], list[tuple[str, str, str]]]:
    chosen = gateways or cluster.gateways()
    keys = {g.config_id: g.api_key() for g in chosen}
    return lambda: [(g.config_id, g.base_url, keys[g.config_id]) for g in chosen]


def run(cluster: ChaosCluster, model: str, refs: dict[int, str], inject: Callable[[], list[Fault]], *,
        rate: float = 8.0, before: float = 2.0, after: float = 4.0, seed: int = 1, settle: float = 60.0,
        gateways: list[CynodeProcess] | None = None, prefix: str = "r",
        tasks: Callable[[], list[dict]] | None = None) -> tuple[list[Record], Verdict, list[Fault]]:
    """Open-loop load for `before` s, then `inject()` (returns the faults it made), `after` s more load,
    then wait for every request and for the queue to settle; judge against `tasks()` (default: the
    task records in Redis now; a run longer than their hour in Redis passes `TaskSnapshots`)."""
    load = LoadGenerator(targets_of(cluster, gateways), model, rate=rate, seed=seed, prefix=prefix).start()
    time.sleep(before)  # load before the fault: the baseline (this is the schedule, not a synchronisation)
    faults = inject()
    time.sleep(after)
    records = load.stop()
    wait_for(cluster.settled, settle, "every accepted task to end (nothing pending or in flight)")
    return records, judge(records, (tasks or cluster.tasks)(), refs, faults), faults


class TaskSnapshots:
    """Every task record seen in Redis over a long run: finished tasks stay there an hour
    (`task_queue.DONE_TTL_S`), so a soak longer than that takes a snapshot now and then (`take`,
    every few minutes) and judges against them all; the latest state of each task wins."""

    def __init__(self, cluster: ChaosCluster) -> None:
        self._cluster = cluster
        self._seen: dict[str, dict] = {}

    def take(self) -> None:
        for task in self._cluster.tasks():
            self._seen[task["id"]] = task

    def __call__(self) -> list[dict]:
        self.take()
        return list(self._seen.values())


def assert_invariants(verdict: Verdict, *, allow_retries: bool = False) -> None:
    """0 lost, 0 run twice, every answer equal to its reference (and, where no worker was harmed,
    nothing re-executed)."""
    assert verdict.ok > 0, verdict.summary()
    assert not verdict.lost, ("accepted requests lost", verdict.lost[:5], verdict.summary())
    assert not verdict.run_twice, ("requests run twice", verdict.run_twice[:5], verdict.summary())
    assert not verdict.wrong, ("answers differ from the unbroken reference", verdict.wrong[:5])
    if not allow_retries:
        assert not verdict.retried, ("tasks re-executed although no worker failed", verdict.retried[:5])
