"""The worker's metrics; names from the seed (`worker_*`) are kept."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import Gauge

from cynode.fast_metrics import FastCounter, FastHistogram
from cynode.telemetry import TOKEN_LATENCY_BUCKETS, Telemetry

_RATE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


@dataclass
class WorkerMetrics:
    latency: FastHistogram
    ttft: FastHistogram
    inter_token: FastHistogram
    tokens_per_second: FastHistogram
    tokens: FastCounter
    requests: FastCounter
    prompt_tokens: FastCounter
    active: Gauge
    gpu_memory_used: Gauge
    gpu_utilization: Gauge

    @classmethod
    def register(cls, telemetry: Telemetry) -> "WorkerMetrics":
        return cls(
            latency=telemetry.histogram("worker_inference_latency", "Seconds from request to last token", ("model",)),
            ttft=telemetry.histogram("worker_time_to_first_token_seconds", "Seconds to the first token", ("model",)),
            inter_token=telemetry.histogram("worker_inter_token_latency_seconds", "Seconds between tokens", ("model",),
                                            buckets=TOKEN_LATENCY_BUCKETS),
            tokens_per_second=telemetry.histogram(
                "worker_tokens_per_second", "Decode rate of one request", ("model",), buckets=_RATE_BUCKETS
            ),
            tokens=telemetry.counter("worker_tokens_generated", "Tokens generated", ("model",)),
            requests=telemetry.counter("worker_requests", "Generation requests by model and outcome",
                                       ("model", "outcome")),
            prompt_tokens=telemetry.counter("worker_prompt_tokens", "Prompt tokens processed", ("model",)),
            active=telemetry.gauge("worker_active_requests", "Requests being generated"),
            gpu_memory_used=telemetry.gauge("worker_gpu_memory_used", "Accelerator memory in use, bytes (host RAM on CPU)"),
            gpu_utilization=telemetry.gauge("worker_gpu_utilization", "Accelerator utilisation, percent (this process's CPU use on a CPU host)"),
        )

    def record_request(self, model: str, outcome: str, prompt_tokens: int) -> None:
        """The per-model request and prompt-token counters, once per Predict call; outcome is one of
        ok, rejected (a bad request), error (the engine failed) or cancelled (the caller went away)."""
        self.requests.labels(model, outcome).inc()
        if prompt_tokens:
            self.prompt_tokens.labels(model).inc(prompt_tokens)
