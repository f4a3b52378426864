"""The gateway role: OpenAI-compatible HTTP API, API keys, relay of worker token streams."""

from .role import GatewayRole

__all__ = ["GatewayRole"]
