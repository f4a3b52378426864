"""The API-key file: what an operator sees for a bad file, and what a caller sees for a bad key."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from cynode.errors import AuthError, ConfigError
from cynode.api_keys import (
    ApiKey,
    ApiKeyStore,
    ensure_api_keys_file,
    generate_key,
    key_digest,
    require,
)

OPS_KEY = "sk-cynode-ops-0123456789abcdef"
READER_KEY = "sk-cynode-reader-fedcba9876543210"


def write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    os.chmod(path, mode)
    return path


def load_text(tmp_path: Path, text: str, mode: int = 0o600) -> ApiKeyStore:
    return ApiKeyStore.load(write(tmp_path / "api-keys.toml", text, mode))


def problems_of(tmp_path: Path, text: str, mode: int = 0o600) -> str:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text, mode)
    return str(info.value)


@pytest.fixture
def store(tmp_path: Path) -> ApiKeyStore:
    return load_text(tmp_path, f"""
[[keys]]
name = "ops"
key = "{OPS_KEY}"
scopes = ["inference", "training", "admin"]
requests_per_minute = 600
tokens_per_minute = 200000
priority = 5

[[keys]]
name = "reader"
sha256 = "{hashlib.sha256(READER_KEY.encode()).hexdigest().upper()}"
models = ["smollm2*", "qwen-?b"]
""")


# --- loading ----------------------------------------------------------------------------------

def test_a_valid_file_loads_every_field(store: ApiKeyStore):
    ops, reader = store.keys
    assert ops == ApiKey(name="ops", scopes=frozenset({"inference", "training", "admin"}), models=("*",),
                         requests_per_minute=600, tokens_per_minute=200000, priority=5)
    assert reader == ApiKey(name="reader", scopes=frozenset({"inference"}), models=("smollm2*", "qwen-?b"),
                            requests_per_minute=None, tokens_per_minute=None, priority=None)


def test_clear_keys_are_not_kept_in_memory(store: ApiKeyStore):
    assert OPS_KEY not in repr(vars(store)) and OPS_KEY not in repr(store.keys)


def test_a_bad_scope_names_the_entry_and_field(tmp_path: Path):
    text = problems_of(tmp_path, """
[[keys]]
name = "a"
key = "k1"
[[keys]]
name = "b"
key = "k2"
[[keys]]
name = "c"
key = "k3"
scopes = ["inference", "root"]
""")
    assert "keys[2].scopes" in text and "'root'" in text and "inference, training, admin" in text
    assert str(tmp_path / "api-keys.toml") in text


def test_every_bad_entry_is_reported_at_once(tmp_path: Path):
    text = problems_of(tmp_path, """
[[keys]]
name = "a"
key = "k1"
priority = "high"
[[keys]]
name = "b"
key = "k2"
requests_per_minute = 0
""")
    assert "keys[0].priority: must be an integer" in text
    assert "keys[1].requests_per_minute: must be at least 1" in text


def test_duplicate_names_are_an_error(tmp_path: Path):
    text = problems_of(tmp_path, '[[keys]]\nname = "ops"\nkey = "a"\n[[keys]]\nname = "ops"\nkey = "b"\n')
    assert "keys[1].name 'ops' is already used by keys[0]" in text


def test_a_key_with_both_clear_text_and_digest_is_an_error(tmp_path: Path):
    text = problems_of(tmp_path, f'[[keys]]\nname = "a"\nkey = "x"\nsha256 = "{key_digest("x")}"\n')
    assert "keys[0]: has both key and sha256" in text


def test_a_key_with_neither_clear_text_nor_digest_is_an_error(tmp_path: Path):
    assert "keys[0]: needs either key" in problems_of(tmp_path, '[[keys]]\nname = "a"\n')


def test_an_unknown_field_is_an_error(tmp_path: Path):
    text = problems_of(tmp_path, '[[keys]]\nname = "a"\nkey = "x"\nscope = ["admin"]\n')
    assert "keys[0].scope: unknown field" in text


@pytest.mark.parametrize("digest", ["abc", "z" * 64, "ab " * 21 + "a"])
def test_a_bad_hex_digest_is_an_error(tmp_path: Path, digest: str):
    text = problems_of(tmp_path, f'[[keys]]\nname = "a"\nsha256 = "{digest}"\n')
    assert "keys[0].sha256: not a SHA-256 hex digest" in text


def test_a_missing_name_is_an_error(tmp_path: Path):
    assert "keys[0].name: required" in problems_of(tmp_path, '[[keys]]\nkey = "x"\n')


def test_a_boolean_priority_is_an_error(tmp_path: Path):
    assert "keys[0].priority" in problems_of(tmp_path, '[[keys]]\nname = "a"\nkey = "x"\npriority = true\n')


def test_a_file_without_keys_is_an_error(tmp_path: Path):
    assert "no [[keys]] entries" in problems_of(tmp_path, "")


def test_invalid_toml_is_reported(tmp_path: Path):
    assert "not valid TOML" in problems_of(tmp_path, "[[keys]\n")


def test_a_missing_file_is_reported(tmp_path: Path):
    with pytest.raises(ConfigError, match="file not found"):
        ApiKeyStore.load(tmp_path / "nope.toml")


@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_clear_keys_in_a_file_others_can_read_are_refused_with_the_fix(tmp_path: Path, mode: int):
    text = problems_of(tmp_path, '[[keys]]\nname = "a"\nkey = "x"\n', mode)
    assert f"chmod 600 {tmp_path / 'api-keys.toml'}" in text and f"{mode:04o}" in text


@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")
def test_a_file_of_digests_only_may_be_readable_by_others(tmp_path: Path):
    store = load_text(tmp_path, f'[[keys]]\nname = "a"\nsha256 = "{key_digest("x")}"\n', 0o644)
    assert store.authenticate("Bearer x").name == "a"


# --- authenticating ---------------------------------------------------------------------------

def test_a_clear_key_authenticates(store: ApiKeyStore):
    assert store.authenticate(f"Bearer {OPS_KEY}").name == "ops"


def test_a_hashed_key_authenticates(store: ApiKeyStore):
    assert store.authenticate(f"Bearer {READER_KEY}").name == "reader"


@pytest.mark.parametrize("header", [f"bearer {OPS_KEY}", f"BEARER   {OPS_KEY}  ", f"  Bearer {OPS_KEY}"])
def test_the_bearer_scheme_is_case_insensitive_and_spacing_tolerant(store: ApiKeyStore, header: str):
    assert store.authenticate(header).name == "ops"


@pytest.mark.parametrize("header", [None, "", "   ", "Bearer", "Bearer   "])
def test_a_missing_key_is_a_401_telling_how_to_send_one(store: ApiKeyStore, header):
    with pytest.raises(AuthError) as info:
        store.authenticate(header)
    assert info.value.status == 401
    assert info.value.message.startswith("You didn't provide an API key.")
    assert "Authorization: Bearer" in info.value.message


def test_a_wrong_key_is_a_401_that_shows_only_part_of_it(store: ApiKeyStore):
    wrong = "sk-cynode-wrongwrongwrong-abcd"
    with pytest.raises(AuthError) as info:
        store.authenticate(f"Bearer {wrong}")
    assert info.value.status == 401 and info.value.code == "invalid_api_key"
    assert "Incorrect API key provided: sk-cyno...abcd." in info.value.message
    assert wrong not in info.value.message


def test_a_short_wrong_key_is_not_echoed(store: ApiKeyStore):
    with pytest.raises(AuthError) as info:
        store.authenticate("Bearer hunter2")
    assert "hunter2" not in info.value.message


def test_another_auth_scheme_is_a_401_naming_it(store: ApiKeyStore):
    with pytest.raises(AuthError) as info:
        store.authenticate(f"Basic {OPS_KEY}")
    assert info.value.status == 401 and "'Basic'" in info.value.message and OPS_KEY not in info.value.message


def test_a_store_can_be_built_from_clear_keys_without_a_file():
    store = ApiKeyStore.from_keys([("secret-1", ApiKey(name="t"))])
    assert store.authenticate("Bearer secret-1").name == "t" and len(store) == 1


# --- permissions ------------------------------------------------------------------------------

def test_a_key_with_the_scope_and_model_passes(store: ApiKeyStore):
    reader = store.authenticate(f"Bearer {READER_KEY}")
    require(reader, "inference", "smollm2-135m")
    require(reader, "inference", "qwen-7b")


def test_a_missing_scope_is_a_403(store: ApiKeyStore):
    reader = store.authenticate(f"Bearer {READER_KEY}")
    with pytest.raises(AuthError) as info:
        require(reader, "admin")
    assert info.value.status == 403 and info.value.code == "insufficient_scope"
    assert "'reader'" in info.value.message and "'admin'" in info.value.message


def test_a_model_outside_the_allow_list_is_a_403(store: ApiKeyStore):
    reader = store.authenticate(f"Bearer {READER_KEY}")
    with pytest.raises(AuthError) as info:
        require(reader, "inference", "qwen-14b")
    assert info.value.status == 403 and info.value.code == "model_not_allowed" and "'qwen-14b'" in info.value.message


def test_model_patterns_are_case_sensitive_globs():
    key = ApiKey(name="k", models=("llama-*",))
    assert key.allows_model("llama-3") and not key.allows_model("LLAMA-3") and not key.allows_model("qwen")
    assert key.has_scope("inference") and not key.has_scope("training")


# --- the generated file -----------------------------------------------------------------------

def test_generated_keys_are_long_random_and_prefixed():
    keys = {generate_key() for _ in range(50)}
    assert len(keys) == 50 and all(k.startswith("sk-cynode-") and len(k) >= 50 for k in keys)


def test_a_missing_file_is_created_private_with_one_admin_key_that_loads_back(tmp_path: Path):
    path = tmp_path / "data" / "nested" / "api-keys.toml"
    key = ensure_api_keys_file(path)
    assert key is not None and key.startswith("sk-cynode-")
    if os.name == "posix":
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().startswith("#")
    admin = ApiKeyStore.load(path).authenticate(f"Bearer {key}")
    assert admin.name == "admin" and admin.scopes == {"inference", "training", "admin"} and admin.models == ("*",)
    assert [p.name for p in path.parent.iterdir()] == ["api-keys.toml"]  # no temporary file left


def test_the_file_is_private_even_under_a_permissive_umask(tmp_path: Path):
    old = os.umask(0)
    try:
        ensure_api_keys_file(tmp_path / "api-keys.toml")
    finally:
        os.umask(old)
    if os.name == "posix":
        assert stat.S_IMODE((tmp_path / "api-keys.toml").stat().st_mode) == 0o600


def test_an_existing_file_is_left_alone(tmp_path: Path):
    path = write(tmp_path / "api-keys.toml", "# mine\n", 0o600)
    assert ensure_api_keys_file(path) is None
    assert path.read_text() == "# mine\n"


def test_limits_budgets_and_expiry_load_from_the_file(tmp_path: Path):
    store = load_text(tmp_path, f"""
[[keys]]
name = "metered"
key = "{OPS_KEY}"
max_concurrent_requests = 4
tokens_per_day = 1000
tokens_per_month = 20000
expires = 2030-01-31T00:00:00Z
""")
    (key,) = store.keys
    assert (key.max_concurrent_requests, key.tokens_per_day, key.tokens_per_month) == (4, 1000, 20000)
    assert key.expires_at == 1896048000.0 and key.has_limits and key.priority is None
    assert store.authenticate(f"Bearer {OPS_KEY}") is key


def test_a_bad_expiry_or_limit_is_named(tmp_path: Path):
    text = problems_of(tmp_path, f"""
[[keys]]
name = "bad"
key = "{OPS_KEY}"
expires = 2030-01-31
tokens_per_day = 0
""")
    assert "keys[0].expires: must be a TOML date-time with a time zone" in text
    assert "keys[0].tokens_per_day: must be at least 1" in text


def test_an_expired_file_key_is_refused_with_its_own_code(tmp_path: Path):
    store = load_text(tmp_path, f"""
[[keys]]
name = "gone"
key = "{OPS_KEY}"
expires = 2020-01-01T00:00:00Z
""")
    with pytest.raises(AuthError) as info:
        store.authenticate(f"Bearer {OPS_KEY}")
    assert (info.value.status, info.value.code) == (401, "expired_api_key")
