"""What this `cynode` is: version, commit and the engines it can run (`cynode --version`).

A PyInstaller binary carries `_build_info.json` (written by packaging/cynode.spec: flavor, commit,
build time). A source checkout asks git for the commit. The engines are what can be imported here,
found without importing them (so `--version` stays instant and never loads torch): `sim` always,
`transformers` with torch and transformers, `vllm` with vLLM.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from . import __version__

_HERE = Path(__file__).resolve().parent
_ENGINES = {"transformers": ("torch", "transformers"), "vllm": ("vllm",)}


def build_info() -> dict[str, Any]:
    info: dict[str, Any] = {"version": __version__, "flavor": "source", "commit": None, "built": None}
    try:
        info.update(json.loads((_HERE / "_build_info.json").read_text()))
    except (OSError, ValueError):
        info["commit"] = _git_commit()
    info["version"] = __version__
    info["frozen"] = bool(getattr(sys, "frozen", False))
    info["engines"] = engines_present()
    return info


def engines_present() -> list[str]:
    return ["sim"] + [name for name, modules in _ENGINES.items() if all(_findable(m) for m in modules)]


def version_text() -> str:
    info = build_info()
    flavor = f", {info['flavor']} build {info['built']}" if info.get("built") else ""
    return (f"cynode {info['version']} (commit {info['commit'] or 'unknown'}{flavor})\n"
            f"engines: {', '.join(info['engines'])}")


def _findable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _git_commit() -> str | None:
    """The checkout's commit, when this package runs from one (an editable install)."""
    root = _HERE.parent
    if not (root / ".git").exists():
        return None
    try:
        result = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                                text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None
