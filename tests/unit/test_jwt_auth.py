"""JWT bearer tokens, really signed: HS256 and RS256 accepted with their claims, expired or forged
ones refused, a JWKS rotation picked up without a restart, and the same over the gateway's HTTP."""

from __future__ import annotations

import json
import os
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from cynode.api_keys import ApiKey, ApiKeyStore
from cynode.config.sections import GatewaySection
from cynode.errors import AuthError, ConfigError
from cynode.roles.gateway import jwt_auth
from cynode.roles.gateway.jwt_auth import JwtVerifier
from gateway_harness import GatewayHarness

SECRET = b"s" * 40


def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem(private) -> bytes:
    return private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def jwk(private, kid: str) -> dict:
    entry = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
    return {**entry, "kid": kid, "alg": "RS256", "use": "sig"}


def token(key, alg: str = "HS256", *, exp: float | None = None, kid: str | None = None, **claims) -> str:
    body = {"sub": "alice", "exp": int(exp if exp is not None else time.time() + 300), **claims}
    return jwt.encode(body, key, algorithm=alg, headers={"kid": kid} if kid else None)


def config(tmp_path, **files) -> GatewaySection:
    fields = {}
    for name, content in files.items():
        path = tmp_path / name
        path.write_bytes(content if isinstance(content, bytes) else json.dumps(content).encode())
        fields[f"jwt_{name}"] = path
    return GatewaySection(**fields)


def test_hs256_and_rs256_tokens_name_the_caller_with_their_scopes_and_models(tmp_path):
    private = rsa_key()
    verifier = JwtVerifier.from_config(config(tmp_path, secret_file=SECRET, public_key_file=pem(private)))
    alice = verifier.verify(token(SECRET, scope="inference training", models=["sim*"], priority=3))
    assert (alice.name, alice.scopes, alice.models, alice.priority, alice.source) == (
        "jwt:alice", frozenset({"inference", "training"}), ("sim*",), 3, "jwt")
    bob = verifier.verify(token(private, "RS256", sub="bob", scope=["admin"]))
    assert (bob.name, bob.scopes, bob.models) == ("jwt:bob", frozenset({"admin"}), ("*",))


def test_expired_forged_unsigned_or_claimless_tokens_are_refused(tmp_path):
    verifier = JwtVerifier.from_config(config(tmp_path, secret_file=SECRET))
    cases = {
        token(SECRET, exp=time.time() - 120): "expired_token",
        token(b"x" * 40): "invalid_token",  # another secret
        jwt.encode({"sub": "a", "exp": int(time.time()) + 60}, None, algorithm="none"): "invalid_token",
        jwt.encode({"exp": int(time.time()) + 60}, SECRET, algorithm="HS256"): "invalid_token",  # no sub
        jwt.encode({"sub": "a"}, SECRET, algorithm="HS256"): "invalid_token",  # no exp
        token(rsa_key(), "RS256"): "invalid_token",  # RS256 is not configured
    }
    for bad, code in cases.items():
        with pytest.raises(AuthError) as info:
            verifier.verify(bad)
        assert (info.value.status, info.value.code) == (401, code), bad


def test_issuer_and_audience_are_checked_when_configured(tmp_path):
    path = tmp_path / "secret"
    path.write_bytes(SECRET)
    verifier = JwtVerifier.from_config(GatewaySection(jwt_secret_file=path, jwt_issuer="idp", jwt_audience="cynode"))
    assert verifier.verify(token(SECRET, iss="idp", aud="cynode")).name == "jwt:alice"
    for claims in ({"iss": "other", "aud": "cynode"}, {"iss": "idp", "aud": "other"}, {}):
        with pytest.raises(AuthError):
            verifier.verify(token(SECRET, **claims))


def test_a_jwks_rotation_is_picked_up_without_a_restart(tmp_path, monkeypatch):
    monkeypatch.setattr(jwt_auth, "JWKS_CHECK_S", 0.0)
    old, new = rsa_key(), rsa_key()
    cfg = config(tmp_path, jwks_file={"keys": [jwk(old, "k1")]})
    verifier = JwtVerifier.from_config(cfg)
    assert verifier.verify(token(old, "RS256", kid="k1")).name == "jwt:alice"
    with pytest.raises(AuthError):
        verifier.verify(token(new, "RS256", kid="k2"))
    cfg.jwt_jwks_file.write_text(json.dumps({"keys": [jwk(new, "k2")]}))
    os.utime(cfg.jwt_jwks_file, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    assert verifier.verify(token(new, "RS256", kid="k2")).name == "jwt:alice"
    with pytest.raises(AuthError):
        verifier.verify(token(old, "RS256", kid="k1"))  # the retired key no longer verifies


def test_bad_jwt_settings_stop_start_up_naming_the_field(tmp_path):
    with pytest.raises(ConfigError, match="jwt_secret_file.*at least 32"):
        JwtVerifier.from_config(config(tmp_path, secret_file=b"short"))
    with pytest.raises(ConfigError, match="jwt_public_key_file.*not a PEM"):
        JwtVerifier.from_config(config(tmp_path, public_key_file=b"nonsense"))
    with pytest.raises(ConfigError, match="jwt_jwks_file"):
        JwtVerifier.from_config(config(tmp_path, jwks_file=b"{"))
    assert JwtVerifier.from_config(GatewaySection()) is None


async def test_jwts_over_http_the_auth_matrix(redis_conn, tmp_path):
    private = rsa_key()
    verifier = JwtVerifier.from_config(config(tmp_path, secret_file=SECRET, public_key_file=pem(private)))
    keys = ApiKeyStore.from_keys([("sk-cynode-admin-0123456789abcdef", ApiKey("admin"))])
    gw = await GatewayHarness.start(redis_conn, keys, jwt=verifier)
    try:
        def code(reply):
            return reply.status_code, reply.json()["error"]["code"] if reply.status_code != 200 else None

        assert code(await gw.chat(token(SECRET))) == (200, None)
        assert code(await gw.chat(token(private, "RS256"))) == (200, None)
        assert code(await gw.chat(token(SECRET, exp=time.time() - 120))) == (401, "expired_token")
        assert code(await gw.chat(token(SECRET, scope="training"))) == (403, "insufficient_scope")
        assert code(await gw.chat(token(SECRET, models=["other"]))) == (403, "model_not_allowed")
        await gw.state.limits.wait()
        day = time.strftime("%Y%m%d", time.gmtime())
        assert (await gw.state.limits.usage("jwt:alice", [day]))[day]["requests"] == 2
    finally:
        await gw.stop()


def test_limit_claims_become_the_callers_limits_and_bad_ones_are_refused(tmp_path):
    verifier = JwtVerifier.from_config(config(tmp_path, secret_file=SECRET))
    carol = verifier.verify(token(SECRET, sub="carol", requests_per_minute=5, tokens_per_day=1000))
    assert (carol.requests_per_minute, carol.tokens_per_day, carol.tokens_per_minute, carol.has_limits) == (
        5, 1000, None, True)
    assert not verifier.verify(token(SECRET)).has_limits
    for bad in ({"requests_per_minute": 0}, {"tokens_per_minute": "100"}, {"max_concurrent_requests": True},
                {"tokens_per_month": 1.5}):
        with pytest.raises(AuthError, match=f"{next(iter(bad))} must be a positive integer") as info:
            verifier.verify(token(SECRET, **bad))
        assert info.value.status == 401


async def test_a_jwts_rate_limit_claim_is_enforced_over_http(redis_conn, tmp_path):
    verifier = JwtVerifier.from_config(config(tmp_path, secret_file=SECRET))
    keys = ApiKeyStore.from_keys([("sk-cynode-admin-0123456789abcdef", ApiKey("admin"))])
    gw = await GatewayHarness.start(redis_conn, keys, jwt=verifier)
    try:
        limited = token(SECRET, sub=f"dave-{os.getpid()}-{time.time_ns()}", requests_per_minute=2)
        replies = [await gw.chat(limited) for _ in range(3)]
        assert [r.status_code for r in replies] == [200, 200, 429]
        refused = replies[2]
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"
        assert int(refused.headers["Retry-After"]) >= 1
        assert refused.headers["x-ratelimit-limit-requests"] == "2"
        assert (await gw.chat(token(SECRET, sub="erin"))).status_code == 200  # another caller is not held back
    finally:
        await gw.stop()


async def test_a_gateway_without_redis_refuses_a_token_with_limits_instead_of_ignoring_them(redis_conn, tmp_path):
    verifier = JwtVerifier.from_config(config(tmp_path, secret_file=SECRET))
    keys = ApiKeyStore.from_keys([("sk-cynode-admin-0123456789abcdef", ApiKey("admin"))])
    gw = await GatewayHarness.start(redis_conn, keys, jwt=verifier)
    limits, gw.state.limits = gw.state.limits, None  # as a gateway started without Redis has it
    try:
        refused = await gw.chat(token(SECRET, requests_per_minute=100))
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "limits_unavailable"
        assert (await gw.chat(token(SECRET))).status_code == 200  # a token without limits is served
    finally:
        gw.state.limits = limits
        await gw.stop()
