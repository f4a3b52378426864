"""SWIM + Lifeguard membership (issue: gossip). Knows nothing about LLMs."""

__all__: list[str] = []
