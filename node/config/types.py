"""Value types shared by the `node.toml` sections: durations and network addresses.

Durations are strings with a unit ("10s", "1500ms", "2m", "1h"); they become float seconds.
Addresses are "host:port" strings; IPv6 hosts go in brackets ("[::1]:8080").
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator, PlainSerializer

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: object) -> float:
    """Turn "10s" / "1500ms" / "2m" / "1h" into seconds."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"{value!r} is not a duration (expected a string such as \"10s\" or \"1500ms\")")
    if isinstance(value, (int, float)):
        raise ValueError(f"{value!r} has no unit (write it as \"{value}s\" or \"{value}ms\")")
    match = _DURATION.match(value)
    if not match:
        raise ValueError(f"{value!r} is not a duration (expected a number and a unit: ms, s, m or h)")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def format_duration(seconds: float) -> str:
    if seconds < 1 and seconds != 0:
        return f"{round(seconds * 1000)}ms"
    return f"{seconds:g}s"


Duration = Annotated[float, BeforeValidator(parse_duration), PlainSerializer(format_duration, return_type=str, when_used="json")]
"""Seconds, written in `node.toml` as a string with a unit."""


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)\s*$")
_SIZE_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
               "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}


def parse_size(value: object) -> int:
    """Turn "8GiB" / "512MB" / a byte count into bytes."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a size")
    if isinstance(value, int):
        return value
    match = _SIZE.match(value) if isinstance(value, str) else None
    if not match:
        raise ValueError(f"{value!r} is not a size (expected a number and a unit, e.g. \"8GiB\" or \"512MB\")")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])


def format_size(size: int) -> str:
    for unit in ("TiB", "GiB", "MiB", "KiB"):
        if size and size % _SIZE_UNITS[unit] == 0:
            return f"{size // _SIZE_UNITS[unit]}{unit}"
    return f"{size}B"


ByteSize = Annotated[int, BeforeValidator(parse_size), PlainSerializer(format_size, return_type=str, when_used="json")]
"""Bytes, written in `node.toml` as a string with a unit ("8GiB")."""


def split_host_port(value: str) -> tuple[str, int]:
    """Split "host:port" / "[v6]:port"; raises ValueError with the reason."""
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not an address (expected \"host:port\")")
    text = value.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"{value!r} is not an address (expected \"[ipv6]:port\")")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError(f"{value!r} has no port (expected host:port)")
    if not host:
        raise ValueError(f"{value!r} has no host (expected host:port)")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"{value!r} has a bad port {port_text!r} (expected 0-65535)")
    return host, int(port_text)


def _check_address(value: str) -> str:
    split_host_port(value)
    return value.strip()


Address = Annotated[str, AfterValidator(_check_address)]
"""A "host:port" string."""


def _absolute(path: Path) -> Path:
    try:
        return path.expanduser().absolute()
    except RuntimeError:  # "~someone/...": no such user, or no home to expand
        raise ValueError(f"{str(path)!r}: cannot expand {path.parts[0]!r} (no such user's home folder)") from None


LocalPath = Annotated[Path, AfterValidator(_absolute)]
"""A filesystem path; relative ones are taken from the working directory at start-up and made absolute."""


def join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def connect_host(host: str) -> str:
    """The address to dial for a listen host: a wildcard bind is reached on loopback."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
