"""systemd's notify protocol (sd_notify), in the standard library: READY, STATUS, WATCHDOG,
STOPPING as datagrams to $NOTIFY_SOCKET. Does nothing when not run by systemd."""

from __future__ import annotations

import os
import socket


class Notifier:
    def __init__(self):
        address = os.environ.get("NOTIFY_SOCKET")
        self._address = None
        self._sock = None
        if address:
            # A leading '@' names a socket in the abstract namespace.
            self._address = "\0" + address[1:] if address.startswith("@") else address
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        watched = usec and usec.isdigit() and (not pid or pid == str(os.getpid()))
        # Ping at half the interval systemd waits, as sd_watchdog_enabled(3) advises.
        self.watchdog_interval = int(usec) / 2e6 if watched else None

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, *fields: str) -> None:
        if self._sock is None:
            return
        try:
            self._sock.sendto("\n".join(fields).encode(), self._address)
        except OSError:
            pass  # systemd gone or socket full: never a reason to stop serving

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
