"""`cynode doctor` before a first start: what it finds on a host, and that it says what to fix."""

from __future__ import annotations

import socket
import subprocess
import sys

import tomli_w

from cynode.cluster_key import ensure_key_file
from daemon_harness import free_port


def write_config(tmp_path, **sections) -> str:
    ports = {name: free_port() for name in ("gateway", "coordinator", "worker", "metrics", "gossip")}
    config = {
        "node": {"id": "doc-01", "data_dir": str(tmp_path / "data")},
        "gossip": {"bind": f"127.0.0.1:{ports['gossip']}"},
        "gateway": {"listen": f"127.0.0.1:{ports['gateway']}"},
        "coordinator": {"listen": f"127.0.0.1:{ports['coordinator']}"},
        "worker": {"listen": f"127.0.0.1:{ports['worker']}", "backend": "sim"},
        "metrics": {"listen": f"127.0.0.1:{ports['metrics']}"},
    }
    for section, values in sections.items():
        config.setdefault(section, {}).update(values)
    path = tmp_path / "node.toml"
    path.write_text(tomli_w.dumps(config))
    return str(path)


def doctor(config: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cynode", "doctor", "-c", config], capture_output=True, text=True,
                          timeout=120)


def test_a_ready_host_passes(tmp_path, redis_server):
    result = doctor(write_config(tmp_path, redis={"url": redis_server.url}))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "answers PING" in result.stdout and "everything checked is fine" in result.stdout
    assert "[gossip] 127.0.0.1:" in result.stdout and "(udp) is free" in result.stdout


def test_every_problem_is_named_with_its_fix_and_the_exit_status_is_1(tmp_path):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    busy_port = busy.getsockname()[1]
    loose_key = tmp_path / "cluster.key"
    ensure_key_file(loose_key)
    loose_key.chmod(0o644)
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    try:
        config = write_config(tmp_path, redis={"url": dead_redis}, cluster={"key_file": str(loose_key)},
                              gateway={"listen": f"127.0.0.1:{busy_port}",
                                       "api_keys_file": str(tmp_path / "missing-keys.toml")},
                              worker={"backend": "ascend-vllm"})
        result = doctor(config)
    finally:
        busy.close()
    out = result.stdout
    assert result.returncode == 1, out
    assert f"[gateway] 127.0.0.1:{busy_port} (tcp): in use by another process" in out
    assert f"{loose_key} has mode 0644: other users can read it" in out and f"fix: chmod 600 {loose_key}" in out
    assert "missing-keys.toml does not exist" in out
    assert f"{dead_redis} does not answer" in out and "fix: start Redis there" in out
    assert "needs a ascend device, but /dev/davinci0 is missing" in out
    assert "problem(s)" in out


def test_a_broken_config_is_reported_like_config_check(tmp_path):
    path = tmp_path / "node.toml"
    path.write_text('[gossip]\nbind = "nowhere"\n')
    result = doctor(str(path))
    assert result.returncode == 2 and "[gossip] bind" in result.stderr


def test_an_embedded_redis_needs_its_port_free(tmp_path, redis_server):
    port = int(redis_server.url.rsplit(":", 1)[1].split("/")[0])  # the session's redis-server holds it
    result = doctor(write_config(tmp_path, redis={"url": f"redis://127.0.0.1:{port}/0", "embedded": True}))
    assert result.returncode == 1 and f"the embedded Redis port {port}: in use" in result.stdout


def test_the_redis_check_connects_as_the_daemon_does_over_tls_as_the_acl_user(tmp_path, tls_redis):
    """[redis] TLS files, user and password are used; a plain PING to the url would be refused there."""
    cache_url = tls_redis.url.rsplit("/", 1)[0] + "/1"
    result = doctor(write_config(tmp_path, redis=tls_redis.settings(),
                                 coordinator={"prompt_cache": {"redis_url": cache_url}}))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("answers PING over TLS as ACL user cynode-app") == 2  # [redis] and the cache's Redis
    assert tls_redis.password not in result.stdout + result.stderr


def test_what_tls_redis_refuses_is_a_finding_without_the_password(tmp_path, tls_redis):
    wrong = tmp_path / "wrong.password"
    wrong.write_text("not-the-password\n")
    wrong.chmod(0o600)
    for changes in ({"password_file": str(wrong)}, {"tls_cert_file": None, "tls_key_file": None}):
        settings = {k: v for k, v in tls_redis.settings(**changes).items() if v is not None}
        result = doctor(write_config(tmp_path, redis=settings))
        assert result.returncode == 1, result.stdout
        assert f"FAIL  redis        [redis] url {tls_redis.url} does not answer" in result.stdout, result.stdout
        assert tls_redis.password not in result.stdout + result.stderr
