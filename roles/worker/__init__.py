"""The worker role: inference engines behind the Worker gRPC service."""

from .role import WorkerRole

__all__ = ["WorkerRole"]
