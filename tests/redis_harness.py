"""A real redis-server on a free loopback port, for tests that need to stop, restart or corrupt it."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from daemon_harness import free_port


class RedisServer:
    """A real redis-server on a free loopback port, with its own data folder."""

    def __init__(self, data_dir: Path, port: int | None = None, args: tuple[str, ...] = ()) -> None:
        """`args`: more redis-server options (`--replicaof 127.0.0.1 6379`, ...)."""
        self.data_dir = data_dir
        self.port = port or free_port()
        self.args = args
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install -y redis-server); the tests need a real Redis")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.data_dir),
             "--save", "", "--appendonly", "yes", "--protected-mode", "yes", *self.args],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not answer on 127.0.0.1:{self.port}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def kill(self) -> None:
        """kill -9: no AOF flush, no goodbye to replicas (a crashed master)."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

ACL_USER = "cynode-app"


@dataclass
class TlsRedis:
    """A real redis-server that speaks TLS only, requires client certificates under its own test CA and
    knows one ACL user (the default user is off): what `[redis]` TLS and ACL settings are tested against."""

    url: str
    ca: object  # tls_certs.TestCa
    client: object  # tls_certs.Pair
    password: str
    password_file: Path
    folder: Path
    proc: subprocess.Popen

    def settings(self, **changes) -> dict:
        """The `[redis]` table (node.toml form) that connects to it."""
        fields = {"url": self.url, "username": ACL_USER, "password_file": str(self.password_file),
                  "tls_ca_file": str(self.ca.pem), "tls_cert_file": str(self.client.cert),
                  "tls_key_file": str(self.client.key)}
        return {**fields, **changes}

    def client_for_tests(self):
        import redis

        return redis.Redis.from_url(self.url, ssl_ca_certs=str(self.ca.pem), ssl_certfile=str(self.client.cert),
                                    ssl_keyfile=str(self.client.key), username=ACL_USER, password=self.password)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def start_tls_redis(folder: Path) -> TlsRedis:
    import secrets

    import redis

    from tls_certs import TestCa

    ca = TestCa(folder / "pki")
    server, client = ca.issue("redis-server"), ca.issue("cynode-client", hosts=("cynode",))
    password = secrets.token_urlsafe(24)
    port = free_port()
    proc = subprocess.Popen(
        [shutil.which("redis-server"), "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(server.cert), "--tls-key-file", str(server.key), "--tls-ca-cert-file", str(ca.pem),
         "--tls-auth-clients", "yes", "--dir", str(folder), "--save", "",
         "--user", "default", "off", "--user", ACL_USER, "on", f">{password}", "~*", "&*", "+@all"],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 15
    while True:
        try:
            redis.Redis(host="127.0.0.1", port=port, ssl=True, ssl_ca_certs=str(ca.pem), ssl_certfile=str(client.cert),
                        ssl_keyfile=str(client.key), username=ACL_USER, password=password).ping()
            break
        except redis.RedisError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("redis-server with TLS did not answer (is it built with TLS?)") from None
            time.sleep(0.1)
    password_file = folder / "redis.password"
    password_file.write_text(password + "\n")
    password_file.chmod(0o600)
    return TlsRedis(f"rediss://127.0.0.1:{port}/0", ca, client, password, password_file, folder, proc)
