"""models.json: what a user may write, and the error each mistake gets."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cynode.engines.embedding_model import BUILTIN_EMBEDDING_ID, EMBEDDING_WHEEL, find_embedding_model

from cynode.engines.builtin_model import BUILTIN_ALIASES, BUILTIN_MODEL_ID
from cynode.engines.registry import ModelRegistry, ModelSpec
from cynode.sampling import SamplingParams
from cynode.errors import ConfigError


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A model folder as far as the registry cares: one with a config.json and a weight file."""
    path = tmp_path / "tiny-a"
    path.mkdir()
    (path / "config.json").write_text('{"dtype": "float32"}')
    (path / "model.safetensors").write_bytes(b"\0" * 64)
    return path


@pytest.fixture
def gguf(tmp_path: Path) -> Path:
    path = tmp_path / "q.Q4_K_M.gguf"
    path.write_bytes(b"GGUF")
    return path


def write(tmp_path: Path, data) -> Path:
    path = tmp_path / "models.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        ModelRegistry.load(path)
    assert info.value.source == str(path)
    return info.value.problems


def test_a_full_registry_loads_every_kind_of_source(tmp_path, folder, gguf):
    path = write(tmp_path, {"models": [
        {"id": "tiny-a", "aliases": ["a"], "source": {"path": str(folder)}, "engine": "transformers",
         "dtype": "float32", "context_length": 2048, "tags": ["chat"],
         "default_sampling": {"temperature": 0.7, "max_tokens": 256}},
        {"id": "qwen-gguf", "source": {"gguf": gguf.name}, "engine": "transformers"},  # relative to the file
        {"id": BUILTIN_MODEL_ID, "source": "builtin", "tags": ["default"]},
    ]})
    registry = ModelRegistry.load(path)
    a = registry.resolve("a")
    assert a.id == "tiny-a" and a.source_kind == "folder" and a.path == folder and a.context_length == 2048
    assert registry.resolve("qwen-gguf").source_kind == "gguf" and registry.resolve("qwen-gguf").path == gguf
    builtin = registry.resolve(BUILTIN_MODEL_ID)
    assert builtin.tags == ("default",) and set(BUILTIN_ALIASES) <= set(builtin.aliases)
    assert [s.id for s in registry.specs] == ["tiny-a", "qwen-gguf", BUILTIN_MODEL_ID, *EMBEDDER]


def test_the_built_in_model_is_there_without_a_file_and_when_the_file_does_not_list_it(tmp_path, folder):
    assert [s.id for s in ModelRegistry.load(None).specs] == [BUILTIN_MODEL_ID, *EMBEDDER]
    registry = ModelRegistry.load(write(tmp_path, {"models": [{"id": "tiny-a", "source": {"path": str(folder)}}]}))
    assert registry.resolve(BUILTIN_MODEL_ID).source_kind == "builtin"
    for alias in BUILTIN_ALIASES:
        assert registry.resolve(alias).id == BUILTIN_MODEL_ID


# The built-in embedding model is served when its wheel is installed (it is, with cynode[cpu]).
EMBEDDER = [BUILTIN_EMBEDDING_ID] if find_embedding_model() else []


@pytest.mark.skipif(not EMBEDDER, reason=f"the {EMBEDDING_WHEEL} wheel is not installed")
def test_the_built_in_embedding_model_is_served_from_its_wheel_unless_the_file_takes_its_name(tmp_path, folder):
    spec = ModelRegistry.load(None).resolve("sentence-transformers/all-MiniLM-L6-v2")
    assert spec.id == BUILTIN_EMBEDDING_ID and spec.engine == "embedding" and (spec.path / "config.json").is_file()
    mine = ModelRegistry.load(write(tmp_path, {"models": [
        {"id": "all-MiniLM-L6-v2", "source": {"path": str(folder)}, "engine": "embedding"}]}))
    assert mine.resolve("all-MiniLM-L6-v2").path == folder and BUILTIN_EMBEDDING_ID not in mine


def test_a_sim_only_registry_can_leave_the_built_in_model_out():
    registry = ModelRegistry([ModelSpec(id="sim", engine="sim")], builtin=False)
    assert [s.id for s in registry.specs] == ["sim"] and registry.resolve(BUILTIN_MODEL_ID) is None


def test_aliases_resolve_to_their_model_and_unknown_names_to_none(tmp_path, folder):
    registry = ModelRegistry.load(write(tmp_path, {"models": [
        {"id": "tiny-a", "aliases": ["a", "the-a"], "source": {"path": str(folder)}}]}))
    assert registry.resolve("a") is registry.resolve("the-a") is registry.resolve("tiny-a")
    assert registry.resolve("tiny-b") is None


BAD = [
    ("not json", '{"models": [', "not valid JSON at line 1 column"),
    ("top level a list", [], 'the top level must be an object with a "models" list'),
    ("no models list", {"model": []}, '"models" is missing'),
    ("models not a list", {"models": {}}, '"models" is an object, not a list'),
    ("missing id", {"models": [{"source": "builtin"}]}, 'models[0]: missing "id"'),
    ("duplicate id", {"models": [{"id": "x", "source": {"path": "{folder}"}}, {"id": "x", "source": {"path": "{folder}"}}]},
     'models[1]: id "x" is already used by models[0] ("x")'),
    ("duplicate alias", {"models": [{"id": "x", "aliases": ["a"], "source": {"path": "{folder}"}},
                                    {"id": "y", "aliases": ["a"], "source": {"path": "{folder}"}}]},
     'models[1]: alias "a" is already used by models[0] ("x")'),
    ("alias equal to another id", {"models": [{"id": "x", "source": {"path": "{folder}"}},
                                              {"id": "y", "aliases": ["x"], "source": {"path": "{folder}"}}]},
     'models[1]: alias "x" is already used by models[0]'),
    ("built-in alias taken", {"models": [{"id": "x", "aliases": [BUILTIN_ALIASES[0]], "source": {"path": "{folder}"}}]},
     f'models[0]: "{BUILTIN_ALIASES[0]}" is an alias of the built-in model'),
    ("unknown source kind", {"models": [{"id": "x", "source": {"hub": "org/name"}}]}, "models[0].source: unknown kind of source"),
    ("missing source", {"models": [{"id": "x"}]}, "models[0].source: missing"),
    ("builtin source for another id", {"models": [{"id": "x", "source": "builtin"}]}, '"builtin" is only the source of'),
    ("folder without config.json", {"models": [{"id": "x", "source": {"path": "{tmp}"}}]}, "has no config.json"),
    ("folder that does not exist", {"models": [{"id": "x", "source": {"path": "nowhere"}}]}, "is not a folder"),
    ("gguf file missing", {"models": [{"id": "x", "source": {"gguf": "gone.gguf"}}]}, "models[0].source.gguf:"),
    ("gguf not a .gguf", {"models": [{"id": "x", "source": {"gguf": "{folder}/config.json"}}]}, "is not a .gguf file"),
    ("unknown engine", {"models": [{"id": "x", "source": {"path": "{folder}"}, "engine": "llamacpp"}]},
     "models[0].engine: unknown engine 'llamacpp'"),
    ("backend of another engine", {"models": [{"id": "x", "source": {"path": "{folder}"}, "backend": "cpu-vllm"}]},
     'models[0].backend: backend "cpu-vllm" does not run engine "transformers"'),
    ("unknown field", {"models": [{"id": "x", "source": {"path": "{folder}"}, "quantize": True}]},
     'models[0]: unknown field "quantize"'),
    ("bad dtype", {"models": [{"id": "x", "source": {"path": "{folder}"}, "dtype": "fp8"}]}, "models[0].dtype: unknown dtype 'fp8'"),
    ("context length zero", {"models": [{"id": "x", "source": {"path": "{folder}"}, "context_length": 0}]},
     "models[0].context_length: must be a positive integer"),
    ("context length a string", {"models": [{"id": "x", "source": {"path": "{folder}"}, "context_length": "4k"}]},
     "models[0].context_length: must be a positive integer"),
    ("sampling with an unknown key", {"models": [{"id": "x", "source": {"path": "{folder}"}, "default_sampling": {"temp": 1}}]},
     'models[0].default_sampling: unknown key "temp"'),
    ("temperature above 2", {"models": [{"id": "x", "source": {"path": "{folder}"}, "default_sampling": {"temperature": 3}}]},
     "models[0].default_sampling.temperature: must be between 0 and 2"),
    ("top_p of zero", {"models": [{"id": "x", "source": {"path": "{folder}"}, "default_sampling": {"top_p": 0}}]},
     "models[0].default_sampling.top_p: must be greater than 0 and at most 1"),
    ("max_tokens of zero", {"models": [{"id": "x", "source": {"path": "{folder}"}, "default_sampling": {"max_tokens": 0}}]},
     "models[0].default_sampling.max_tokens: must be at least 1"),
]


@pytest.mark.parametrize("data, expected", [pytest.param(d, e, id=i) for i, d, e in BAD])
def test_a_bad_models_json_is_refused_with_an_error_naming_where_and_why(tmp_path, folder, data, expected):
    text = data if isinstance(data, str) else json.dumps(data)
    text = text.replace("{folder}", str(folder)).replace("{tmp}", str(tmp_path))
    problems = problems_of(write(tmp_path, text))
    assert any(expected in line for line in problems), problems


def test_every_problem_in_a_file_is_reported_at_once(tmp_path, folder):
    problems = problems_of(write(tmp_path, {"models": [
        {"id": "x", "source": {"path": str(folder)}, "dtype": "fp8"},
        {"source": {"path": str(folder)}},
        {"id": "y", "source": {"path": str(folder)}, "engine": "nope", "context_length": -1},
    ]}))
    assert len(problems) == 4
    assert [line.split(":")[0] for line in problems] == ["models[0].dtype", "models[1]", "models[2].engine",
                                                        "models[2].context_length"]


def test_the_error_message_starts_each_line_with_the_file(tmp_path):
    path = write(tmp_path, {"models": [{"id": "x"}]})
    with pytest.raises(ConfigError) as info:
        ModelRegistry.load(path)
    assert str(info.value).startswith(f"{path}: models[0].source: missing")


def test_the_version_is_stable_and_changes_when_a_weight_file_changes(tmp_path, folder):
    registry = ModelRegistry.load(write(tmp_path, {"models": [{"id": "tiny-a", "source": {"path": str(folder)}}]}))
    spec = registry.resolve("tiny-a")
    first = registry.version_of(spec)
    assert registry.version_of(spec) == first and len(first) == 16
    weights = folder / "model.safetensors"
    weights.write_bytes(b"\1" * 65)
    os.utime(weights, ns=(10**18, 10**18))
    assert registry.version_of(spec) != first


def test_the_version_changes_when_the_entry_changes(tmp_path, folder):
    entry = {"id": "tiny-a", "source": {"path": str(folder)}}
    before = ModelRegistry.load(write(tmp_path, {"models": [entry]}))
    after = ModelRegistry.load(write(tmp_path, {"models": [{**entry, "dtype": "bfloat16"}]}))
    assert before.version_of(before.resolve("tiny-a")) != after.version_of(after.resolve("tiny-a"))


def test_a_model_default_sampling_applies_unless_the_request_sets_its_own(tmp_path, folder):
    registry = ModelRegistry.load(write(tmp_path, {"models": [
        {"id": "tiny-a", "source": {"path": str(folder)},
         "default_sampling": {"temperature": 0.7, "max_tokens": 256, "stop": "\n"}}]}))
    spec = registry.resolve("tiny-a")
    merged = SamplingParams(temperature=0.0).over(spec.default_sampling).resolved()
    assert (merged.temperature, merged.max_tokens, merged.top_p, merged.stop) == (0.0, 256, 1.0, ("\n",))
    assert SamplingParams().resolved().temperature == 1.0
