"""The three roles a node can play; each subpackage stands alone and talks to the others over gRPC."""

__all__: list[str] = []
