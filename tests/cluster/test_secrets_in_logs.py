"""No secret reaches a log line, a metric or an error body: a real three-daemon cluster (worker;
coordinator + gateway; gateway) with every secret cynode takes set (API keys, an HS256 JWT secret,
the cluster key, a Redis ACL password over TLS), all logging at debug, one in JSON.

It serves good requests (API key and JWT, streamed and not, through both gateways) and bad ones (a
wrong key, a key one character off, a JWT signed with another secret, an expired and an altered
JWT, an admin call with an inference key), then searches every byte the cluster wrote: each node's
log, /metrics on every port that has it, the cluster endpoints, every error body, and what
`cynode doctor` and `cynode cluster-key list` print. Each secret is searched raw and in the
encodings a careless line would use (base64 in both alphabets, with and without padding, hex,
percent-encoding, JSON and repr escaping). The search is shown to work: it finds each secret in the
file it was written to.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import signal
import subprocess
import sys
import time
import tomllib
import urllib.parse

import httpx
import pytest
import tomli_w
from cryptography.hazmat.primitives import serialization

from cluster_harness import wait_for
from cynode.cluster_key import load_keys
from cynode.pki import derive_ca


def encodings(secret: bytes) -> set[bytes]:
    forms = {secret, binascii.hexlify(secret), binascii.hexlify(secret).upper()}
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        forms |= {encode(secret), encode(secret).rstrip(b"=")}
    try:
        text = secret.decode()
    except UnicodeDecodeError:
        return forms
    forms |= {urllib.parse.quote(text, safe="").encode(), json.dumps(text)[1:-1].encode(), repr(text)[1:-1].encode()}
    return {f for f in forms if len(f) >= 8}


def found(haystack: bytes, secrets_: dict[str, bytes]) -> list[str]:
    return [f"{name} ({form[:12]!r}...)" for name, secret in secrets_.items() for form in encodings(secret)
            if form in haystack]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256(secret: bytes, claims: dict) -> str:
    signing = f"{_b64(json.dumps({'alg': 'HS256', 'typ': 'JWT'}).encode())}.{_b64(json.dumps(claims).encode())}"
    return signing + "." + _b64(hmac.new(secret, signing.encode(), hashlib.sha256).digest())


@pytest.mark.timeout(600)
def test_no_secret_reaches_a_log_a_metric_or_an_error_body(cluster, tls_redis, tmp_path):
    # --- every secret cynode takes, in files as a user would keep them ---------------------------
    admin_key, user_key = "sk-admin-" + secrets.token_urlsafe(24), "sk-user-" + secrets.token_urlsafe(24)
    keys_file = tmp_path / "api-keys.toml"
    keys_file.write_text(tomli_w.dumps({"keys": [{"name": "admin", "key": admin_key, "scopes": ["admin", "inference"]},
                                                 {"name": "user", "key": user_key}]}))
    keys_file.chmod(0o600)
    jwt_secret = ("jwt-" + secrets.token_urlsafe(40)).encode()
    jwt_file = tmp_path / "jwt.secret"
    jwt_file.write_bytes(jwt_secret + b"\n")
    jwt_file.chmod(0o600)
    (cluster_key,) = load_keys(cluster.key_file)
    ca_key = derive_ca(cluster_key).key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                                      serialization.NoEncryption())
    now = int(time.time())
    good_jwt = hs256(jwt_secret, {"sub": "alice", "exp": now + 600, "scope": "inference"})
    expired_jwt = hs256(jwt_secret, {"sub": "bob", "exp": now - 3600})
    altered_jwt = good_jwt[:-6] + ("AAAAAA" if not good_jwt.endswith("AAAAAA") else "BBBBBB")
    forged_jwt = hs256(b"not-the-secret-" * 3, {"sub": "mallory", "exp": now + 600})
    off_by_one = user_key[:-1] + ("x" if user_key[-1] != "x" else "y")
    the_secrets = {"admin API key": admin_key.encode(), "user API key": user_key.encode(), "JWT secret": jwt_secret,
                   "cluster key": cluster_key, "cluster CA private key": ca_key, "Redis password": tls_redis.password.encode(),
                   "JWT (good)": good_jwt.encode(), "JWT (expired)": expired_jwt.encode(),
                   "JWT (altered)": altered_jwt.encode(), "presented wrong key": off_by_one.encode()}

    # --- a real cluster with all of them, logging everything --------------------------------------
    cluster.common = {"redis": tls_redis.settings(), "node": {"log_level": "debug"},
                      "gateway": {"api_keys_file": str(keys_file), "jwt_secret_file": str(jwt_file)}}
    worker = cluster.sim_worker("w1")
    coordinator = cluster.coordinator("c1", [worker], gateway=True)
    edge = cluster.gateway("g1")
    edge_config = tomllib.loads(edge.config_path.read_text())
    edge_config["node"]["log_format"] = "json"  # one node logs JSON lines
    edge.config_path.write_text(tomli_w.dumps(edge_config))
    cluster.start(worker, coordinator, edge)

    bodies: list[bytes] = []

    def ask(gateway, token: str, *, stream: bool = False, content: str = "hello") -> httpx.Response:
        body = {"model": "sim", "messages": [{"role": "user", "content": content}], "max_tokens": 5, "stream": stream}
        reply = httpx.post(f"{gateway.base_url}/v1/chat/completions", json=body, timeout=120,
                           headers={"Authorization": f"Bearer {token}", "Cache-Control": "no-cache"})
        bodies.append(reply.content)
        return reply

    for gateway in (coordinator, edge):
        ok = wait_for(lambda g=gateway: (r := ask(g, user_key)).status_code == 200 and r, 60, "a first answer")
        assert ok.headers.get("X-Cache") == "miss"
        assert ask(gateway, admin_key, stream=True).status_code == 200
        assert ask(gateway, good_jwt).status_code == 200
        for token, why in ((off_by_one, "invalid_api_key"), ("sk-" + "0" * 40, "invalid_api_key"), (forged_jwt, None),
                           (expired_jwt, "expired_token"), (altered_jwt, None)):
            refused = ask(gateway, token)
            assert refused.status_code == 401, (token[:10], refused.text)
            assert why is None or refused.json()["error"]["code"] == why
        assert httpx.get(f"{gateway.base_url}/v1/models", headers={"Authorization": "Bearer"}, timeout=30).status_code == 401
        admin_only = httpx.get(f"{gateway.metrics_url}/v1/cluster/members", headers={"Authorization": f"Bearer {user_key}"},
                               timeout=30)
        bodies.append(admin_only.content)
        assert admin_only.status_code == 403

    # --- broken secret files on a reload: refused and logged, without what they hold -----------------
    good_keys, good_ring = keys_file.read_text(), cluster.key_file.read_text()
    keys_file.write_text(good_keys + f'\n[[keys]]\nname = "admin"\nkey = "{admin_key}-2"\npriority = "high"\n')
    cluster.key_file.write_text(good_ring + base64.b64encode(cluster_key).decode()[:-8] + "\n")
    mark = coordinator.log_mark()
    coordinator.proc.send_signal(signal.SIGHUP)
    refused_reload = wait_for(lambda: "expected 32" in (t := coordinator.log_since(mark)) and "keys[2]" in t and t,
                              60, "the reload's refusals in the log")
    keys_file.write_text(good_keys)
    cluster.key_file.write_text(good_ring)
    assert ask(coordinator, user_key).status_code == 200  # the old keys serve on
    assert "keys[2].priority: must be an integer" in refused_reload

    # --- everything the cluster shows --------------------------------------------------------------
    shown: list[bytes] = list(bodies)
    for node in (worker, coordinator, edge):
        shown.append(httpx.get(f"{node.metrics_url}/metrics", timeout=30).content)
        for path in ("/v1/cluster/members", "/v1/cluster/status"):
            shown.append(httpx.get(f"{node.metrics_url}{path}", headers={"Authorization": f"Bearer {admin_key}"}, timeout=30).content)
    for gateway in (coordinator, edge):
        shown.append(httpx.get(f"{gateway.base_url}/metrics", timeout=30).content)
    for command in (["doctor", "-c", str(edge.config_path)], ["cluster-key", "list", "--key-file", str(cluster.key_file)]):
        run = subprocess.run([sys.executable, "-m", "cynode", *command], capture_output=True, timeout=120)
        shown += [run.stdout, run.stderr]
    metrics = shown[len(bodies)]
    assert b"cynode_" in metrics, "the /metrics output is not what it should be"
    for node in (worker, coordinator, edge):
        assert node.terminate() == 0
    logs = {name: node.log_path.read_bytes() for name, node in cluster.nodes.items()}
    assert b" DEBUG " in logs["c1"] and b'"level": "debug"' in logs["g1"], "the nodes did not log at debug"

    # --- the search works: each secret is found where it was written ---------------------------------
    assert found(keys_file.read_bytes(), the_secrets) and found(jwt_file.read_bytes(), {"JWT secret": jwt_secret})
    assert found(cluster.key_file.read_bytes(), {"cluster key": cluster_key})
    assert found(tls_redis.password_file.read_bytes(), {"Redis password": tls_redis.password.encode()})

    # --- and nowhere else ----------------------------------------------------------------------------
    for name, log in logs.items():
        assert found(log, the_secrets) == [], f"{name}'s log"
    for i, output in enumerate(shown):
        assert found(output, the_secrets) == [], f"output {i}: {output[:200]!r}"
