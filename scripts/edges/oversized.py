"""Oversized records: a record that packs to more than the daemon's 16 MiB message limit is
refused alone by the publisher (counted with its reason, shown in the daemon's status), and
the records around it flow on; bursts of large records that would pack into one message
over the limit are split into several messages and all land."""

from __future__ import annotations

from pathlib import Path

from edges._common import Daemon, check_exactly, finish, isolate, start_publisher

PUBLISHER = r"""
import json, sys
from memory_bank import Publisher
db, rounds = sys.argv[1], int(sys.argv[2])
pub = Publisher(db)
kept = []
big = "x" * (17 * 1024 * 1024)
large = "y" * 900_000  # under the daemon's max_text_chars: 20 of them exceed 16 MiB
for r in range(rounds):
    kept += [pub.log_event("OK", "T", f"before {r}.{i}") for i in range(100)]
    pub.log_event("HUGE", "T", "over the limit", {"blob": big})
    kept += [pub.log_event("OK", "T", f"between {r}.{i}") for i in range(100)]
    kept += [pub.record_metric("m", float(i), "A", {"blob": large}) for i in range(20)]
    kept += [pub.log_event("OK", "T", f"after {r}.{i}") for i in range(100)]
flushed = pub.flush(300)
print(json.dumps({"ids": kept, "flushed": flushed, "by_reason": pub.dropped_by_reason}))
"""


def run(work: Path, long: bool) -> str:
    env = isolate(work)
    db = work / "oversized.db"
    daemon = Daemon(db, env)
    rounds = 20 if long else 1
    try:
        report, _ = finish(start_publisher(PUBLISHER, env, db, rounds))
        assert report["flushed"], "the records around the oversized one did not land"
        assert report["by_reason"] == {"oversized": rounds}, report["by_reason"]
        check_exactly(db, set(report["ids"]), "records around oversized ones")
        stats = daemon.stats()
        assert stats["dropped_by_publishers"] == rounds, stats["dropped_by_publishers"]
        assert stats["rejected_records"] == 0, stats["rejected_records"]
    finally:
        daemon.stop()
    return (
        f"{len(report['ids']):,} records landed ({20 * rounds} of 900 kB in bursts); "
        f"{rounds} record(s) over 16 MiB refused by the publisher and counted"
    )
