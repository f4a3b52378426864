"""Where chaos scenarios leave their figures for `make report` (a module of its own: `conftest`
names more than one module in this suite)."""

from __future__ import annotations

import json
import os
from pathlib import Path


def keep(name: str, data: dict) -> None:
    """Write a scenario's figures to $CHAOS_OUT/<name>.json (for `make report`)."""
    out = os.environ.get("CHAOS_OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / f"{name}.json").write_text(json.dumps(data, indent=1, default=str))
