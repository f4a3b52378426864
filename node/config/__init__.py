"""The `node.toml` model (one frozen section per table) and its loader."""

from .explain import explain
from .loader import load_config
from .sections import NodeConfig, StaticWorker
from .types import (
    Address,
    Duration,
    connect_host,
    join_host_port,
    parse_duration,
    split_host_port,
)

__all__ = [
    "Address",
    "Duration",
    "NodeConfig",
    "StaticWorker",
    "connect_host",
    "explain",
    "join_host_port",
    "load_config",
    "parse_duration",
    "split_host_port",
]
