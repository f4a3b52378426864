"""`make report`'s renderer: records in, a Markdown report with its PNG plots out."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPORT = Path(__file__).with_name("report.py")


def _records(folder: Path) -> None:
    records = [{"id": f"r{i}", "gateway": "g0", "stream": i % 2 == 0, "max_tokens": 8, "start": 100.0 + i * 0.2,
                "first": 100.1 + i * 0.2, "end": 100.3 + i * 0.2 + (1.5 if 10 <= i < 15 else 0),
                "status": 200 if i != 12 else 503, "finish": "length", "text_hash": "h",
                "error": "" if i != 12 else "unavailable", "cache": "miss", "connect_retries": 0} for i in range(40)]
    run = {"summary": {"requests": 40, "ok": 39, "lost": 0, "recovery_s": [1.7]},
           "faults": [{"kind": "kill -9 leader", "at": 102.0, "healed": 103.0}], "records": records}
    folder.mkdir()
    (folder / "fault_kill9_leader.json").write_text(json.dumps(run))


@pytest.mark.timeout(120)
def test_the_report_has_a_table_and_its_plots_beside_each_scenario(tmp_path):
    _records(tmp_path / "records")
    done = subprocess.run([sys.executable, str(REPORT), str(tmp_path / "records"), str(tmp_path / "report"),
                           "--command", "make report"], capture_output=True, text=True, timeout=100)
    assert done.returncode == 0, done.stderr
    report = Path(done.stdout.strip())
    text = report.read_text()
    assert "Produced by: `make report`" in text and "| [fault_kill9_leader]" in text
    for png in ("fault_kill9_leader-latency.png", "fault_kill9_leader-throughput.png", "recovery.png"):
        assert f"]({png})" in text
        assert (report.parent / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_records_is_an_error_that_says_how_to_make_them(tmp_path):
    (tmp_path / "empty").mkdir()
    done = subprocess.run([sys.executable, str(REPORT), str(tmp_path / "empty"), str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "CHAOS_OUT=" in done.stderr
