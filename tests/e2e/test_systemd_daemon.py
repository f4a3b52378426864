"""A real daemon started the way systemd starts a `Type=notify` unit: a NOTIFY_SOCKET the test
listens on, a watchdog deadline, stdout connected to "the journal"."""

from __future__ import annotations

import os
import re
import signal

import httpx

from daemon_harness import CynodeProcess
from notify_socket import NotifySocket


def test_systemd_gets_status_ready_watchdog_and_stopping_in_order_and_journal_lines(tmp_path, redis_server, models_dir):
    fake_systemd = NotifySocket(tmp_path / "notify.sock")
    node = CynodeProcess(tmp_path / "node", redis_url=redis_server.url, models_dir=models_dir,
                         extra={"worker": {"backend": "sim"}, "node": {"drain_timeout": "5s"}})
    node.log_path.touch()
    log_stat = os.stat(node.log_path)  # the harness appends stdout to this file: it plays the journal stream
    node.env.update(NOTIFY_SOCKET=str(fake_systemd.path), WATCHDOG_USEC="1000000",
                    JOURNAL_STREAM=f"{log_stat.st_dev}:{log_stat.st_ino}")
    try:
        node.start(timeout=120)
        got = fake_systemd.wait_for(lambda a: "READY=1" in a and a, 30, "READY=1")
        assert httpx.get(f"{node.metrics_url}/readyz", timeout=5).status_code == 200
        ready = got.index("READY=1")
        first_status = next(i for i, s in enumerate(got) if s.startswith("STATUS="))
        assert got[first_status].startswith("STATUS=starting") and first_status < ready, got[:5]
        fake_systemd.wait_for(lambda a: any(re.match(r"STATUS=serving: .*coordinator leader \(epoch \d+\)", s) for s in a),
                              30, "a status line saying this node leads")
        # Pings every half second (half of WATCHDOG_USEC) once serving.
        fake_systemd.wait_for(lambda a: a[ready:].count("WATCHDOG=1") >= 4, 10, "watchdog pings after READY")
        node.proc.send_signal(signal.SIGTERM)
        assert node.proc.wait(60) == 0, node.log()
        got = fake_systemd.assignments()
    finally:
        node.kill()
        fake_systemd.close()

    stopping = got.index("STOPPING=1")
    assert ready < stopping and got.count("READY=1") == 1 and got.count("STOPPING=1") == 1
    assert "WATCHDOG=1" in got[ready:stopping]
    assert any(s.startswith("STATUS=draining") for s in got[stopping:]), got[stopping:]
    status = [s for s in got if s.startswith("STATUS=")]
    assert any("worker loaded: sim" in s for s in status), status

    # Journal lines: a priority prefix instead of a level name, and no timestamp (the journal has one).
    lines = [line for line in node.log().splitlines() if line.startswith("<")]
    assert any(re.match(r"<6>\[node-\d+\] cynode\.daemon: node node-\d+ ready", line) for line in lines), lines[:5]
    assert any(line.startswith("<6>") and "SIGTERM received: draining" in line for line in lines)
    assert not any(re.match(r"(<\d>)?\d{4}-\d\d-\d\d", line) for line in node.log().splitlines())
