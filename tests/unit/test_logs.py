"""Daemon logs on stdout: readable text by default, one JSON object per line when asked."""

from __future__ import annotations

import json
import logging

import pytest

from cynode.logs import setup_logging


@pytest.fixture(autouse=True)
def restore_logging():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_logs_are_one_object_per_line_with_level_logger_and_message(capsys):
    setup_logging("json", "info", "edge-01")
    logging.getLogger("cynode.test").warning("worker %s is unhealthy", "w1")
    logging.getLogger("cynode.test").debug("not shown at info")
    lines = [line for line in capsys.readouterr().out.splitlines() if line]
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["level"] == "warning" and entry["logger"] == "cynode.test"
    assert entry["msg"] == "worker w1 is unhealthy" and entry["ts"].endswith("Z")


def test_text_logs_name_the_node(capsys):
    setup_logging("text", "info", "edge-01")
    logging.getLogger("cynode.test").info("ready")
    out = capsys.readouterr().out
    assert "[edge-01] cynode.test: ready" in out


def test_under_journald_lines_carry_a_priority_and_no_timestamp(capsys):
    setup_logging("text", "info", "edge-01", journal=True)
    log = logging.getLogger("cynode.test")
    log.info("ready")
    log.warning("slow worker")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("reload failed")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "<6>[edge-01] cynode.test: ready"
    assert lines[1] == "<4>[edge-01] cynode.test: slow worker"
    assert lines[2] == "<3>[edge-01] cynode.test: reload failed"
    assert len(lines) > 4 and all(line.startswith("<3>") for line in lines[2:])  # the traceback too


def test_journald_is_recognised_by_the_stream_systemd_names(tmp_path):
    import os

    from cynode.logs import under_journald

    with open(tmp_path / "journal", "w") as stream:
        info = os.fstat(stream.fileno())
        assert under_journald({"JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}"}, stream)
        assert not under_journald({"JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino + 1}"}, stream)  # stdout redirected elsewhere
        assert not under_journald({}, stream)
