"""sd_notify as systemd receives it: datagrams on NOTIFY_SOCKET, watchdog pings from the event loop."""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid

import pytest

from cynode.systemd import Notifier, ping_watchdog, report_status, status_line
from notify_socket import NotifySocket


@pytest.fixture
def fake_systemd(tmp_path):
    listener = NotifySocket(tmp_path / "notify.sock")
    yield listener
    listener.close()


def test_notifications_arrive_as_key_value_datagrams(fake_systemd):
    notifier = Notifier(str(fake_systemd.path))
    notifier.status("loading model smollm2")
    notifier.ready("serving: gateway listening")
    notifier.watchdog()
    notifier.stopping("draining")
    fake_systemd.wait_for(lambda got: "STOPPING=1" in got, 5, "STOPPING=1")
    assert fake_systemd.assignments() == ["STATUS=loading model smollm2", "READY=1", "STATUS=serving: gateway listening",
                                          "WATCHDOG=1", "STOPPING=1", "STATUS=draining"]
    notifier.close()


def test_an_abstract_socket_name_is_reached_too():
    name = f"cynode-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind("\0" + name)
        receiver.settimeout(5)
        Notifier("@" + name).ready()
        assert receiver.recv(100) == b"READY=1"


def test_without_a_socket_nothing_is_sent_and_nothing_fails():
    notifier = Notifier(None)
    notifier.ready()
    notifier.watchdog()
    assert not notifier.enabled


def test_a_supervisor_that_went_away_is_not_an_error(tmp_path, caplog):
    notifier = Notifier(str(tmp_path / "gone.sock"))
    notifier.ready()
    notifier.status("still fine")
    assert sum("systemd notification" in r.message for r in caplog.records) == 1


def test_the_variables_are_taken_out_of_the_environment_so_children_do_not_inherit_them():
    environ = {"NOTIFY_SOCKET": "/run/x.sock", "WATCHDOG_USEC": "20000000", "WATCHDOG_PID": str(os.getpid()), "PATH": "/bin"}
    notifier = Notifier.from_environ(environ)
    assert environ == {"PATH": "/bin"}
    assert notifier.socket_path == "/run/x.sock" and notifier.watchdog_period == 10.0


def test_a_watchdog_meant_for_another_process_is_not_ours():
    environ = {"NOTIFY_SOCKET": "/run/x.sock", "WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "1"}
    assert Notifier.from_environ(environ, pid=4242).watchdog_period is None
    assert Notifier.from_environ({"NOTIFY_SOCKET": "/s", "WATCHDOG_USEC": "soon"}).watchdog_period is None


def test_the_status_line_says_the_phase_and_what_each_role_reports():
    line = status_line("serving", {"worker": (True, "loaded: smollm2"), "coordinator": (True, "leader (epoch 3)")})
    assert line == "serving: worker loaded: smollm2; coordinator leader (epoch 3)"
    assert status_line("starting", {}) == "starting"


async def test_status_is_sent_only_when_it_changes(fake_systemd):
    notifier = Notifier(str(fake_systemd.path))
    lines = iter(["starting", "starting", "starting\nworker loading model m", "serving"])
    last = ["serving"]

    def line():
        last[0] = next(lines, last[0])
        return last[0]

    task = asyncio.create_task(report_status(notifier, line, every=0.01))
    await fake_systemd.wait_for_async(lambda got: "STATUS=serving" in got, 5, "the serving status")
    await asyncio.sleep(0.1)
    task.cancel()
    assert fake_systemd.assignments() == ["STATUS=starting", "STATUS=starting worker loading model m", "STATUS=serving"]


async def test_watchdog_pings_come_every_half_deadline_and_stop_while_the_loop_is_wedged(fake_systemd):
    notifier = Notifier(str(fake_systemd.path), watchdog_usec=200_000)  # ping every 0.1 s
    task = asyncio.create_task(ping_watchdog(notifier))
    await fake_systemd.wait_for_async(lambda got: got.count("WATCHDOG=1") >= 5, 5, "five pings")

    # Wedge the loop on purpose: a blocking call on it, as a bug would.
    wedged_at = time.monotonic()
    time.sleep(1.5)
    released_at = time.monotonic()
    await asyncio.sleep(0.35)  # the loop runs again: pings resume
    task.cancel()

    pings = fake_systemd.times_of("WATCHDOG=1")
    during = [t for t in pings if wedged_at + 0.05 < t < released_at]
    after = [t for t in pings if t > released_at]
    assert during == [], f"{len(during)} ping(s) arrived while the loop was stuck"
    assert len(after) >= 2, "pings should resume once the loop runs again"
    before = [t for t in pings if t < wedged_at]
    gaps = [b - a for a, b in zip(before, before[1:])]
    assert max(gaps) < 0.5, f"pings before the wedge should be about 0.1 s apart, got {gaps}"


async def test_no_watchdog_means_no_pinger():
    await asyncio.wait_for(ping_watchdog(Notifier("/run/x.sock")), 1)  # returns at once
