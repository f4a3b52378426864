"""The coordinator role: leader election, worker pool and assignments."""

from .role import CoordinatorRole

__all__ = ["CoordinatorRole"]
