"""The PyInstaller binary, built once per test session from the current sources (`make binary`;
make skips the build when dist/cynode is newer than every source file)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BUILD_TIMEOUT_S = 45 * 60


def build(target: str = "binary") -> Path:
    started = time.monotonic()
    result = subprocess.run(["make", "-C", str(REPO), target], capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    if result.returncode != 0:
        raise AssertionError(f"make {target} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    print(f"make {target}: {time.monotonic() - started:.0f}s")
    return REPO / "dist" / ("cynode" if target == "binary" else "cynode-slim")
