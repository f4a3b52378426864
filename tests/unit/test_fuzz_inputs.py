"""Property tests (hypothesis) of the parsers that face the outside: the OpenAI request bodies, node.toml
and its environment overrides, the API-key file and Authorization header, and JWTs.

The property everywhere: whatever arrives, the parser returns its result or raises the project's own
error for it (RequestError 4xx naming the field, ConfigError naming the file and key, AuthError 401),
never another exception. Examples are bounded so the file runs in seconds; a failure prints the
smallest input hypothesis found, and `HYPOTHESIS_SEED`-style replays come from the printed blob.
The gossip decoder's own properties are in tests/unit/gossip/test_gossip_fuzz.py.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time

import pytest
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cynode.api_keys import ApiKey, ApiKeyStore
from cynode.config import NodeConfig, load_config
from cynode.errors import AuthError, ConfigError, RequestError
from cynode.roles.gateway.jwt_auth import JwtVerifier
from cynode.roles.gateway.openai_schema import parse_chat_request, parse_completion_request, parse_embedding_request

FUZZ = settings(max_examples=int(os.environ.get("CYNODE_FUZZ_EXAMPLES", "150")), deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# --- JSON-shaped values ----------------------------------------------------------------------------

scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20)
           | st.sampled_from(["", "user", "system", "assistant", "text", "image_url", "sim", "auto", "none"]))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=12)

CHAT_FIELDS = ["model", "messages", "temperature", "top_p", "top_k", "min_p", "max_tokens", "max_completion_tokens",
               "n", "stop", "stream", "stream_options", "seed", "logprobs", "top_logprobs", "presence_penalty",
               "frequency_penalty", "repetition_penalty", "user", "tools", "tool_choice", "response_format",
               "logit_bias", "parallel_tool_calls", "metadata", "store"]
COMPLETION_FIELDS = ["model", "prompt", "echo", "suffix", "best_of", "max_tokens", "n", "stop", "stream", "logprobs",
                     "temperature", "seed", "user", "stream_options"]
EMBEDDING_FIELDS = ["model", "input", "encoding_format", "dimensions", "user"]

message = st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "tool", "developer", "x"])},
                                optional={"content": json_values | st.lists(st.fixed_dictionaries(
                                    {"type": st.sampled_from(["text", "image_url", "input_audio", 1])},
                                    optional={"text": json_values}), max_size=3),
                                    "name": json_values})


def bodies(fields: list[str], base: dict) -> st.SearchStrategy[bytes]:
    """Raw bytes, any JSON, and a valid body with known fields set to anything: the last reaches the
    checks behind the JSON parse."""
    mutated = st.builds(lambda changes: {**base, **changes},
                        st.dictionaries(st.sampled_from(fields), json_values | st.lists(message, max_size=3), max_size=5))
    as_json = (mutated | json_values).map(lambda value: json.dumps(value).encode())
    tricky = st.sampled_from([b"", b"{", b"[]", b"null", b'{"model": NaN}', b'{"model": Infinity}', b"\xff\xfe",
                              b'{"a":' * 5000 + b"1" + b"}" * 5000, b'{"model": "sim", "messages": [' + b"[" * 3000])
    return st.binary(max_size=200) | as_json | tricky


def accepted_or_named(parse, body: bytes) -> None:
    try:
        parse(body)
    except RequestError as exc:
        assert 400 <= exc.status < 500 and exc.message, exc
        assert exc.status != 400 or exc.param is not None or exc.code, f"a 400 names no field: {exc.message}"


@FUZZ
@given(bodies(CHAT_FIELDS, {"model": "sim", "messages": [{"role": "user", "content": "hi"}]}))
def test_any_chat_body_is_parsed_or_refused_with_a_4xx_naming_the_field(body):
    accepted_or_named(parse_chat_request, body)


@FUZZ
@given(bodies(COMPLETION_FIELDS, {"model": "sim", "prompt": "hi"}))
def test_any_completion_body_is_parsed_or_refused_with_a_4xx_naming_the_field(body):
    accepted_or_named(parse_completion_request, body)


@FUZZ
@given(bodies(EMBEDDING_FIELDS, {"model": "sim", "input": "hi"}))
def test_any_embedding_body_is_parsed_or_refused_with_a_4xx_naming_the_field(body):
    accepted_or_named(parse_embedding_request, body)


# --- node.toml and its environment ------------------------------------------------------------------

toml_scalars = (st.booleans() | st.integers(min_value=-(2**63), max_value=2**63 - 1) | st.floats()
                | st.text(max_size=20) | st.sampled_from(["", "0s", "5s", "-1s", "1 GiB", "10x", "127.0.0.1:0",
                                                         "host", ":80", "[::1]:99999", "redis://x", "rediss://x:1/0",
                                                         "unix:///tmp/r", "auto", "sim", "gateway"]))
toml_values = st.recursive(toml_scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)
SECTIONS = {name: list(field.annotation.model_fields) if hasattr(field.annotation, "model_fields") else []
            for name, field in NodeConfig.model_fields.items()}


@st.composite
def node_tomls(draw) -> dict:
    """Real section and key names (so validators run) with any values, plus unknown keys."""
    doc = {}
    for section in draw(st.lists(st.sampled_from(sorted(SECTIONS)), max_size=4, unique=True)):
        keys = SECTIONS[section] + ["not_a_key"]
        doc[section] = draw(st.dictionaries(st.sampled_from(keys), toml_values, max_size=4))
    if draw(st.booleans()):
        doc[draw(st.text(max_size=6))] = draw(toml_values)
    return doc


env_overrides = st.dictionaries(
    st.builds(lambda s, k: f"CYNODE_{s.upper()}__{k.upper()}", st.sampled_from(sorted(SECTIONS)),
              st.sampled_from(sorted({k for keys in SECTIONS.values() for k in keys} | {"nope"}))),
    st.text(max_size=12) | st.sampled_from(["1", "true", "[1, 2]", "{a = 1}", "'x'", "0.5", "-1"]), max_size=3)


def loads_or_names_the_key(path, env=None) -> None:
    try:
        load_config(path, env=env)
    except ConfigError as exc:
        assert exc.message.startswith(str(path)) or "environment" in exc.message or exc.source, exc


@FUZZ
@given(doc=node_tomls(), env=env_overrides)
def test_any_node_toml_loads_or_is_refused_naming_the_key(tmp_path, doc, env):
    path = tmp_path / "node.toml"
    try:
        path.write_text(tomli_w.dumps(doc))
    except (TypeError, ValueError):  # not representable in TOML: nothing a user could write
        return
    loads_or_names_the_key(path, env)


@FUZZ
@given(st.binary(max_size=300) | st.text(max_size=200).map(str.encode))
def test_a_node_toml_that_is_not_toml_is_refused_as_such(tmp_path, raw):
    path = tmp_path / "node.toml"
    path.write_bytes(raw)
    loads_or_names_the_key(path)


# --- the API-key file and the Authorization header ---------------------------------------------------

KEY_FIELDS = ["name", "key", "sha256", "scopes", "models", "priority", "expires", "max_concurrent_streams",
              "requests_per_minute", "tokens_per_minute", "comment"]


@st.composite
def key_files(draw) -> dict:
    value = toml_values | st.datetimes(timezones=st.none() | st.timezones()) | st.just("a" * 64)
    tables = draw(st.lists(st.dictionaries(st.sampled_from(KEY_FIELDS), value, max_size=5), max_size=3))
    doc = {"keys": tables} if draw(st.integers(0, 5)) else {"keys": draw(toml_values)}
    if draw(st.integers(0, 4)) == 0:
        doc[draw(st.text(max_size=5))] = draw(toml_values)
    return doc


@FUZZ
@given(key_files())
def test_any_api_key_file_loads_or_is_refused_naming_the_entry(tmp_path, doc):
    path = tmp_path / "api-keys.toml"
    try:
        path.write_text(tomli_w.dumps(doc))
    except (TypeError, ValueError):
        return
    path.chmod(0o600)
    try:
        store = ApiKeyStore.load(path)
    except ConfigError as exc:
        assert exc.source == str(path) and exc.problems
        return
    assert len(store) == len(doc["keys"])


@FUZZ
@given(st.binary(max_size=300))
def test_an_api_key_file_of_any_bytes_is_refused_or_loaded(tmp_path, raw):
    path = tmp_path / "api-keys.toml"
    path.write_bytes(raw)
    path.chmod(0o600)
    try:
        ApiKeyStore.load(path)
    except ConfigError as exc:
        assert exc.source == str(path)


STORE = ApiKeyStore.from_keys([("sk-the-real-key-0123456789",
                                ApiKey(name="real", scopes=frozenset({"inference"}), models=("*",)))])


@FUZZ
@given(st.none() | st.text(max_size=80) | st.builds(lambda t: f"Bearer {t}", st.text(max_size=60)))
def test_any_authorization_header_authenticates_or_gets_a_401(header):
    try:
        key = STORE.authenticate(header)
    except AuthError as exc:
        assert exc.status == 401 and "sk-the-real-key-0123456789" not in exc.message
    else:
        assert key.name == "real"


# --- JWTs -------------------------------------------------------------------------------------------

SECRET = b"s" * 40
VERIFIER = JwtVerifier(secret=SECRET, issuer="https://issuer.example", audience="cynode")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


claims = st.fixed_dictionaries({}, optional={
    "sub": json_values | st.just("alice"), "exp": json_values | st.just(time.time() + 600) | st.just(1e308)
    | st.just(10**30) | st.just("9999999999"), "iss": st.just("https://issuer.example") | json_values,
    "aud": st.just("cynode") | json_values, "scope": json_values | st.just("inference admin"),
    "models": json_values | st.just(["sim"]), "priority": json_values, "nbf": json_values, "iat": json_values})
headers = st.fixed_dictionaries({"alg": st.sampled_from(["HS256", "RS256", "none", "HS512"]) | json_values},
                                optional={"typ": json_values, "kid": json_values, "crit": json_values})


def hs256_signed(header: object, payload: object) -> str:
    """A token signed with the right secret whatever its header and claims say, so the claim checks run."""
    signing = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
    return signing + "." + _b64(hmac.new(SECRET, signing.encode(), hashlib.sha256).digest())


@st.composite
def tokens(draw) -> str:
    kind = draw(st.integers(0, 2))
    if kind == 0:
        return draw(st.text(max_size=80))
    header, payload = draw(headers), draw(claims)
    if kind == 1:
        return hs256_signed(header, payload)
    return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}.{_b64(draw(st.binary(max_size=40)))}"


@FUZZ
@given(tokens())
def test_any_token_verifies_or_gets_a_401(token):
    try:
        identity = VERIFIER.verify(token)
    except AuthError as exc:
        assert exc.status == 401 and exc.message
    else:
        assert identity.name.startswith("jwt:") and identity.source == "jwt"


@pytest.mark.parametrize("exp", [1e308, 10**30, "9999999999", 1e19])
def test_an_absurd_far_expiry_signed_by_the_issuer_is_a_far_future(exp):
    token = hs256_signed({"alg": "HS256"}, {"sub": "a", "exp": exp, "iss": "https://issuer.example", "aud": "cynode"})
    assert VERIFIER.verify(token).expires_at > time.time() + 10 * 365 * 86400


@pytest.mark.parametrize("exp", [-1e308, "soon", None, [1], float(-(2**63))])
def test_an_expiry_in_the_past_or_not_a_number_is_a_401(exp):
    token = hs256_signed({"alg": "HS256"}, {"sub": "a", "exp": exp, "iss": "https://issuer.example", "aud": "cynode"})
    with pytest.raises(AuthError) as refused:
        VERIFIER.verify(token)
    assert refused.value.status == 401


def test_found_by_the_fuzzer_a_path_under_an_unknown_users_home_is_a_config_error(tmp_path):
    path = tmp_path / "node.toml"
    path.write_text('[node]\ndata_dir = "~no-such-user-here/data"\n')
    with pytest.raises(ConfigError, match=r"\[node\] data_dir .*cannot expand '~no-such-user-here'"):
        load_config(path)


def test_found_by_the_fuzzer_a_node_toml_that_is_not_utf8_is_a_config_error(tmp_path):
    path = tmp_path / "node.toml"
    path.write_bytes(b'[node]\nid = "\xff"\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(path)
