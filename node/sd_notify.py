"""systemd readiness (`Type=notify`): READY=1 once every role serves, STOPPING=1 on shutdown."""

from __future__ import annotations

import socket


def notify(state: str, socket_path: str | None) -> None:
    """Send `state` to the NOTIFY_SOCKET the daemon was given; a no-op without one."""
    if not socket_path:
        return
    address = "\0" + socket_path[1:] if socket_path.startswith("@") else socket_path
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError:
        pass  # readiness is a courtesy to the supervisor, never a reason to fail
