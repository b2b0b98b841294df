"""Poison records: text that cannot be encoded (lone surrogates in any field, NaN in JSON)
among good records. Each is refused at the call with ValueError; a record that slips past
the call's check is refused alone by the sender, counted with its reason; every good record
lands, and the sender thread lives on."""

from __future__ import annotations

from pathlib import Path

from edges._common import Daemon, check_exactly, finish, isolate, start_publisher

PUBLISHER = r"""
import json, sys
from memory_bank import Publisher
db, n = sys.argv[1], int(sys.argv[2])
pub = Publisher(db)

class Sneaky(str):
    # Claims to be ASCII, so the call's check lets it through: only the sender sees it.
    def isascii(self):
        return True

POISONS = [
    lambda: pub.log_event("POISON", "T", "bad \ud800 surrogate"),
    lambda: pub.log_event("P\udc80", "T"),
    lambda: pub.log_event("P", "T\ud800"),
    lambda: pub.log_event("P", "T", "", {"k\ud800": 1}),
    lambda: pub.log_event("P", "T", "", {"k": ["ok", "\udfff"]}),
    lambda: pub.record_metric("current", 1.0, "A", {"u": "\ud800"}),
    lambda: pub.record_metric("cur\ud800", 1.0),
    lambda: pub.record_anomaly("A", "HIGH\ud800"),
    lambda: pub.start_session("S\ud800"),
    lambda: pub.end_session("S\ud800"),
    lambda: pub.record_pattern("P", {"x": "\ud800"}),
    lambda: pub.log_event("P", "T", "", {"v": float("nan")}),
    lambda: pub.record_metric("current", 1.0, "A", {"v": float("inf")}),
    lambda: pub.record_anomaly("A", "LOW", "", {"v": float("-inf")}),
]
kept, refused, slipped = [], 0, 0
for i in range(n):
    kept.append(pub.log_event("OK", "T", f"good {i} \u00e9\U0001f600", {"i": i, "e": "\U0001f600"}))
    if i % 10 == 5:
        try:
            POISONS[(i // 10) % len(POISONS)]()
        except ValueError:
            refused += 1
        else:
            raise SystemExit(f"poison {(i // 10) % len(POISONS)} was accepted at the call")
    if i % 50 == 25:
        pub.log_event(Sneaky("sneaky \ud800"), "T")
        slipped += 1
flushed = pub.flush(120)
print(json.dumps({"ids": kept, "flushed": flushed, "by_reason": pub.dropped_by_reason,
                  "alive": pub._sender.is_alive(), "sender_errors": pub.sender_errors,
                  "refused": refused, "slipped": slipped}))
"""


def run(work: Path, long: bool) -> str:
    env = isolate(work)
    db = work / "poison.db"
    daemon = Daemon(db, env)
    try:
        n = 200_000 if long else 300
        report, _ = finish(start_publisher(PUBLISHER, env, db, n))
        assert report["alive"], "the sender thread died"
        assert report["flushed"], "flush() did not confirm the good records"
        assert report["sender_errors"] == 0, report
        assert report["by_reason"] == {"unencodable": report["slipped"]}, report["by_reason"]
        check_exactly(db, set(report["ids"]), "good records among poison")
        dropped = daemon.stats()["dropped_by_publishers"]
        assert dropped == report["slipped"], f"status shows {dropped} dropped"
    finally:
        daemon.stop()
    return (
        f"{len(report['ids']):,} good records landed; {report['refused']} poison records "
        f"refused at the call, {report['slipped']} by the sender (counted)"
    )
