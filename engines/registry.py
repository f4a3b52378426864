"""The model registry: which models a worker may serve, read from `models.json`.

`[worker] model_registry` (or MODEL_REGISTRY_PATH) points at a file shaped like

    {"models": [
      {"id": "tiny-a", "aliases": ["a"], "source": {"path": "/models/tiny-a"}, "engine": "transformers",
       "dtype": "float32", "context_length": 2048, "tags": ["chat"],
       "default_sampling": {"temperature": 0.7, "max_tokens": 256}},
      {"id": "qwen-gguf", "source": {"gguf": "/models/q.gguf"}},
      {"id": "smollm2-135m-instruct", "source": "builtin"}
    ]}

A source is `"builtin"` (only for the built-in model's id), `{"path": <folder with config.json>}` or
`{"gguf": <file.gguf>}`; relative paths are relative to the file's own folder. The built-in
SmolLM2-135M-Instruct is always present, with its aliases, whether or not the file lists it; an entry
with its id replaces the default settings (tags, sampling, engine...).

Validation reads the whole file before it complains: every problem becomes one line of the
`ConfigError`, naming the JSON path (`models[2].source`) and what to do, so a user fixes a file in
one pass. Nothing here imports torch: the registry is read by nodes that never load a model.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from cynode.engines.builtin_model import BUILTIN_ALIASES, BUILTIN_MODEL_ID
from cynode.engines.platform import BACKENDS
from cynode.errors import ConfigError, EngineError
from cynode.sampling import RULES, SamplingParams, check_stop, check_value

ENGINES = ("transformers", "vllm", "sim", "embedding")  # "embedding": a sentence-transformers folder
SOURCE_KINDS = ("builtin", "folder", "gguf", "none", "adapter")
# "auto": the backend's own default (float32 on CPU for transformers, the checkpoint's dtype for vLLM).
DTYPES = ("auto", "float32", "bfloat16", "float16")
FIELDS = ("id", "aliases", "source", "engine", "backend", "dtype", "context_length", "tags", "default_sampling")
@dataclass(frozen=True)
class ModelSpec:
    """One model a worker may serve, as the registry describes it (nothing loaded)."""

    id: str
    aliases: tuple[str, ...] = ()
    source_kind: str = "builtin"  # "builtin" | "folder" | "gguf" | "none" | "adapter"
    path: Path | None = None  # the folder or the .gguf file; None for the built-in (the worker converts it)
    engine: str = "transformers"  # "transformers" | "vllm" | "sim"
    backend: str | None = None  # an explicit backend name, overriding the worker's `[worker] backend`
    dtype: str = "auto"
    context_length: int | None = None  # None: what the model's config says
    tags: tuple[str, ...] = ()
    default_sampling: SamplingParams = field(default_factory=SamplingParams, hash=False)
    # A fine-tuned LoRA adapter (source_kind "adapter", `path` its folder) names the base model it
    # runs on; the MemoryManager serves it from that model's engine. None for every other model.
    base: str | None = None

    @property
    def names(self) -> tuple[str, ...]:
        return (self.id, *self.aliases)


def builtin_spec() -> ModelSpec:
    return ModelSpec(id=BUILTIN_MODEL_ID, aliases=BUILTIN_ALIASES, source_kind="builtin", tags=("chat",))


def builtin_embedding_spec() -> ModelSpec | None:
    """The built-in embedding model (all-MiniLM-L6-v2 from its wheel), or None without the wheel."""
    from cynode.engines.embedding_model import BUILTIN_EMBEDDING_ALIASES, BUILTIN_EMBEDDING_ID, find_embedding_model

    folder = find_embedding_model()
    if folder is None:
        return None
    return ModelSpec(id=BUILTIN_EMBEDDING_ID, aliases=BUILTIN_EMBEDDING_ALIASES, source_kind="folder", path=folder,
                     engine="embedding", tags=("embedding",))


def sim_spec() -> ModelSpec:
    """What a worker whose backend is `sim` serves: the model "sim", with no weights."""
    return ModelSpec(id="sim", engine="sim", source_kind="none")


class ModelRegistry:
    """The models of one `models.json` (plus the built-in), looked up by id or alias."""

    def __init__(self, specs: Iterable[ModelSpec], *, source: Path | None = None, builtin: bool = True) -> None:
        self.source = source
        self._specs = tuple(specs)
        self._by_name: dict[str, ModelSpec] = {}
        for spec in self._specs:
            for name in spec.names:
                if name in self._by_name and self._by_name[name] is not spec:
                    raise ValueError(f"model name {name!r} is used twice")
                self._by_name[name] = spec
        if builtin and BUILTIN_MODEL_ID not in self._by_name:
            builtin = builtin_spec()
            self._specs = (builtin, *self._specs)
            for name in builtin.names:
                self._by_name.setdefault(name, builtin)
        # The built-in embedding model is served next to the chat model unless a name of it is taken.
        embedding = builtin_embedding_spec() if builtin else None
        if embedding is not None and not any(name in self._by_name for name in embedding.names):
            self._specs = (*self._specs, embedding)
            for name in embedding.names:
                self._by_name[name] = embedding

    @classmethod
    def load(cls, path: Path | None) -> ModelRegistry:
        """Read and validate `path`; None gives a registry with only the built-in model.

        Raises ConfigError with one line per problem found anywhere in the file.
        """
        if path is None:
            return cls(())
        path = Path(path).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(str(path), [f"cannot read the model registry: {exc.strerror or exc}"]) from exc
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(str(path), [f"not valid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"]) from exc
        specs, problems = _parse(data, path.parent)
        if problems:
            raise ConfigError(str(path), problems)
        return cls(specs, source=path)

    @property
    def specs(self) -> tuple[ModelSpec, ...]:
        return self._specs

    def resolve(self, name: str) -> ModelSpec | None:
        """The model whose id or alias is `name`, or None."""
        return self._by_name.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def version_of(self, spec: ModelSpec) -> str:
        """A short hash of the spec and its source files' sizes and mtimes: part of the prompt-cache key.

        Stable while nothing changes; a rewritten weight file or an edited entry gives a new one.
        """
        described = {f.name: _jsonable(getattr(spec, f.name)) for f in fields(spec)}
        digest = hashlib.sha256(json.dumps([described, source_fingerprint(spec)], sort_keys=True).encode())
        return digest.hexdigest()[:16]


def source_fingerprint(spec: ModelSpec) -> list[tuple[str, int, int]]:
    """(file, size, mtime_ns) of every file the model is loaded from; stat only, so cheap."""
    if spec.source_kind == "builtin":
        from cynode.engines.builtin_model import find_gguf

        try:
            root, files = None, [find_gguf()]
        except EngineError:  # the wheel is missing: loading will say so; the version stays stable
            return []
    elif spec.path is None:
        return []
    elif spec.path.is_dir():
        root = spec.path
        files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    else:
        root, files = None, [spec.path]
    out = []
    for file in files:
        try:
            st = file.stat()
        except OSError:  # removed while we looked: the next call sees the new state
            continue
        name = str(file.relative_to(root)) if root else file.name
        out.append((name, st.st_size, st.st_mtime_ns))
    return out


# parsing -----------------------------------------------------------------------------------------

def _parse(data: Any, base: Path) -> tuple[list[ModelSpec], list[str]]:
    if not isinstance(data, dict):
        return [], [f'the top level must be an object with a "models" list, got {_kind(data)}']
    problems = [f'unknown top-level key "{k}" (expected only "models")' for k in data if k != "models"]
    models = data.get("models")
    if not isinstance(models, list):
        what = "missing" if "models" not in data else f"{_kind(models)}, not a list"
        return [], problems + [f'"models" is {what}: expected a list of model entries']
    specs: list[ModelSpec] = []
    owner: dict[str, str] = {}  # name -> where it was first defined, for duplicate messages
    for i, entry in enumerate(models):
        where = f"models[{i}]"
        spec = _parse_entry(entry, where, base, problems)
        if spec is None:
            continue
        clash = False
        for kind, name in (("id", spec.id), *(("alias", a) for a in spec.aliases)):
            if name in owner:
                problems.append(f'{where}: {kind} "{name}" is already used by {owner[name]}; '
                                "ids and aliases must be unique across the file")
                clash = True
            else:
                owner[name] = f'{where} ("{spec.id}")'
        if not clash:
            specs.append(spec)
    # The built-in's aliases belong to it unless the file redefines the built-in itself.
    if BUILTIN_MODEL_ID not in owner:
        for alias in BUILTIN_ALIASES:
            if alias in owner:
                problems.append(f'{owner[alias].split(" ")[0]}: "{alias}" is an alias of the built-in model '
                                f"{BUILTIN_MODEL_ID}; pick another name")
    else:
        specs = [_with_builtin_aliases(s, owner) if s.id == BUILTIN_MODEL_ID else s for s in specs]
    return specs, problems


def _with_builtin_aliases(spec: ModelSpec, owner: dict[str, str]) -> ModelSpec:
    extra = tuple(a for a in BUILTIN_ALIASES if a not in spec.aliases and a not in owner)
    return ModelSpec(**{**{f.name: getattr(spec, f.name) for f in fields(spec)}, "aliases": spec.aliases + extra})


def _parse_entry(entry: Any, where: str, base: Path, problems: list[str]) -> ModelSpec | None:
    if not isinstance(entry, dict):
        problems.append(f"{where}: expected an object, got {_kind(entry)}")
        return None
    before = len(problems)
    for key in entry:
        if key not in FIELDS:
            problems.append(f'{where}: unknown field "{key}" (known: {", ".join(FIELDS)})')
    model_id = entry.get("id")
    if "id" not in entry:
        problems.append(f'{where}: missing "id" (the name clients put in "model")')
    elif not isinstance(model_id, str) or not model_id.strip():
        problems.append(f"{where}.id: must be a non-empty string, got {model_id!r}")
    aliases = _strings(entry, "aliases", where, problems)
    tags = _strings(entry, "tags", where, problems)
    kind, path = _parse_source(entry, where, base, model_id, problems)
    engine = entry.get("engine", "transformers")
    if engine not in ENGINES:
        problems.append(f'{where}.engine: unknown engine {engine!r} (expected one of {", ".join(ENGINES)})')
    backend = entry.get("backend")
    if backend is not None:
        if backend not in BACKENDS or backend == "auto":
            problems.append(f"{where}.backend: unknown backend {backend!r} (expected one of {', '.join(BACKENDS)})")
        elif engine in ENGINES and _engine_of(backend) != engine:
            problems.append(f'{where}.backend: backend "{backend}" does not run engine "{engine}"')
    dtype = entry.get("dtype", "auto")
    if dtype not in DTYPES:
        problems.append(f'{where}.dtype: unknown dtype {dtype!r} (expected one of {", ".join(DTYPES)})')
    context = entry.get("context_length")
    if context is not None and (isinstance(context, bool) or not isinstance(context, int) or context < 1):
        problems.append(f"{where}.context_length: must be a positive integer, got {context!r}")
    sampling = _parse_sampling(entry.get("default_sampling", {}), f"{where}.default_sampling", problems)
    if len(problems) > before:
        return None
    return ModelSpec(id=model_id, aliases=aliases, source_kind=kind, path=path, engine=engine, backend=backend,
                     dtype=dtype, context_length=context, tags=tags, default_sampling=sampling)


def _parse_source(entry: dict, where: str, base: Path, model_id: Any, problems: list[str]) -> tuple[str, Path | None]:
    where = f"{where}.source"
    source = entry.get("source")
    hint = '"builtin", {"path": "<model folder>"} or {"gguf": "<file.gguf>"}'
    if source is None and entry.get("engine") == "sim":
        return "none", None  # the benchmarking engine has no weights
    if source is None:
        problems.append(f"{where}: missing (expected {hint})")
        return "", None
    if source == "builtin":
        if model_id != BUILTIN_MODEL_ID:
            problems.append(f'{where}: "builtin" is only the source of {BUILTIN_MODEL_ID}, not of {model_id!r}')
        return "builtin", None
    if not isinstance(source, dict) or len(source) != 1 or next(iter(source)) not in ("path", "gguf"):
        problems.append(f"{where}: unknown kind of source {json.dumps(source)} (expected {hint})")
        return "", None
    (key, value), = source.items()
    if not isinstance(value, str) or not value:
        problems.append(f"{where}.{key}: must be a path, got {value!r}")
        return "", None
    path = Path(value).expanduser()
    path = path if path.is_absolute() else base / path
    if key == "path":
        if path.is_file() and path.suffix == ".gguf":
            problems.append(f'{where}.path: {path} is a GGUF file; write {{"gguf": "{value}"}}')
        elif not path.is_dir():
            problems.append(f"{where}.path: {path} is not a folder")
        elif not (path / "config.json").is_file():
            problems.append(f"{where}.path: {path} has no config.json (not a model folder)")
        return "folder", path
    if path.suffix.lower() != ".gguf":
        problems.append(f"{where}.gguf: {path} is not a .gguf file")
    elif not path.is_file():
        problems.append(f"{where}.gguf: {path} does not exist")
    return "gguf", path


def _parse_sampling(value: Any, where: str, problems: list[str]) -> SamplingParams:
    if not isinstance(value, dict):
        problems.append(f"{where}: must be an object, got {_kind(value)}")
        return SamplingParams()
    known = (*RULES, "stop")
    ok = True
    for key, v in value.items():
        if key not in known:
            problems.append(f'{where}: unknown key "{key}" (known: {", ".join(known)})')
        elif (bad := (_stop_problem(v) if key == "stop" else check_value(key, v))) is not None:
            problems.append(f"{where}.{key}: {bad[1]}, got {v!r}")
        else:
            continue
        ok = False
    return SamplingParams.from_mapping(value) if ok else SamplingParams()


def _stop_problem(value: Any) -> tuple[str, str] | None:
    bad = check_stop(value)
    return None if bad is None else (bad[0], bad[2] if bad[1] == "stop" else f"{bad[1]} {bad[2]}")  # (code, rule)


def _strings(entry: dict, key: str, where: str, problems: list[str]) -> tuple[str, ...]:
    value = entry.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        problems.append(f"{where}.{key}: must be a list of non-empty strings, got {value!r}")
        return ()
    return tuple(value)


def _engine_of(backend: str) -> str:
    return "sim" if backend == "sim" else backend.rsplit("-", 1)[-1]


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, SamplingParams):
        return value.given()
    if isinstance(value, Mapping):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    return value
