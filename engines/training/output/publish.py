"""Publishing: an adapter folder copied into a versioned store, one new version per publish.

`<store>/<adapter_id>/<version>/` with versions 1, 2, 3, ... Each version is complete when it
appears (atomic rename) and never changes after. Publishing the same job's adapter again (a worker
that crashed after publishing, before reporting it) returns the version it already made instead of
adding another.
"""

from __future__ import annotations

import fcntl
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from cynode.errors import TrainingError

from .atomic import atomic_folder
from .manifest import verify_manifest
from .rules import check_adapter

_ID = re.compile(r"^[A-Za-z0-9._:-]+$")


@dataclass(frozen=True)
class PublishedAdapter:
    adapter_id: str
    version: int
    path: Path
    manifest: dict


def versions(store: str | Path, adapter_id: str) -> list[int]:
    folder = Path(store) / adapter_id
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())


def publish_adapter(adapter_dir: str | Path, store: str | Path, adapter_id: str, *,
                    max_lora_rank: int = 16, for_vllm: bool = True) -> PublishedAdapter:
    """Check (manifest hashes, serving rules) and copy `adapter_dir` in as the next version."""
    if not _ID.match(adapter_id) or adapter_id in (".", ".."):
        raise TrainingError(f"adapter id {adapter_id!r} (expected letters, digits and . _ : -)", code="invalid_job")
    manifest = verify_manifest(adapter_dir)
    check_adapter(adapter_dir, max_lora_rank=max_lora_rank, for_vllm=for_vllm)
    folder = Path(store) / adapter_id
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            for version in reversed(versions(store, adapter_id)):
                existing = verify_manifest(folder / str(version))
                if existing.get("job_id") == manifest.get("job_id") and existing["files"] == manifest["files"]:
                    return PublishedAdapter(adapter_id, version, folder / str(version), existing)
            version = (versions(store, adapter_id) or [0])[-1] + 1
            with atomic_folder(folder / str(version)) as tmp:
                for item in Path(adapter_dir).iterdir():
                    if item.is_file():
                        shutil.copy2(item, tmp / item.name)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return PublishedAdapter(adapter_id, version, folder / str(version), manifest)
