"""The shared output option: every command that prints data prints it as a table, json,
jsonl or csv, through the one formatter."""

from __future__ import annotations

import csv
import io
import json

from click.testing import CliRunner

from memory_bank import MemoryBank
from memory_bank.cli import main
from memory_bank.store.sqlite import SqliteStore
from memory_bank.viewer import view


def runner() -> CliRunner:
    """stdout alone (click 8.2 keeps stderr apart by itself; 8.1 is told to)."""
    try:
        return CliRunner(mix_stderr=False)
    except TypeError:
        return CliRunner()


def invoke(*argv):
    result = runner().invoke(main, list(argv))
    assert result.exit_code == 0, result.output
    return result.stdout


def csv_pairs(text: str) -> dict:
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ["key", "value"]
    return dict(rows[1:])


def test_status_and_maintenance_in_every_format(db_path, daemon):
    with MemoryBank(db_path) as memory:
        memory.log_event("E", "C", "x")
        assert memory.flush(10)
    db = str(db_path)
    as_json = json.loads(invoke("status", "--db", db, "-o", "json"))
    assert as_json["pid"] == daemon.proc.pid and as_json["committed_records"] == 1
    assert json.loads(invoke("status", "--db", db, "--json"))["pid"] == daemon.proc.pid
    [line] = invoke("status", "--db", db, "-o", "jsonl").splitlines()
    assert json.loads(line)["committed_records"] == 1
    assert csv_pairs(invoke("status", "--db", db, "-o", "csv"))["pid"] == str(daemon.proc.pid)
    assert "records committed" in invoke("status", "--db", db)

    [line] = invoke("maintenance", "--db", db, "vacuum", "-o", "jsonl").splitlines()
    assert json.loads(line)["job"] == "vacuum" and json.loads(line)["status"] == "ok"
    assert csv_pairs(invoke("maintenance", "--db", db, "vacuum", "-o", "csv"))["job"] == "vacuum"
    assert invoke("maintenance", "--db", db, "vacuum").startswith("vacuum: ")


def test_view_summary_in_every_format(tmp_path):
    db = tmp_path / "ev.db"
    SqliteStore(db).close()
    summary = json.loads(runner().invoke(view, ["--db", str(db), "--summary", "-o", "json"]).stdout)
    assert summary["total_events"] == 0
    pairs = csv_pairs(runner().invoke(view, ["--db", str(db), "--summary", "-o", "csv"]).stdout)
    assert pairs["total_events"] == "0" and pairs["anomalies_by_severity"] == "{}"


def test_migrate_report_in_every_format(tmp_path, pg_url):
    db = tmp_path / "ev.db"
    with MemoryBank(db, embedded=True) as memory:
        memory.log_event("E", "C", "x")
    rows = json.loads(invoke("migrate", "--from", str(db), "--to", pg_url, "-o", "json"))
    events = {"table": "events", "sqlite": 1, "postgresql": 1, "copied": 1, "missing": 0}
    assert events in rows
    table = invoke("migrate", "--from", str(db), "--to", pg_url)
    assert table.splitlines()[0].split() == ["TABLE", "SQLITE", "POSTGRESQL", "COPIED", "MISSING"]
