"""Who may read and who may write, under a umask of 022 (most login shells).

Before: the database, its WAL and -shm, the id counter and the lock/endpoint file were
created as the umask allowed: world-readable. Now MemoryBank creates files 0640 and
folders 0750 (the owner writes, the group reads), the id counter 0660 (publishers lease
their ids from it) and ipc sockets 0660 in the runtime folder (whose group decides who
may connect, and so write), whatever the umask; a file's existing mode is never changed.
As root the scenario runs it for real: the daemon as one user, a member of its group who
publishes and reads, and an outsider, in a folder everyone may enter.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from edges._daemon_common import (
    PY,
    Daemon,
    check_exactly,
    cleans_up,
    finish,
    scenario_env,
    spawn,
    start_publisher,
)

GROUP, DAEMON_USER, MEMBER, OUTSIDER = 47100, 47101, 47102, 47103

READER = r"""
import sqlite3, sys
try:
    conn = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
    print(conn.execute("SELECT count(*) FROM events").fetchone()[0])
except sqlite3.Error as exc:
    print("denied:", exc)
"""

LEASER = r"""
import sys
from memory_bank import Publisher
try:
    Publisher(sys.argv[1])
    print("leased")
except OSError as exc:
    print("denied:", exc)
"""


def _as(user: int, groups: list[int]) -> dict:
    return {"user": user, "group": user, "extra_groups": groups}


def _run_as(python: str, code: str, arg, env: dict, who: dict) -> str:
    proc = spawn([python, "-c", code, arg], env=env, stdout=subprocess.PIPE, text=True, **who)
    return proc.communicate(timeout=120)[0].strip()


def _python_for_others(env: dict) -> str | None:
    """An interpreter other users may run with this installation: this one, else the
    system's python3 of the same version with this one's packages on PYTHONPATH (a
    pyenv interpreter under /root is out of their reach); None when neither works."""
    import msgpack
    import zmq

    import memory_bank

    paths = {str(Path(m.__file__).parent.parent) for m in (memory_bank, zmq, msgpack)}
    version = "python{}.{}".format(*sys.version_info[:2])
    system = shutil.which(version, path="/usr/local/bin:/usr/bin")
    for python, extra in ((PY, {}), (system, {"PYTHONPATH": ":".join(paths)})):
        if python is None:
            continue
        check = f"import sys, memory_bank; assert sys.version_info[:2] == {sys.version_info[:2]}"
        try:
            ok = (
                subprocess.run(
                    [python, "-c", check],
                    env={**env, **extra},
                    capture_output=True,
                    timeout=60,
                    **_as(OUTSIDER, []),
                ).returncode
                == 0
            )
        except PermissionError:
            ok = False
        if ok:
            env.update(extra)
            return python
    return None


@cleans_up
def run(work: Path, long: bool) -> str:
    as_root = os.geteuid() == 0
    if as_root:
        # A folder anyone may enter (as a lab's shared folder often is), outside pytest's
        # private one: only the modes of what MemoryBank creates protect its files.
        work = Path(tempfile.mkdtemp(prefix="mb-modes-", dir="/tmp"))
        os.chown(work, DAEMON_USER, GROUP)
        os.chmod(work, 0o775)
    try:
        return _scenario(work, long, as_root)
    finally:
        if as_root:
            shutil.rmtree(work, ignore_errors=True)


def _scenario(work: Path, long: bool, as_root: bool) -> str:
    env = scenario_env(work, HOME=str(work))  # other users cannot look into /root
    db = work / "lab.db"
    python = _python_for_others(env) if as_root else PY
    others = python is not None
    python = python or PY
    daemon_as = {"user": DAEMON_USER, "group": GROUP, "extra_groups": []} if others else {}
    member = _as(MEMBER, [GROUP]) if others else {}
    daemon = Daemon(db, env, python=python, umask=0o022, **daemon_as)
    n = 20_000 if long else 500
    publisher = start_publisher(env, db, n, "member", python=python, umask=0o022, **member)
    report, _ = finish(publisher)
    assert report["confirmed"], "the group's publisher was not confirmed"

    modes = {
        "lab.db": 0o640,
        "lab.db-wal": 0o640,
        "lab.db-shm": 0o640,
        "lab.db-daemon": 0o640,
        "lab.db-ids": 0o660,
        "run": 0o750,
    }
    found = {name: (work / name).stat().st_mode & 0o777 for name in modes}
    sockets = list((work / "run").iterdir())
    found.update({f"run/{s.name}": s.stat().st_mode & 0o777 for s in sockets})
    modes.update({f"run/{s.name}": 0o660 for s in sockets})
    assert found == modes, {k: oct(v) for k, v in found.items() if v != modes[k]}

    tried = "modes only (other users need root and an interpreter they may run)"
    if others:
        read = _run_as(python, READER, db, env, member)
        assert read.isdigit() and int(read) == n, f"the group cannot read: {read}"
        outsider = _as(OUTSIDER, [])
        read = _run_as(python, READER, db, env, outsider)
        assert read.startswith("denied"), f"an outsider read the database: {read}"
        leased = _run_as(python, LEASER, db, env, outsider)
        assert leased.startswith("denied"), f"an outsider leased ids: {leased}"
        tried = "the group read and wrote; an outsider could neither read nor lease ids"
    daemon.stop()
    check_exactly(db, set(report["ids"]), "the group's records")
    return f"with umask 022: {', '.join(f'{k} {oct(v)}' for k, v in modes.items())}; {tried}"
