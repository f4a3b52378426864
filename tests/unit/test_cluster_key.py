"""The cluster key file: generation, rotation order, and named errors."""

from __future__ import annotations

import base64
import io
import os
import sys

import pytest

from cynode.cli import main
from cynode.cluster_key import ensure_key_file, generate_key, key_id, load_keys
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


def test_cluster_key_steps_add_promote_retire_rewrite_the_file_and_never_print_a_key(tmp_path, capsys, monkeypatch):
    path = tmp_path / "cluster.key"
    ensure_key_file(path)
    (old,) = load_keys(path)
    new_text = generate_key()
    new = base64.b64decode(new_text)
    monkeypatch.setattr(sys, "stdin", io.StringIO(new_text + "\n"))
    assert main(["cluster-key", "add", "--key-file", str(path)]) == 0
    assert load_keys(path) == (old, new)
    assert main(["cluster-key", "retire", key_id(old), "--key-file", str(path)]) == 1  # it still signs
    assert main(["cluster-key", "promote", key_id(new), "--key-file", str(path)]) == 0
    assert load_keys(path) == (new, old)
    assert main(["cluster-key", "retire", key_id(old), "--key-file", str(path)]) == 0
    assert load_keys(path) == (new,) and path.stat().st_mode & 0o777 == 0o600
    assert main(["cluster-key", "list", "--key-file", str(path)]) == 0
    assert main(["cluster-key", "promote", "000000000000", "--key-file", str(path)]) == 1
    out = capsys.readouterr()
    assert f"{key_id(new)}  signs and encrypts" in out.out
    assert new_text not in out.out + out.err and base64.b64encode(old).decode() not in out.out + out.err
