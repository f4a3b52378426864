"""The cluster key file: generation, rotation order, and named errors."""

from __future__ import annotations

import base64
import os

import pytest

from cynode.cluster_key import ensure_key_file, generate_key, load_keys
from cynode.errors import ConfigError


def test_the_first_start_creates_a_private_key_file(tmp_path):
    path = tmp_path / "sub" / "cluster.key"
    assert ensure_key_file(path) is True
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert len(load_keys(path)) == 1
    assert ensure_key_file(path) is False


def test_keys_load_in_file_order_for_rotation(tmp_path):
    first, second = generate_key(), generate_key()
    path = tmp_path / "cluster.key"
    path.write_text(f"# rotation\n{first}\n\n{second}\n")
    path.chmod(0o600)
    assert load_keys(path) == (base64.b64decode(first), base64.b64decode(second))


def test_bad_lines_are_named(tmp_path):
    path = tmp_path / "cluster.key"
    path.write_text(f"not base64!\n{base64.b64encode(b'short').decode()}\n")
    path.chmod(0o600)
    with pytest.raises(ConfigError) as caught:
        load_keys(path)
    assert "line 1: not base64" in str(caught.value)
    assert "line 2: key is 5 bytes, expected 32" in str(caught.value)


def test_a_key_file_others_can_read_is_refused(tmp_path):
    path = tmp_path / "cluster.key"
    path.write_text(generate_key() + "\n")
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_keys(path)
