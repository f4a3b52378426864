"""node.toml: defaults, named errors for every section, and env overrides over the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from cynode.config import load_config
from cynode.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(text)
    return path


def problems(tmp_path: Path, text: str, env: dict | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text), env or {})
    return str(caught.value)


def test_an_empty_file_gives_the_documented_defaults(tmp_path):
    config = load_config(write(tmp_path, ""), {})
    assert config.node.roles == ("gateway", "coordinator", "worker")
    assert config.node.data_dir == Path("/var/lib/cynode")
    assert config.gossip.bind == "0.0.0.0:7946" and config.gossip.profile == "lan"
    assert config.redis.url == "redis://127.0.0.1:6379/0" and config.redis.embedded is False
    assert config.gateway.listen == "0.0.0.0:8080"
    assert config.coordinator.listen == "0.0.0.0:50050"
    assert (config.coordinator.health_check_interval, config.coordinator.health_check_timeout) == (10.0, 5.0)
    assert config.coordinator.max_retries == 3
    assert config.coordinator.task_queue.max_size == 1000 and config.coordinator.task_queue.default_priority == 0
    assert config.coordinator.prompt_cache.ttl == 1800.0 and config.coordinator.prompt_cache.max_size == 10000
    assert config.worker.listen == "0.0.0.0:50051" and config.worker.backend == "auto" and config.worker.weight == 100
    assert config.metrics.listen == "0.0.0.0:9090"
    assert config.api_keys_path == Path("/var/lib/cynode/api-keys.toml")


def test_the_architecture_example_loads(tmp_path):
    config = load_config(write(tmp_path, """
[node]
id = "edge-01"
roles = ["gateway", "coordinator", "worker"]
data_dir = "/var/lib/cynode"
advertise = "10.0.0.11"
[cluster]
name = "default"
seeds = ["10.0.0.12:7946", "10.0.0.13:7946"]
key_file = "/etc/cynode/cluster.key"
[gossip]
bind = "0.0.0.0:7946"
profile = "lan"
[redis]
url = "redis://127.0.0.1:6379/0"
embedded = false
[gateway]
listen = "0.0.0.0:8080"
api_keys_file = "/etc/cynode/api-keys.toml"
[coordinator]
listen = "0.0.0.0:50050"
health_check_interval = "10s"
health_check_timeout = "5s"
max_retries = 3
[coordinator.task_queue]
max_size = 1000
default_priority = 0
[coordinator.prompt_cache]
enabled = true
ttl = "1800s"
max_size = 10000
[[coordinator.workers]]
id = "worker-1"
host = "localhost"
port = 50051
weight = 100
tags = ["cuda", "inference", "training"]
[worker]
listen = "0.0.0.0:50051"
backend = "auto"
model_registry = "/etc/cynode/models.json"
weight = 100
tags = ["inference", "training"]
[metrics]
listen = "0.0.0.0:9090"
"""), {})
    assert config.node.id == "edge-01"
    assert config.coordinator.workers[0].tags == ("cuda", "inference", "training")
    assert config.cluster.seeds == ("10.0.0.12:7946", "10.0.0.13:7946")


@pytest.mark.parametrize("text, expected", [
    ('[node]\nroles = ["gateway", "chef"]', "[node] roles[1]"),
    ('[node]\nid = ""', "[node] id"),
    ('[node]\ndrain_timeout = 30', '[node] drain_timeout 30 has no unit'),
    ('[cluster]\nseeds = ["10.0.0.5:7946", "10.0.0.6"]', '[cluster] seeds[1] \'10.0.0.6\' has no port (expected host:port)'),
    ('[gossip]\nprofile = "moon"', "[gossip] profile 'moon'"),
    ('[gossip]\nbind = "0.0.0.0:99999"', "[gossip] bind '0.0.0.0:99999' has a bad port"),
    ('[redis]\nurl = "http://x"', "[redis] url 'http://x' is not a Redis URL"),
    ('[redis]\nembedded = true\nurl = "redis://10.1.2.3:6379/0"', "[redis] embedded = true needs a loopback"),
    ('[gateway]\nlisten = "8080"', "[gateway] listen '8080' has no port"),
    ('[coordinator]\nhealth_check_interval = "ten seconds"', "[coordinator] health_check_interval 'ten seconds' is not a duration"),
    ('[coordinator]\nhealth_check_interval = "1s"\nhealth_check_timeout = "5s"', "health_check_timeout must not exceed"),
    ('[coordinator.task_queue]\nmax_size = 0', "[coordinator] task_queue.max_size 0"),
    ('[[coordinator.workers]]\nid = "w"', "[coordinator] workers[0].host Field required"),
    ('[worker]\nbackend = "tpu"', "[worker] backend 'tpu'"),
    ('[metrics]\nlisten = "[::1"', "[metrics] listen"),
    ('[gossip]\nprofle = "lan"', "[gossip] profle unknown key"),
    ('[nodes]\nid = "x"', "[nodes] unknown key"),
])
def test_each_section_names_the_bad_key_and_the_reason(tmp_path, text, expected):
    message = problems(tmp_path, text)
    assert str(tmp_path / "node.toml") in message
    assert expected in message


def test_every_problem_is_reported_at_once(tmp_path):
    message = problems(tmp_path, '[gossip]\nprofile = "moon"\n[worker]\nweight = 0')
    assert "[gossip] profile" in message and "[worker] weight" in message


def test_a_file_that_is_not_toml_names_the_file(tmp_path):
    message = problems(tmp_path, "[node\nid = 1")
    assert "node.toml: not valid TOML" in message


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.toml: file not found"):
        load_config(tmp_path / "nope.toml", {})


def test_env_overrides_win_over_the_file(tmp_path):
    path = write(tmp_path, '[redis]\nurl = "redis://127.0.0.1:1111/0"\n[coordinator.task_queue]\nmax_size = 5\n'
                           '[worker]\nbackend = "cpu-transformers"\nlisten = "127.0.0.9:1234"')
    config = load_config(path, {
        "CYNODE_REDIS__URL": "redis://127.0.0.1:2222/0",
        "CYNODE_REDIS__EMBEDDED": "true",
        "CYNODE_COORDINATOR__TASK_QUEUE__MAX_SIZE": "7",
        "CYNODE_NODE__ROLES": '["worker"]',
        "PREFERRED_BACKEND": "cuda-vllm",
        "GRPC_PORT": "6000",
        "MODEL_REGISTRY_PATH": "/opt/models.json",
        "CY_LLM_COORDINATOR_HOST": "10.0.0.2",
        "CY_LLM_COORDINATOR_PORT": "50099",
    })
    assert config.redis.url == "redis://127.0.0.1:2222/0" and config.redis.embedded is True
    assert config.coordinator.task_queue.max_size == 7
    assert config.node.roles == ("worker",)
    assert config.worker.backend == "cuda-vllm"
    assert config.worker.listen == "127.0.0.9:6000"
    assert config.worker.model_registry == Path("/opt/models.json")
    assert config.gateway.coordinator == "10.0.0.2:50099"


def test_a_bad_env_override_names_the_variable(tmp_path):
    message = problems(tmp_path, "", {"CYNODE_GOSSIP__PROFILE": "moon"})
    assert "[gossip] profile 'moon'" in message and "environment CYNODE_GOSSIP__PROFILE" in message


def test_flags_win_over_env(tmp_path):
    config = load_config(write(tmp_path, ""), {"CYNODE_NODE__DATA_DIR": "/env"}, {"node.data_dir": "/flag"})
    assert config.node.data_dir == Path("/flag")


def test_durations_accept_units(tmp_path):
    config = load_config(write(tmp_path, '[coordinator]\nhealth_check_interval = "2m"\nhealth_check_timeout = "1500ms"'), {})
    assert config.coordinator.health_check_interval == 120.0
    assert config.coordinator.health_check_timeout == 1.5


def test_config_is_frozen(tmp_path):
    config = load_config(write(tmp_path, ""), {})
    with pytest.raises(Exception):
        config.node.id = "other"  # type: ignore[misc]


def test_a_separate_cache_redis_is_refused_beside_sentinels_naming_the_field(tmp_path):
    said = problems(tmp_path, """
[redis]
sentinels = ["127.0.0.1:26379"]
master_name = "cynode"
[coordinator.prompt_cache]
redis_url = "redis://10.0.0.9:6379/0"
""")
    assert "[coordinator.prompt_cache] redis_url" in said and "sentinels" in said


def test_without_a_cache_url_sentinels_load(tmp_path):
    config = load_config(write(tmp_path, """
[redis]
sentinels = ["127.0.0.1:26379"]
master_name = "cynode"
"""))
    assert config.coordinator.prompt_cache.redis_url == "" and config.redis.sentinels
