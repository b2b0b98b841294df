"""Whether the addresses a daemon is about to bind are free, and who holds one that is not.

A ``tcp://HOST:PORT`` endpoint takes three ports (PORT for records, PORT+1 for control,
PORT+2 for the live tail): a daemon checks all of them before binding any, so a
collision is refused whole, in one line that names the port and the process holding it,
rather than half-bound with a ZeroMQ traceback. An ``ipc://`` path that a live process
listens on counts as taken too (ZeroMQ would silently take it over).

Linux: the holder is found through /proc (the listening socket's inode, then the process
with that socket open), which sees the processes of the same user (or all, as root).
"""

from __future__ import annotations

import errno
import os
import re
import socket
from pathlib import Path


class EndpointInUse(RuntimeError):
    """An address this daemon must bind is held by another process."""


def check_free(endpoints: dict[str, str]) -> None:
    """Raise EndpointInUse for the first of ``endpoints`` ({role: endpoint}) that another
    process holds; an address that cannot be probed (an interface name) is left to bind."""
    for role, endpoint in endpoints.items():
        if in_use(endpoint):
            raise EndpointInUse(refusal(role, endpoint))


def refusal(role: str, endpoint: str) -> str:
    """The one line a daemon that cannot bind ``endpoint`` says."""
    holder = holder_of(endpoint)
    text = f"cannot bind the {role} endpoint {endpoint}: already in use"
    text += f" by {holder}" if holder else " by another process"
    if endpoint.startswith("tcp://"):
        text += (
            "; a tcp endpoint tcp://HOST:PORT takes PORT (records), PORT+1 (control) and "
            "PORT+2 (live tail): choose a PORT whose three ports are free"
        )
    return text


def _tcp_address(endpoint: str) -> tuple[int, str, int] | None:
    """(family, host, port) of a tcp endpoint ZeroMQ would bind, or None."""
    match = re.fullmatch(r"tcp://(.+):(\d+)", endpoint)
    if match is None:
        return None
    host, port = match.group(1), int(match.group(2))
    if host.startswith("["):
        return socket.AF_INET6, host.strip("[]"), port
    if host == "*":
        return socket.AF_INET, "0.0.0.0", port
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return None  # an interface name: ZeroMQ resolves it, bind says the rest
    family, *_, address = infos[0]
    return family, str(address[0]), port


def in_use(endpoint: str) -> bool:
    """True when another process holds ``endpoint`` (listens on it)."""
    if endpoint.startswith("ipc://"):
        path = endpoint[len("ipc://") :]
        if not os.path.exists(path):
            return False
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(path)
            except OSError:
                return False  # a socket file left by a process that is gone
            return True
    address = _tcp_address(endpoint)
    if address is None:
        return False
    family, host, port = address
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # As ZeroMQ binds: a port in TIME_WAIT after a daemon's restart is free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def holder_of(endpoint: str) -> str | None:
    """'pid N (command line)' of the process listening on ``endpoint``, when visible."""
    inodes = _listening_inodes(endpoint)
    if not inodes:
        return None
    wanted = {f"socket:[{inode}]" for inode in inodes}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if not any(os.readlink(fd) in wanted for fd in (proc / "fd").iterdir()):
                continue
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:  # another user's process, or one that just ended
            continue
        return f"pid {proc.name} ({_shorten(command)})"
    return None


def _shorten(command: str) -> str:
    """`memorybank daemon --db X` rather than the interpreter's path and -m; one line."""
    command = " ".join(command.split())
    command = re.sub(r"^\S*python[\d.]*\s+-m\s+memory_bank\b", "memorybank", command)
    return command if len(command) <= 160 else command[:157] + "..."


def _listening_inodes(endpoint: str) -> set[str]:
    """Inodes of the listening sockets bound to ``endpoint`` (from /proc/net)."""
    found: set[str] = set()
    if endpoint.startswith("ipc://"):
        path = endpoint[len("ipc://") :]
        try:
            lines = Path("/proc/net/unix").read_text().splitlines()[1:]
        except OSError:
            return found
        for line in lines:
            fields = line.split()
            if len(fields) >= 8 and fields[7] == path and fields[3] == "00010000":  # listens
                found.add(fields[6])
        return found
    address = _tcp_address(endpoint)
    if address is None:
        return found
    port = f"{address[2]:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[1].rsplit(":", 1)[1] == port and fields[3] == "0A":  # LISTEN
                found.add(fields[9])
    return found
