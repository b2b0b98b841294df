"""Records from several processes arrive once each, with the ids their calls returned."""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import time

from conftest import run_python

PUBLISHER = r"""
import json, sys
from memory_bank import Publisher
db, n, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
pub = Publisher(db)
ids = []
for i in range(n):
    k = i % 50
    if k < 30:
        ids.append(pub.log_event("CAN_RX", "CP", f"reading {i}", {"i": i}))
    elif k < 45:
        ids.append(pub.record_metric("current", float(i % 100), "A"))
    elif k < 49:
        ids.append(pub.record_anomaly("SPIKE", "LOW", "spike", None, 1.0, 0.0))
    else:
        pub.record_pattern("P", {"k": i % 7}, 0.5)
json.dump(ids, open(out, "w"))
"""


def _ids(db_path) -> list[int]:
    conn = sqlite3.connect(db_path)
    try:
        return [
            row[0]
            for table in ("events", "metrics", "anomalies")
            for row in conn.execute(f"SELECT id FROM {table}")
        ]
    finally:
        conn.close()


def test_four_processes_all_committed_once_with_returned_ids(db_path, daemon, tmp_path):
    import subprocess
    import sys

    per_process = 25_000
    outs = [tmp_path / f"ids{i}.json" for i in range(4)]
    procs = [
        subprocess.Popen([sys.executable, "-c", PUBLISHER, str(db_path), str(per_process), str(o)])
        for o in outs
    ]
    assert [p.wait(timeout=300) for p in procs] == [0, 0, 0, 0]
    returned = [i for o in outs for i in json.loads(o.read_text())]
    assert len(returned) == len(set(returned)) == 4 * per_process * 49 // 50
    # A publisher waits a bounded time at exit (close_timeout) and leaves the rest in its
    # spool, which the daemon adopts: on a loaded machine some records take that path.
    deadline = time.monotonic() + 120
    while len(stored := _ids(db_path)) < len(returned) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(stored) == len(set(stored))
    assert sorted(stored) == sorted(returned)
    conn = sqlite3.connect(db_path)
    frequency = conn.execute("SELECT sum(frequency) FROM patterns").fetchone()[0]
    assert frequency == 4 * per_process // 50
    assert conn.execute("SELECT count(*) FROM patterns").fetchone()[0] == 7


def test_burst_then_exit_loses_nothing(db_path, daemon, tmp_path):
    """libzmq #4660: a publisher that exits right after a burst must not lose its tail."""
    out = tmp_path / "ids.json"
    result = run_python(PUBLISHER, str(db_path), "60000", str(out))
    assert result.returncode == 0, result.stderr
    assert sorted(_ids(db_path)) == sorted(json.loads(out.read_text()))


def test_records_wait_for_a_daemon_that_starts_later(db_path, start_daemon, tmp_path):
    """Records sent while no daemon runs keep the caller's time and arrive once it starts."""
    script = r"""
import sys, time, json
from memory_bank import MemoryBank
memory = MemoryBank(sys.argv[1])
before = time.time()
ids = [memory.log_event("OCPP_BOOT", "CSMS", f"early {i}") for i in range(100)]
print(json.dumps({"before": before, "ids": ids}), flush=True)
sys.stdin.readline()            # the test starts the daemon, then lets us go on
assert memory.flush(30), "not committed"
print(json.dumps([e["timestamp"] for e in memory.get_events(limit=1000)]), flush=True)
"""
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(db_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    first = json.loads(proc.stdout.readline())
    time.sleep(0.5)
    daemon_started = time.time()
    start_daemon(db_path)
    proc.stdin.write("go\n")
    proc.stdin.flush()
    stamps = json.loads(proc.stdout.readline())
    assert proc.wait(timeout=60) == 0
    assert len(stamps) == 100
    assert all(first["before"] <= ts < daemon_started for ts in stamps)
    assert sorted(_ids(db_path)) == sorted(first["ids"])


def test_publisher_exits_when_no_daemon_ever_comes(db_path):
    """LINGER and the close wait are bounded: exit is never held hostage by a missing daemon."""
    result = run_python(
        "import sys\nfrom memory_bank import Publisher\n"
        "p = Publisher(sys.argv[1], close_timeout=0.5)\n"
        "[p.log_event('E', 'C', 'm') for _ in range(5000)]\n",
        str(db_path),
        timeout=60,
    )
    assert result.returncode == 0
    assert "did not confirm" in result.stderr


def test_sigterm_during_burst_commits_everything_received(db_path, daemon, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "ids.json"
    pub = subprocess.Popen(
        [sys.executable, "-c", PUBLISHER, str(db_path), "400000", str(out)],
        stderr=subprocess.DEVNULL,
    )
    # Wait until the daemon is mid-burst, then stop it.
    conn = sqlite3.connect(db_path)
    deadline = time.time() + 60
    while conn.execute("SELECT count(*) FROM events").fetchone()[0] < 20_000:
        assert time.time() < deadline
        time.sleep(0.05)
    conn.close()
    assert daemon.stop(signal.SIGTERM) == 0
    pub.kill()
    pub.wait()
    line = [ln for ln in daemon.log.splitlines() if "stopped: received" in ln][-1]
    received = int(line.split("received ")[1].split()[0])
    committed = int(line.split("committed ")[1].split(",")[0])
    stored = _ids(db_path)
    conn = sqlite3.connect(db_path)
    ops = conn.execute("SELECT sum(frequency) FROM patterns").fetchone()[0] or 0
    assert received == committed == len(stored) + ops
    assert len(stored) == len(set(stored))
    # What was committed is the publisher's first records, in order: a prefix of its ids.
    base = min(stored) - 1
    assert max(stored) - base == len(stored)


SIGTERM_DISPOSITION = r"""
import signal, sys, threading
from memory_bank import Publisher
case, db = sys.argv[1], sys.argv[2]
own = lambda signum, frame: None
if case == "own":
    signal.signal(signal.SIGTERM, own)
if case == "ignored":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if case == "thread":
    threading.Thread(target=lambda: Publisher(db, close_timeout=0.1)).start()
else:
    Publisher(db, close_timeout=0.1, handle_sigterm=case != "opt-out")
handler = signal.getsignal(signal.SIGTERM)
print({own: "own", signal.SIG_DFL: "default", signal.SIG_IGN: "ignored"}.get(handler, "ours"))
"""


def test_sigterm_handler_only_where_sigterm_is_default(tmp_path):
    """The publisher's SIGTERM handler (spool what memory holds, then die of SIGTERM) is
    installed only from the main thread over the default disposition, and not at all with
    handle_sigterm=False: a process's own handling of SIGTERM is never replaced."""
    outcomes = {}
    for case in ("default", "own", "ignored", "thread", "opt-out"):
        result = run_python(SIGTERM_DISPOSITION, case, str(tmp_path / f"{case}.db"))
        assert result.returncode == 0, result.stderr
        outcomes[case] = result.stdout.strip()
    assert outcomes == {
        "default": "ours",
        "own": "own",
        "ignored": "ignored",
        "thread": "default",
        "opt-out": "default",
    }


def test_disk_durability_with_a_live_daemon(db_path, daemon):
    """durability="disk" writes each message to the spool before sending it; with the daemon
    up every record lands once, acknowledged segments are deleted, and close removes it."""
    from memory_bank import MemoryBank

    pub = MemoryBank(db_path, durability="disk").publisher  # passed through to it
    ids = [pub.log_event("E", "C", f"m {i}", {"i": i}) for i in range(20_000)]
    assert pub.flush(30)
    spool_folder = db_path.with_name(db_path.name + "-spool") / str(pub.publisher_id)
    assert (spool_folder / "lock").exists()
    assert pub._outbox.written_seq == pub._outbox.seq > 0  # every message went to disk
    assert pub._outbox.spool.bytes == 0  # ...and was released once acknowledged
    assert pub.close()
    assert not spool_folder.exists()
    assert sorted(_ids(db_path)) == sorted(ids)


def test_messages_out_of_order_are_summed_up_not_logged_one_by_one(db_path, daemon):
    """After a restart a publisher's old in-flight messages interleave with its replay:
    each one ahead of its turn makes the daemon ask for a resend. The daemon logs the
    first, then one line with counts per interval, not a line per message."""
    import zmq

    from memory_bank import discovery, sockets, wire
    from memory_bank.control import daemon_stats

    block = discovery.lease_id_block(db_path)
    base = block << wire.ID_BLOCK_BITS

    def message(seq: int) -> bytes:
        return wire.encode(
            block, seq, 0, [[base + seq, time.time(), "E", "c", "m", None]], [], [], []
        )

    ctx = zmq.Context()
    push = sockets.publisher_push(ctx, discovery.find_endpoints(db_path).data)
    push.send(message(1))
    for seq in range(2, 52):  # seq+1 ahead of its turn, then seq: 50 arrive out of order
        push.send(message(seq + 1))
        push.send(message(seq))
    deadline = time.monotonic() + 30
    while (figures := daemon_stats(db_path))["committed_records"] < 51:
        assert time.monotonic() < deadline, figures
        time.sleep(0.1)
    push.close(0)
    ctx.term()
    assert figures["out_of_order_messages"] == 50
    assert len(_ids(db_path)) == 51
    assert daemon.log.count("expected; asking for a resend") == 1
    while "49 more message(s) from 1 publisher(s) arrived out of order" not in daemon.log:
        assert time.monotonic() < deadline + 15, daemon.log[-2000:]
        time.sleep(0.2)


STALLED = r"""
import logging, sys
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
from memory_bank import Publisher
from memory_bank.publisher import sender
sender.STALL_SECONDS, sender.STALL_SUMMARY_SECONDS = 1.0, 3.0  # a short stall
pub = Publisher(sys.argv[1])
for i in range(100):
    pub.log_event("E", "c", str(i))
print("flushed", pub.flush(120), file=sys.stderr, flush=True)
pub.close()
"""


def test_a_publisher_sums_up_its_resends_while_the_daemon_cannot_commit(
    tmp_path, db_path, start_daemon
):
    """The daemon answers but cannot commit (its database is at max_db_bytes): the
    publisher resends every STALL_SECONDS; it says so once, then once per summary
    interval, then once when acknowledgements resume, not once per resend."""
    import subprocess
    import sys

    config = tmp_path / "cap.toml"
    config.write_text("[daemon]\nmax_db_bytes = 4096\n")
    daemon = start_daemon(db_path, "--config", str(config))
    writer = subprocess.Popen(
        [sys.executable, "-c", STALLED, str(db_path)], stderr=subprocess.PIPE, text=True
    )
    lines = []
    while not any("no acknowledgement" in line for line in lines):
        lines.append(writer.stderr.readline())
        assert lines[-1], "".join(lines)
    while not any("still no acknowledgement" in line for line in lines):
        lines.append(writer.stderr.readline())  # about 3 s (the summary interval) later
        assert lines[-1], "".join(lines)
    config.write_text("[daemon]\n")  # no cap: the daemon commits again
    daemon.proc.send_signal(signal.SIGHUP)
    out = "".join(lines) + writer.communicate(timeout=120)[1]
    assert writer.returncode == 0 and "flushed True" in out, out
    assert out.count("no acknowledgement for") == 1, out
    assert out.count("the daemon acknowledges again after") == 1, out
    # Once per summary interval, not once per resend: how many intervals the stall spans
    # depends on how soon the reload lands (one, or two on a loaded machine), so the lines
    # are counted against the resends they sum up.
    resent = int(re.search(r"resent (\d+) time\(s\) meanwhile", out).group(1))
    assert 1 <= out.count("still no acknowledgement") < resent - 1, out
    assert "replaying messages" not in out


def test_threads_sharing_a_publisher_commit_its_ids_in_increasing_order(db_path, daemon):
    """An id is queued under the same lock it is taken with: threads sharing one Publisher
    cannot queue a later id before an earlier one, so a publisher's rows commit in id order
    (the detector's per-block position relies on it: a row committed after a higher id of
    its block would be skipped). Watched on the daemon's tail, which follows commits."""
    import sys
    import threading

    import zmq

    from memory_bank import Publisher, discovery, sockets, wire

    key = discovery.location_key(db_path, None)
    info = discovery.read_daemon_info(key) or {}
    tail = info.get("tail_endpoint") or sockets.tail_endpoint_for(
        discovery.find_endpoints(key).data
    )
    ctx = zmq.Context()
    sub = sockets.follower_sub(ctx, tail)
    pub = Publisher(db_path)
    committed: list[int] = []

    def receive(timeout_ms: int) -> None:
        while sub.poll(timeout_ms):
            events, _ = wire.decode_tail(sub.recv())
            committed.extend(row["id"] for row in events)
            timeout_ms = 0

    try:
        deadline = time.monotonic() + 30
        while not committed:  # a subscription takes a moment to reach the daemon
            assert time.monotonic() < deadline, "the daemon's tail never delivered"
            pub.log_event("PROBE", "T")
            assert pub.flush(10)
            receive(200)
        per_thread, threads = 5000, 4
        switch_interval = sys.getswitchinterval()
        # Switch threads as often as the interpreter allows, so that any gap between taking
        # an id and queueing its row is hit (without the lock, a few rows a run came late).
        sys.setswitchinterval(1e-6)
        try:
            workers = [
                threading.Thread(
                    target=lambda: [pub.log_event("T", "C", "m") for _ in range(per_thread)]
                )
                for _ in range(threads)
            ]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()
        finally:
            sys.setswitchinterval(switch_interval)
        assert pub.flush(60)
        expected = len(committed) + per_thread * threads
        deadline = time.monotonic() + 30
        while len(committed) < expected and time.monotonic() < deadline:
            receive(200)
    finally:
        pub.close()
        sub.close()
        ctx.term()
    assert len(committed) == expected
    behind = sum(1 for a, b in zip(committed, committed[1:], strict=False) if b < a)
    assert behind == 0, f"{behind} of {expected} rows committed after a higher id"


def test_a_forked_child_is_told_to_make_its_own_publisher_even_if_the_lock_was_held(db_path):
    """After fork, a call on the parent's Publisher raises at once, saying what to do, even
    when another thread of the parent was in a call, holding the publisher's lock, at the
    fork: the child has no such thread to let go of it, so without care the call would wait
    forever."""
    import os
    import select

    from memory_bank import Publisher

    pub = Publisher(db_path, handle_sigterm=False, close_timeout=0.5)
    read_end, write_end = os.pipe()
    try:
        pub._lock.acquire()  # held at the fork, as by another thread in the middle of a call
        pid = os.fork()
        if pid == 0:  # the child: report what the call did, then leave without cleanup
            try:
                pub.log_event("CHILD", "T")
                os.write(write_end, b"no error")
            except RuntimeError as exc:
                os.write(write_end, str(exc).encode())
            finally:
                os._exit(0)
        pub._lock.release()
        os.close(write_end)
        ready, _, _ = select.select([read_end], [], [], 20)
        if not ready:
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        said = os.read(read_end, 4096).decode() if ready else "(the call never returned)"
    finally:
        os.close(read_end)
        pub.close()
    assert "make a new one in the child after fork" in said, said
