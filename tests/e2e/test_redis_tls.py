"""Redis over TLS (rediss://) with client certificates and an ACL user whose password is read from a
file: a real redis-server started with --tls-port, certificates made in the test."""

from __future__ import annotations

import pytest
import redis

from cynode.config import load_config
from cynode.config.sections import RedisSection
from cynode.errors import ConfigError, StartupError
from cynode.redis_conn import RedisConnection
from cynode.redis_tls import redis_options
from daemon_harness import CynodeProcess
from redis_harness import ACL_USER as USER
from tls_certs import TestCa


def section(tls_redis, **changes) -> RedisSection:
    fields = {"url": tls_redis.url, "username": USER, "password_file": tls_redis.password_file,
              "tls_ca_file": tls_redis.ca.pem, "tls_cert_file": tls_redis.client.cert,
              "tls_key_file": tls_redis.client.key}
    return RedisSection(**{**fields, **changes})


async def test_rediss_with_a_client_certificate_and_an_acl_user_reads_and_writes(tls_redis):
    conn = RedisConnection(tls_redis.url, "tls", redis_options(section(tls_redis)))
    try:
        await conn.connect(wait=10)
        await conn.client.set(conn.key("probe"), "ok")
        assert await conn.client.get(conn.key("probe")) == "ok"
        assert await conn.client.acl_whoami() == USER
    finally:
        await conn.close()


@pytest.mark.parametrize("what", ["wrong password", "no client certificate", "another CA"])
async def test_what_the_server_refuses_stops_start_up_with_a_reason_and_no_password(tls_redis, what, tmp_path):
    if what == "wrong password":
        wrong = tmp_path / "wrong.password"
        wrong.write_text("not-the-password\n")
        wrong.chmod(0o600)
        changes = {"password_file": wrong}
    elif what == "no client certificate":
        changes = {"tls_cert_file": None, "tls_key_file": None}
    else:
        changes = {"tls_ca_file": TestCa(tmp_path / "other", "other CA").pem}
    conn = RedisConnection(tls_redis.url, "tls", redis_options(section(tls_redis, **changes)))
    try:
        with pytest.raises(StartupError) as failed:
            await conn.connect(wait=1.5)
    finally:
        await conn.close()
    assert "does not answer" in failed.value.message and tls_redis.password not in failed.value.message


def test_settings_that_cannot_apply_are_refused_naming_the_field(tmp_path, tls_redis):
    with pytest.raises(ValueError, match="tls_ca_file need a rediss:// url"):
        RedisSection(url="redis://127.0.0.1:6379/0", tls_ca_file=tls_redis.ca.pem)
    with pytest.raises(ValueError, match="tls_cert_file and tls_key_file go together"):
        RedisSection(url=tls_redis.url, tls_cert_file=tls_redis.client.cert)
    with pytest.raises(ValueError, match="embedded one has no ACL"):
        RedisSection(url="redis://127.0.0.1:6379/0", embedded=True, password_file=tls_redis.password_file)
    loose = tmp_path / "loose.password"
    loose.write_text("secret\n")
    loose.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by other users"):
        redis_options(RedisSection(url=tls_redis.url, password_file=loose))


def test_a_daemon_serves_through_tls_redis_with_an_acl_user_its_prompt_cache_too_and_never_logs_the_password(
        tls_redis, tmp_path, models_dir):
    """The prompt cache on a Redis of its own (db 1 here) is reached with [redis]'s TLS files, user and password."""
    cache_url = tls_redis.url.rsplit("/", 1)[0] + "/1"
    node = CynodeProcess(tmp_path, redis_url=tls_redis.url, models_dir=models_dir, extra={
        "node": {"log_level": "debug"}, "redis": tls_redis.settings(), "worker": {"backend": "sim"},
        "coordinator": {"prompt_cache": {"redis_url": cache_url}}})
    node.start(timeout=120)
    try:
        import httpx

        def chat(content: str, **headers) -> httpx.Response:
            return httpx.post(f"{node.base_url}/v1/chat/completions", timeout=60, json={
                "model": "sim", "messages": [{"role": "user", "content": content}], "max_tokens": 3, "temperature": 0},
                headers={"Authorization": f"Bearer {node.api_key()}", **headers})

        reply = chat("over tls", **{"Cache-Control": "no-cache"})
        assert reply.status_code == 200, reply.text
        assert reply.headers.get("X-Cache") == "miss"
        again = chat("over tls")
        assert again.status_code == 200 and again.headers.get("X-Cache") == "hit", again.headers
        assert again.json()["choices"][0]["message"] == reply.json()["choices"][0]["message"]
        with tls_redis.client_for_tests() as r:
            assert r.keys("cynode:*:leader")  # the coordinator leads through the TLS Redis
            assert not r.keys("cynode:*:cache:*")  # the cache is not in db 0 ...
        with redis.Redis.from_url(cache_url, ssl_ca_certs=str(tls_redis.ca.pem), ssl_certfile=str(tls_redis.client.cert),
                                  ssl_keyfile=str(tls_redis.client.key), username=USER, password=tls_redis.password) as r:
            assert r.zcard(r.keys("cynode:*:cache:lru")[0]) >= 1  # ... but in db 1, reached over TLS as the ACL user
    finally:
        assert node.terminate() == 0
    log = node.log_path.read_text()  # the whole file, every level (debug)
    assert tls_redis.password not in log and "rediss://127.0.0.1" in log


def test_a_plaintext_cache_redis_beside_a_tls_redis_is_refused_naming_the_field(tmp_path, tls_redis):
    config = tmp_path / "node.toml"
    config.write_text(f'[redis]\nurl = "{tls_redis.url}"\n\n[coordinator.prompt_cache]\n'
                      'redis_url = "redis://:hunter2@cache.internal:6379/0"\n')
    with pytest.raises(ConfigError) as refused:
        load_config(config)
    assert "[coordinator.prompt_cache] redis_url" in refused.value.message
    assert "plaintext while [redis] url uses TLS" in refused.value.message
    assert "hunter2" not in refused.value.message  # the url is shown without its password
    # Secured like [redis] it loads, and a unix socket (no network) is fine too.
    for url in (tls_redis.url.rsplit("/", 1)[0] + "/1", "unix:///run/redis/cache.sock"):
        config.write_text(f'[redis]\nurl = "{tls_redis.url}"\n\n[coordinator.prompt_cache]\nredis_url = "{url}"\n')
        assert load_config(config).coordinator.prompt_cache.redis_url == url
