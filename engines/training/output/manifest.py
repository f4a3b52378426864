"""The adapter manifest: what was trained, from what, and the sha256 of every file beside it.

Serving workers check the hashes before they load a published adapter, so a half-copied or altered
folder is refused rather than served.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cynode.errors import TrainingError

MANIFEST = "manifest.json"
SCHEMA = "cynode.adapter/1"
_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_hashes(folder: Path) -> dict[str, dict[str, Any]]:
    """sha256 and size of every file in the folder (recursively), the manifest itself excluded."""
    out = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel != MANIFEST:
            out[rel] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    return out


def base_model_version(model_dir: str | Path) -> str:
    """A cheap identity of a model folder: sha256 of its config and of its weight files' names and sizes."""
    folder = Path(model_dir)
    digest = hashlib.sha256()
    config = folder / "config.json"
    if config.is_file():
        digest.update(config.read_bytes())
    for path in sorted(folder.glob("*.safetensors")):
        digest.update(f"{path.name}:{path.stat().st_size}\n".encode())
    return "sha256:" + digest.hexdigest()[:16]


def write_manifest(folder: Path, fields: dict[str, Any]) -> dict[str, Any]:
    manifest = {
        "schema": SCHEMA,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        **fields,
        "files": file_hashes(folder),
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    return manifest


def read_manifest(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / MANIFEST
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise TrainingError(f"{path}: no manifest", code="bad_adapter") from None
    except json.JSONDecodeError as exc:
        raise TrainingError(f"{path}: not valid JSON ({exc.msg})", code="bad_adapter") from None


def verify_manifest(folder: str | Path) -> dict[str, Any]:
    """The manifest, after checking every listed file's hash; TrainingError on any mismatch."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    files = manifest.get("files") or {}
    if not files:
        raise TrainingError(f"{folder / MANIFEST}: lists no files", code="bad_adapter")
    for rel, entry in files.items():
        path = folder / rel
        if not path.is_file():
            raise TrainingError(f"{folder}: {rel} is listed in the manifest but missing", code="bad_adapter")
        if sha256_file(path) != entry.get("sha256"):
            raise TrainingError(f"{folder}: {rel} does not match its sha256 in the manifest", code="bad_adapter")
    return manifest
