"""The light publisher import, the embedded writer, and refusal of bad input."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time

import pytest

from conftest import free_port_pair, run_python
from memory_bank import MemoryBank


def test_publisher_import_stays_light():
    result = run_python(
        "import sys\nfrom memory_bank import Publisher\n"
        "heavy = [m for m in ('sqlite3', '_sqlite3', 'apscheduler', 'click', 'memory_bank.api',"
        " 'memory_bank.store', 'psycopg', 'msgspec') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_embedded_mode_runs_the_writer_in_process(db_path):
    with MemoryBank(db_path, embedded=True) as memory:
        event_id = memory.log_event("E", "C", "m", {"x": 1})
        memory.start_session("S")
        memory.record_metric("current", 3.0, "A")
        memory.end_session("S")
        assert memory.get_events()[0]["id"] == event_id
        assert memory.get_session("S")["avg_current"] == 3.0
        assert memory.clear_old_data(days=0)["events"] == 1
        # The embedded writer holds the one-writer lock: no daemon may start meanwhile.
        second = subprocess.run(
            [sys.executable, "-m", "memory_bank", "daemon", "--db", str(db_path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 1 and "already serves" in second.stderr
    with MemoryBank(db_path, embedded=True) as memory:
        assert memory.get_session("S")["status"] == "COMPLETED"


def test_an_idle_embedded_writer_leaves_the_cpu_alone(db_path):
    """After a flush (the writer's replies come back through an eventfd), an idle process
    with an embedded writer sleeps: its threads wait, none spins on a file left readable."""
    with MemoryBank(db_path, embedded=True) as memory:
        memory.log_event("E", "C", "m")
        assert memory.flush(timeout=30)
        before = resource.getrusage(resource.RUSAGE_SELF)
        time.sleep(2.0)  # the idle stretch measured, not a wait for a condition
        after = resource.getrusage(resource.RUSAGE_SELF)
    used = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    # A spinning thread takes the whole 2 s of a core; an idle process a few milliseconds.
    assert used < 0.5, f"{used:.2f} s of CPU over 2 s idle"


def test_no_daemon_means_a_clear_error_for_maintenance(db_path):
    with MemoryBank(db_path) as memory:
        with pytest.raises(RuntimeError, match="memorybank daemon --db"):
            memory.clear_old_data(days=1)


def test_named_tcp_endpoint(db_path, start_daemon):
    """A daemon bound to a named tcp endpoint; a publisher that knows only the endpoint."""
    endpoint = f"tcp://127.0.0.1:{free_port_pair()}"
    start_daemon(db_path, "--endpoint", endpoint)
    from memory_bank import Publisher

    pub = Publisher(endpoint=endpoint)
    event_id = pub.log_event("E", "C", "over tcp")
    assert pub.flush(10)
    pub.close()
    with MemoryBank(db_path) as memory:  # found through the daemon file, not the default
        assert memory.get_events()[0]["id"] == event_id
        memory.log_event("E", "C", "via discovery")
        assert len(memory.get_events()) == 2


def test_a_flush_keeps_the_publisher_light(db_path, daemon):
    """A flush that overtakes an outstanding acknowledgement request is no sign of a daemon
    refusing this publisher: the sender must not ask the handshake monitor why (which loads
    asyncio into the user's process, 20-40 ms of CPU, at every such flush)."""
    result = run_python(
        "import sys, time\nfrom memory_bank import Publisher\n"
        "pub = Publisher(sys.argv[1])\n"
        "pub.log_event('E', 'C', 'm')\n"
        "deadline = time.monotonic() + 30\n"
        "while pub._sender._ack_sent_at is None and time.monotonic() < deadline:\n"
        "    time.sleep(0.001)  # until an ordinary acknowledgement request is out\n"
        "pub.log_event('E', 'C', 'm')\n"
        "print(pub.flush(30), 'asyncio' in sys.modules)\n",
        str(db_path),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "False"]


def test_calls_with_pauses_do_not_wake_the_sender_each_time(db_path, daemon, monkeypatch):
    """A wake-up is an eventfd write inside the call (a system call, 20-80 us of it): a
    caller that keeps writing, with pauses of a few milliseconds, pays it once, not at
    every call after the sender found its queue empty."""
    wakes = []
    write = os.eventfd_write
    monkeypatch.setattr(os, "eventfd_write", lambda fd, value: (wakes.append(fd), write(fd, value)))
    with MemoryBank(db_path) as memory:
        for _ in range(40):
            memory.log_event("E", "C", "paced")
            time.sleep(0.005)  # the caller's own pace, not a wait for a condition
        calls_woke = len(wakes)
        assert memory.flush(timeout=30)
    # One wake-up (the first call), a few more if this machine held a thread past 50 ms.
    assert calls_woke <= 8, calls_woke
