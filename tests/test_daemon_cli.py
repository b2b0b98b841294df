"""The daemon's life as a user sees it: one per database, status, clean stop."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

from click.testing import CliRunner

from memory_bank import MemoryBank
from memory_bank.cli import main


def test_second_daemon_exits_at_once_with_clear_message(db_path, daemon):
    second = subprocess.run(
        [sys.executable, "-m", "memory_bank", "daemon", "--db", str(db_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 1
    assert f"pid {daemon.proc.pid}" in second.stderr
    assert "already serves" in second.stderr
    assert daemon.proc.poll() is None  # the first one is untouched


def test_status_with_and_without_daemon(db_path, start_daemon):
    runner = CliRunner()
    result = runner.invoke(main, ["status", "--db", str(db_path)])
    assert result.exit_code == 1
    assert "no daemon serves" in result.output

    daemon = start_daemon(db_path)
    with MemoryBank(db_path) as memory:
        for i in range(10):
            memory.log_event("E", "C", str(i))
        assert memory.flush(10)
    result = runner.invoke(main, ["status", "--db", str(db_path), "--json"])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output)
    assert figures["pid"] == daemon.proc.pid
    assert figures["committed_records"] == 10
    assert figures["received_records"] == 10
    assert figures["rejected_records"] == 0
    assert figures["db_bytes"] > 0
    for key in ("uptime_seconds", "batches", "queue_depth"):
        assert key in figures
    text = runner.invoke(main, ["status", "--db", str(db_path)])
    assert text.exit_code == 0
    assert "records committed" in text.output and "10" in text.output


def test_sigint_and_sigterm_exit_zero(db_path, start_daemon):
    for sig in (signal.SIGINT, signal.SIGTERM):
        daemon = start_daemon(db_path)
        assert daemon.stop(sig) == 0
        assert "stopped: received" in daemon.log


def test_bad_config_is_refused_with_the_key_name(db_path, tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[daemon]\nbatch_rows = "many"\n')
    result = CliRunner().invoke(main, ["daemon", "--db", str(db_path), "--config", str(cfg)])
    assert result.exit_code == 2
    assert "daemon.batch_rows" in result.output
    cfg.write_text("[daemon]\nbatch_size = 5\n")
    result = CliRunner().invoke(main, ["daemon", "--db", str(db_path), "--config", str(cfg)])
    assert result.exit_code == 2
    assert "unknown key daemon.batch_size" in result.output


def test_example_config_is_valid_and_complete():
    from pathlib import Path

    from memory_bank import config

    example = Path(__file__).parent.parent / "config" / "memorybank.toml"
    loaded = config.load(example)
    defaults = config.Config()
    assert loaded.batch_rows == defaults.batch_rows
    assert loaded.synchronous == defaults.synchronous


def test_example_config_names_every_setting():
    """config/memorybank.toml documents every key the daemon accepts."""
    from pathlib import Path

    from memory_bank import config

    text = (Path(__file__).parent.parent / "config" / "memorybank.toml").read_text()
    for section, keys in config._SECTIONS.items():
        assert f"[{section}]" in text
        for key in keys:
            assert f"{key} =" in text, f"{section}.{key} is missing from the example"
    config.load(Path(__file__).parent.parent / "config" / "memorybank.toml")


def test_status_probes_never_stop_a_daemon_from_starting(db_path, start_daemon):
    """daemon_running() probes with a momentary shared lock; a daemon starting at that
    instant used to refuse with 'another writer already serves' (seen in `memorybank demo`,
    whose wait_for_daemon probes in a loop)."""
    import threading

    from memory_bank import discovery

    path = discovery.resolve_db_path(db_path)
    stop = threading.Event()

    def probe():
        while not stop.is_set():
            discovery.daemon_running(path)

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        for _ in range(5):
            daemon = start_daemon(db_path)
            assert daemon.stop() == 0, daemon.log
    finally:
        stop.set()
        prober.join()


def test_a_tcp_endpoint_whose_ports_collide_is_refused_in_one_line(tmp_path, start_daemon):
    """tcp://H:P takes P, P+1 and P+2. A second daemon whose three ports overlap the
    first's in any way binds none of them and says which port, held by whom; the first
    keeps serving."""
    import socket

    from conftest import free_ports

    base = free_ports(8) + 2  # the first daemon on base..base+2; base-2..base+5 free
    first = start_daemon(tmp_path / "a.db", "--endpoint", f"tcp://127.0.0.1:{base}")
    roles = {-2: ("tail", 0), -1: ("control", 0), 1: ("data", 1), 2: ("data", 2)}
    for offset, (role, taken) in roles.items():
        endpoint = f"tcp://127.0.0.1:{base + offset}"
        second = subprocess.run(
            [sys.executable, "-m", "memory_bank", "daemon", "--db", str(tmp_path / "b.db")]
            + ["--endpoint", endpoint],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 1
        [line] = second.stderr.splitlines()
        assert f"the {role} endpoint tcp://127.0.0.1:{base + taken}: already in use" in line
        assert f"by pid {first.proc.pid} (memorybank daemon --db {tmp_path / 'a.db'}" in line
        assert "PORT+1 (control) and PORT+2 (live tail)" in line
    with socket.socket() as squatter:  # not a daemon: the port and the holder still named
        squatter.bind(("127.0.0.1", base + 5))
        squatter.listen()
        second = subprocess.run(
            [sys.executable, "-m", "memory_bank", "daemon", "--db", str(tmp_path / "b.db")]
            + ["--endpoint", f"tcp://127.0.0.1:{base + 4}"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert second.returncode == 1
    assert f"control endpoint tcp://127.0.0.1:{base + 5}: already in use by pid " in second.stderr
    assert "Traceback" not in second.stderr
    with MemoryBank(tmp_path / "a.db") as memory:  # the first one is untouched
        memory.log_event("E", "C", "still served")
        assert memory.get_events()[0]["message"] == "still served"


def test_a_moved_database_is_served_under_its_new_name_keeping_its_id_blocks(
    tmp_path, start_daemon
):
    """A database records the path it is served as; moved (renamed, its old name gone), it
    is served under the new name, and id blocks handed out under the old one stay taken."""
    from memory_bank import Publisher

    old, new = tmp_path / "old" / "lab.db", tmp_path / "new" / "lab.db"
    old.parent.mkdir()
    new.parent.mkdir()
    daemon = start_daemon(old)
    with Publisher(old) as pub:
        pub.log_event("E", "C", "before the move")
    # Blocks leased, nothing stored from them yet (their records could wait in a spool).
    blocks = []
    for _ in range(3):
        with Publisher(old) as idle:
            blocks.append(idle.publisher_id)
    assert daemon.stop() == 0
    old.rename(new)
    daemon = start_daemon(new)
    assert "was served as" in daemon.log and str(old) in daemon.log
    with Publisher(new) as pub:
        assert pub.publisher_id > max(blocks)
        pub.log_event("E", "C", "after the move")
        assert pub.flush(10)
    with MemoryBank(new) as memory:
        assert len(memory.get_events()) == 2
