"""A real Redis Sentinel group for tests: a master, two replicas and three Sentinels (`redis-server
--sentinel`, the same binary), all on loopback ports of their own. Two replicas, because with
`[redis] wait_replicas = 1` the promoted master needs one replica left to confirm writes to.

    group = SentinelGroup(tmp_path).start()
    group.sentinels          # ["127.0.0.1:p1", ...] for [redis] sentinels
    group.master_address()   # what the Sentinels say now
    group.kill_master()      # kill -9; wait_failover() until they promoted the replica

The Sentinels judge a master down after 1 s without answers (the default, 30 s, is for WANs and
would make a test wait); quorum 2 of 3, as in production.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import redis
import redis.sentinel

from daemon_harness import free_port, wait_for
from redis_harness import RedisServer

MASTER_NAME = "cynode-test"


class SentinelGroup:
    def __init__(self, workdir: Path, *, down_after_ms: int = 1000) -> None:
        self.workdir = workdir
        self.down_after_ms = down_after_ms
        self.master = RedisServer(workdir / "master")
        self.replicas = [RedisServer(workdir / f"replica{i}", args=("--replicaof", "127.0.0.1", str(self.master.port)))
                         for i in range(2)]
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.procs: list[subprocess.Popen] = []

    @property
    def sentinels(self) -> list[str]:
        return [f"127.0.0.1:{p}" for p in self.sentinel_ports]

    @property
    def servers(self) -> list[RedisServer]:
        return [self.master, *self.replicas]

    def start(self) -> "SentinelGroup":
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed; the Sentinel tests need a real Redis")
        self.master.start()
        for replica in self.replicas:
            replica.start()
        wait_for(self._replicas_in_sync, 20, "the replicas to sync with the master")
        for port in self.sentinel_ports:
            folder = self.workdir / f"sentinel-{port}"
            folder.mkdir(parents=True, exist_ok=True)
            conf = folder / "sentinel.conf"  # Sentinel rewrites its own config file: it must be writable
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {folder}\n"
                f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.master.port} 2\n"
                f"sentinel down-after-milliseconds {MASTER_NAME} {self.down_after_ms}\n"
                f"sentinel failover-timeout {MASTER_NAME} 5000\n"
                f"sentinel parallel-syncs {MASTER_NAME} 1\n"
            )
            self.procs.append(subprocess.Popen([binary, str(conf), "--sentinel"], stdout=subprocess.DEVNULL,
                                               stderr=subprocess.STDOUT))
        wait_for(self._sentinels_agree, 30, "three Sentinels that know the master, its replica and each other")
        return self

    def _replicas_in_sync(self) -> bool:
        for replica in self.replicas:
            with redis.Redis(port=replica.port, socket_timeout=2) as r:
                if r.info("replication").get("master_link_status") != "up":
                    return False
        return True

    def _sentinels_agree(self) -> bool:
        try:
            for port in self.sentinel_ports:
                with redis.Redis(port=port, socket_timeout=2, decode_responses=True) as s:
                    master = s.sentinel_master(MASTER_NAME)
                    if int(master["num-other-sentinels"]) < 2 or int(master["num-slaves"]) < len(self.replicas):
                        return False
        except redis.RedisError:
            return False
        return True

    def client(self) -> redis.Redis:
        """A client of the current master, found through the Sentinels."""
        sentinel = redis.sentinel.Sentinel([("127.0.0.1", p) for p in self.sentinel_ports],
                                           sentinel_kwargs={"socket_timeout": 2})
        return sentinel.master_for(MASTER_NAME, decode_responses=True, socket_timeout=5)

    def master_address(self) -> tuple[str, int] | None:
        for port in self.sentinel_ports:
            try:
                with redis.Redis(port=port, socket_timeout=2, decode_responses=True) as s:
                    host, master_port = s.sentinel_get_master_addr_by_name(MASTER_NAME)
                    return host, int(master_port)
            except (redis.RedisError, TypeError):
                continue
        return None

    def kill_master(self) -> float:
        """kill -9 of the current master; returns when (time.monotonic)."""
        address = self.master_address()
        victim = next(s for s in self.servers if address and s.port == address[1])
        at = time.monotonic()
        victim.kill()
        self.killed = victim
        return at

    def wait_failover(self, timeout: float = 30) -> tuple[str, int]:
        """Until the Sentinels name a master other than the one killed, it answers as a master, and
        the other replica follows it (so writes can be confirmed again)."""
        def promoted():
            address = self.master_address()
            if not address or address[1] == self.killed.port:
                return None
            try:
                with redis.Redis(port=address[1], socket_timeout=2) as r:
                    info = r.info("replication")
                    return address if info["role"] == "master" and int(info["connected_slaves"]) >= 1 else None
            except redis.RedisError:
                return None
        return wait_for(promoted, timeout, "the Sentinels to promote the replica")

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(10)
        for server in self.servers:
            server.stop()
