"""Redis over TLS (rediss://) with client certificates and an ACL user whose password is read from a
file: a real redis-server started with --tls-port, certificates made in the test."""

from __future__ import annotations

import secrets
import shutil
import subprocess
import time

import pytest
import redis

from cynode.config.sections import RedisSection
from cynode.errors import ConfigError, StartupError
from cynode.redis_conn import RedisConnection
from cynode.redis_tls import redis_options
from daemon_harness import CynodeProcess, free_port
from tls_certs import TestCa

USER = "cynode-app"


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory):
    folder = tmp_path_factory.mktemp("redis-tls")
    ca = TestCa(folder / "pki")
    server, client = ca.issue("redis-server"), ca.issue("cynode-client", hosts=("cynode",))
    password = secrets.token_urlsafe(24)
    port = free_port()
    proc = subprocess.Popen(
        [shutil.which("redis-server"), "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(server.cert), "--tls-key-file", str(server.key), "--tls-ca-cert-file", str(ca.pem),
         "--tls-auth-clients", "yes", "--dir", str(folder), "--save", "",
         "--user", "default", "off", "--user", USER, "on", f">{password}", "~*", "&*", "+@all"],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 15
    while True:
        try:
            redis.Redis(host="127.0.0.1", port=port, ssl=True, ssl_ca_certs=str(ca.pem), ssl_certfile=str(client.cert),
                        ssl_keyfile=str(client.key), username=USER, password=password).ping()
            break
        except redis.RedisError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("redis-server with TLS did not answer (is it built with TLS?)")
            time.sleep(0.1)
    password_file = folder / "redis.password"
    password_file.write_text(password + "\n")
    password_file.chmod(0o600)
    yield {"url": f"rediss://127.0.0.1:{port}/0", "ca": ca, "client": client, "password": password,
           "password_file": password_file, "folder": folder}
    proc.terminate()
    proc.wait(10)


def section(tls_redis, **changes) -> RedisSection:
    fields = {"url": tls_redis["url"], "username": USER, "password_file": tls_redis["password_file"],
              "tls_ca_file": tls_redis["ca"].pem, "tls_cert_file": tls_redis["client"].cert,
              "tls_key_file": tls_redis["client"].key}
    return RedisSection(**{**fields, **changes})


async def test_rediss_with_a_client_certificate_and_an_acl_user_reads_and_writes(tls_redis):
    conn = RedisConnection(tls_redis["url"], "tls", redis_options(section(tls_redis)))
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
    conn = RedisConnection(tls_redis["url"], "tls", redis_options(section(tls_redis, **changes)))
    try:
        with pytest.raises(StartupError) as failed:
            await conn.connect(wait=1.5)
    finally:
        await conn.close()
    assert "does not answer" in failed.value.message and tls_redis["password"] not in failed.value.message


def test_settings_that_cannot_apply_are_refused_naming_the_field(tmp_path, tls_redis):
    with pytest.raises(ValueError, match="tls_ca_file need a rediss:// url"):
        RedisSection(url="redis://127.0.0.1:6379/0", tls_ca_file=tls_redis["ca"].pem)
    with pytest.raises(ValueError, match="tls_cert_file and tls_key_file go together"):
        RedisSection(url=tls_redis["url"], tls_cert_file=tls_redis["client"].cert)
    with pytest.raises(ValueError, match="embedded one has no ACL"):
        RedisSection(url="redis://127.0.0.1:6379/0", embedded=True, password_file=tls_redis["password_file"])
    loose = tmp_path / "loose.password"
    loose.write_text("secret\n")
    loose.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by other users"):
        redis_options(RedisSection(url=tls_redis["url"], password_file=loose))


def test_a_daemon_serves_through_tls_redis_with_an_acl_user_and_never_logs_the_password(tls_redis, tmp_path, models_dir):
    settings = {"url": tls_redis["url"], "username": USER, "password_file": str(tls_redis["password_file"]),
                "tls_ca_file": str(tls_redis["ca"].pem), "tls_cert_file": str(tls_redis["client"].cert),
                "tls_key_file": str(tls_redis["client"].key)}
    node = CynodeProcess(tmp_path, redis_url=tls_redis["url"], models_dir=models_dir, extra={
        "node": {"log_level": "debug"}, "redis": settings, "worker": {"backend": "sim"}})
    node.start(timeout=120)
    try:
        import httpx

        reply = httpx.post(f"{node.base_url}/v1/chat/completions", timeout=60, json={
            "model": "sim", "messages": [{"role": "user", "content": "over tls"}], "max_tokens": 3},
            headers={"Authorization": f"Bearer {node.api_key()}", "Cache-Control": "no-cache"})
        assert reply.status_code == 200, reply.text
        assert reply.headers.get("X-Cache") == "miss"
        with redis.Redis.from_url(tls_redis["url"], ssl_ca_certs=str(tls_redis["ca"].pem),
                                  ssl_certfile=str(tls_redis["client"].cert), ssl_keyfile=str(tls_redis["client"].key),
                                  username=USER, password=tls_redis["password"]) as r:
            assert r.keys("cynode:*:leader")  # the coordinator leads through the TLS Redis
    finally:
        assert node.terminate() == 0
    log = node.log_path.read_text()  # the whole file, every level (debug)
    assert tls_redis["password"] not in log and "rediss://127.0.0.1" in log
