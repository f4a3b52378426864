"""The `[redis]` section as a connection (`open_redis`): TLS and ACL settings as redis-py options, Sentinels.

`rediss://` turns TLS on (redis-py); the server's certificate is always verified, against
`tls_ca_file` or the system's CAs, with its host name checked. `username` and the password read from
`password_file` log in with AUTH user password (Redis 6 ACLs). The password never reaches a log line:
errors name the file, and `safe_url` strips a password from the url.

The prompt cache's separate Redis, when there is one, is reached with the same settings
(`redis_options(section, url)`); a config whose `[redis]` is secured while the cache url is not is
refused when it loads (`NodeConfig`), so the cache never sends prompts and answers in the clear.
"""

from __future__ import annotations

from typing import Any

from .config.sections import RedisSection
from .config.types import split_host_port
from .errors import ConfigError
from .redis_conn import RedisConnection


def open_redis(section: RedisSection, cluster: str) -> RedisConnection:
    """The connection `[redis]` describes: the url's server, or the master its Sentinels name."""
    return RedisConnection(
        section.url, cluster, redis_options(section),
        sentinels=[split_host_port(s) for s in section.sentinels], master_name=section.master_name,
        wait_replicas=section.wait_replicas if section.sentinels else 0, wait_timeout=section.wait_timeout,
    )


def redis_options(section: RedisSection, url: str = "") -> dict[str, Any]:
    """Keyword arguments for `redis.Redis.from_url` (sync or asyncio) beyond the url; ConfigError names
    the field. `url`: a Redis other than `section.url` reached with the same user, password and TLS
    files (the prompt cache's own, `[coordinator.prompt_cache] redis_url`); a user or password in that
    url wins, as redis-py gives the url's credentials precedence."""
    options: dict[str, Any] = {}
    if section.username:
        options["username"] = section.username
    if section.password_file is not None:
        options["password"] = read_password(section.password_file)
    if (url or section.url).startswith("rediss://"):
        options["ssl_cert_reqs"] = "required"
        options["ssl_check_hostname"] = True
        for name, option in (("tls_ca_file", "ssl_ca_certs"), ("tls_cert_file", "ssl_certfile"), ("tls_key_file", "ssl_keyfile")):
            path = getattr(section, name)
            if path is None:
                continue
            if not path.is_file():
                raise ConfigError(f"[redis] {name}", [f"{path}: not a readable file"])
            options[option] = str(path)
    return options


def read_password(path) -> str:
    try:
        if path.stat().st_mode & 0o077:
            raise ConfigError("[redis] password_file", [f"{path} is readable by other users; run `chmod 600 {path}`"])
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise ConfigError("[redis] password_file", [f"{path} not found"]) from None
    except PermissionError:
        raise ConfigError("[redis] password_file", [f"{path}: permission denied"]) from None
    password = lines[0].strip() if lines else ""
    if not password:
        raise ConfigError("[redis] password_file", [f"{path} is empty (the first line is the password)"])
    return password
