"""The coordinator's metrics; names from the seed (`coordinator_*`) are kept."""

from __future__ import annotations

from dataclasses import dataclass

from cynode.fast_metrics import FastCounter, FastHistogram
from cynode.telemetry import Telemetry
from prometheus_client import Gauge


# The `status` label of coordinator_inference_requests_total, as the service counts them.
REQUEST_STATUSES = ("assigned", "cache_hit", "queue_full", "model_not_found", "completed", "failed")


@dataclass
class CoordinatorMetrics:
    requests: FastCounter
    tokens: FastCounter
    workers_healthy: Gauge
    leader_epoch: Gauge
    is_leader: Gauge
    cache_hit_rate: Gauge
    queue_pending: Gauge
    queue_wait: FastHistogram

    @classmethod
    def register(cls, telemetry: Telemetry) -> "CoordinatorMetrics":
        metrics = cls._create(telemetry)
        # Every outcome exported from the start, at 0: a standby shows the same names as the leader,
        # and rate() sees the first request instead of a series appearing out of nothing.
        for status in REQUEST_STATUSES:
            metrics.requests.labels(status)
        return metrics

    @classmethod
    def _create(cls, telemetry: Telemetry) -> "CoordinatorMetrics":
        return cls(
            requests=telemetry.counter("coordinator_inference_requests", "Inference requests by outcome", ("status",)),
            tokens=telemetry.counter("coordinator_completion_tokens", "Completion tokens reported by gateways"),
            workers_healthy=telemetry.gauge("coordinator_workers_healthy", "Workers passing health checks"),
            leader_epoch=telemetry.gauge("coordinator_leader_epoch", "Fencing epoch of this node's last leadership"),
            is_leader=telemetry.gauge("coordinator_is_leader", "1 while this node leads"),
            cache_hit_rate=telemetry.gauge("coordinator_cache_hit_rate", "Prompt-cache hits / lookups since start"),
            queue_pending=telemetry.gauge("coordinator_queue_pending", "Tasks waiting in the priority queue"),
            queue_wait=telemetry.histogram("coordinator_queue_wait_seconds", "Seconds a request waited for a worker"),
        )
