"""Where publishers find the daemon, kept there while it runs.

A daemon is reached through files: its ipc socket files (in the runtime folder, which a
cleaner of /run or /tmp, or an operator, may delete) and ``<db>-daemon``, which names its
endpoints. Once one is deleted the daemon looks alive while no new publisher can reach
it. So the daemon checks them every few seconds: a socket file that is gone is bound
again (its folder made again), a ``<db>-daemon`` that is gone is written again; each
repair is logged, and what cannot be repaired is logged and shown in ``status``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import zmq

from . import discovery, sockets

log = logging.getLogger(__name__)

CHECK_SECONDS = 2.0


class Bindings:
    """The daemon's ipc binds and its ``<db>-daemon`` file, checked and repaired."""

    def __init__(self, lock: discovery.WriterLock, info: Callable[[], dict]):
        self._lock = lock
        self._info = info  # what <db>-daemon says, as last written
        self._ipc: list[list] = []  # [socket, endpoint, identity of its socket file]
        self._next_check = time.monotonic() + CHECK_SECONDS
        self.problem: str | None = None
        self.repairs = 0

    def bind(self, sock: zmq.Socket, endpoint: str) -> None:
        sockets.bind(sock, endpoint)
        path = sockets.ipc_path(endpoint)
        if path is not None:
            self._ipc.append([sock, endpoint, discovery.file_identity(path)])

    def check(self) -> None:
        """Repair what was deleted since the last check (at most every CHECK_SECONDS)."""
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + CHECK_SECONDS
        problems, repaired = [], []
        for entry in self._ipc:
            sock, endpoint, identity = entry
            path = sockets.ipc_path(endpoint)
            assert path is not None  # only ipc endpoints are kept
            if discovery.file_identity(path) == identity:
                continue
            try:
                discovery.make_dir(Path(path).parent)
                try:
                    sock.unbind(endpoint)
                except zmq.ZMQError:
                    pass  # its socket file is gone already
                sockets.bind(sock, endpoint)
            except (OSError, zmq.ZMQError) as exc:
                problems.append(f"cannot bind {endpoint} again: {exc}")
                continue
            entry[2] = discovery.file_identity(path)
            repaired.append(endpoint)
        if repaired:
            self.repairs += 1
            log.warning(
                "socket files were deleted (their folder removed?): bound %s again; "
                "publishers reconnect",
                ", ".join(repaired),
            )
        if not self._lock.still_held():
            try:
                rewritten = self._lock.relock(self._info())
            except OSError as exc:
                problems.append(f"cannot write {self._lock.path} again: {exc}")
            else:
                if rewritten:
                    self.repairs += 1
                    log.warning("%s was deleted: wrote it again", self._lock.path)
                else:
                    problems.append(f"another writer now holds {self._lock.path}")
        problem = "; ".join(problems) or None
        if problem is not None and problem != self.problem:
            log.error("publishers may not reach this daemon: %s", problem)
        self.problem = problem
