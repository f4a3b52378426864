"""Training output: the adapter folder and its manifest, serving rules, versioned publishing, merging."""

from .adapter import adapter_dir, write_adapter
from .atomic import atomic_folder
from .manifest import MANIFEST, base_model_version, file_hashes, read_manifest, sha256_file, verify_manifest
from .merge import merge_adapter
from .publish import PublishedAdapter, publish_adapter, versions
from .rules import adapter_problems, check_adapter

__all__ = [
    "MANIFEST",
    "PublishedAdapter",
    "adapter_dir",
    "adapter_problems",
    "atomic_folder",
    "base_model_version",
    "check_adapter",
    "file_hashes",
    "merge_adapter",
    "publish_adapter",
    "read_manifest",
    "sha256_file",
    "verify_manifest",
    "versions",
    "write_adapter",
]
