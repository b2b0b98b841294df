#!/usr/bin/env python3
"""Would compiling the publish call move the caller's CPU? This tree's publisher, as it is,
against the same code compiled with mypyc, through publish_cpu.py's alternated rounds.

    python bench/compiled_call.py                # 3 rounds of 8 s, as publish_cpu.py
    python bench/compiled_call.py --rounds 5
    python bench/compiled_call.py --instructions 20000   # instructions a call (valgrind)

It copies ``src/`` to a temporary folder and compiles the two modules every write call runs
through (``publisher/publisher.py``, the calls, the id and the queue; ``publisher/records.py``,
the checks and the JSON) with mypyc, as they are typed today, then runs ``publish_cpu.py
--other`` on the copy: "this" is the tree as users run it, "other" the compiled call. Two
edits mypyc needs are made to the copy only, and said here because they are not free:
native classes take no weak references, so the process's set of live publishers holds them
strongly (a publisher is never collected before the process exits); and a property needs its
return type. Needs mypy (the test extra) and a C compiler, which the publisher itself never
needs: that is the cost compiling would add for every user.

Time on the lab's VM moves more between rounds than compiling could move it, so
``--instructions N`` also counts, for each tree, the instructions a call executes (valgrind's
callgrind, which counts exactly: N calls of the mix, each made through ``operator.call`` and
counted with ``--toggle-collect=_operator_call*``, so the sender thread, the loop and the
arguments' building are left out; a flush every 500 calls keeps the queue as short as a
paced caller's).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
THIS_SRC = HERE.parent / "src"
COMPILED = ["memory_bank/publisher/publisher.py", "memory_bank/publisher/records.py"]
# (file, text as it is, text mypyc needs): the copy's only edits.
EDITS = [
    (
        "memory_bank/publisher/publisher.py",
        "_live_publishers: weakref.WeakSet = weakref.WeakSet()",
        "_live_publishers: set = set()",
    ),
    ("memory_bank/publisher/publisher.py", "def db_path(self):", "def db_path(self) -> object:"),
]
SETUP = f"""
from setuptools import setup
from mypyc.build import mypycify
setup(name="compiled_call", packages=[], ext_modules=mypycify({COMPILED!r}))
"""
# What the copy imports: the compiled modules, not their sources beside them.
CHECK = (
    "import memory_bank.publisher.publisher as p, memory_bank.publisher.records as r\n"
    "print(p.__file__); print(r.__file__)"
)
MYPY_INI = "[mypy]\nignore_missing_imports = True\ndisable_error_code = annotation-unchecked\n"


def compiled_copy(work: Path) -> Path:
    """A copy of src/ with the write calls compiled; returns its src folder."""
    src = work / "src"
    shutil.copytree(THIS_SRC, src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name, before, after in EDITS:
        path = src / name
        text = path.read_text()
        if text.count(before) != 1:
            raise SystemExit(f"{name}: expected {before!r} once; the edit needs updating")
        path.write_text(text.replace(before, after))
    (src / "setup.py").write_text(SETUP)
    (src / "mypy.ini").write_text(MYPY_INI)
    built = subprocess.run(
        [sys.executable, "setup.py", "build_ext", "--inplace"],
        cwd=src,
        capture_output=True,
        text=True,
    )
    if built.returncode != 0:
        sys.stderr.write(built.stdout[-4000:] + built.stderr[-4000:])
        raise SystemExit("mypyc could not compile the publisher (output above)")
    loaded = subprocess.run(
        [sys.executable, "-c", CHECK],
        env={**os.environ, "PYTHONPATH": str(src)},
        capture_output=True,
        text=True,
    )
    if loaded.returncode != 0 or loaded.stdout.count(".so") != len(COMPILED):
        sys.stderr.write(loaded.stdout + loaded.stderr)
        raise SystemExit("the copy does not import the compiled modules")
    return src


COUNTED = r"""
import operator, sys
sys.path.insert(0, sys.argv[3])
from workload import call
from memory_bank import Publisher
pub = Publisher(sys.argv[1], close_timeout=5)
for i in range(int(sys.argv[2])):
    method, args = call(pub, i)
    operator.call(method, *args)
    if i % 500 == 499:
        assert pub.flush(60)
pub.close()
"""


def instructions_per_call(src: Path, calls: int) -> float:
    """The instructions one publish call of the mix executes, with ``src``'s publisher."""
    from publish_cpu import daemon_of

    with daemon_of(src) as (db, env):
        out = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                "--toggle-collect=_operator_call*",
                "--callgrind-out-file=/dev/null",
                sys.executable,
                "-c",
                COUNTED,
                db,
                str(calls),
                str(HERE),
            ],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
    found = re.search(r"Collected : (\d+)", out.stderr)
    if found is None:
        raise SystemExit(f"callgrind reported no count:\n{out.stderr[-2000:]}")
    return int(found.group(1)) / calls


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument(
        "--instructions", type=int, metavar="N", help="count N calls' instructions instead"
    )
    args = parser.parse_args()
    if args.instructions and shutil.which("valgrind") is None:
        parser.error("--instructions counts with valgrind, which is not installed")
    with tempfile.TemporaryDirectory() as work:
        src = compiled_copy(Path(work))
        print(f"compiled: {', '.join(COMPILED)} in {src}", flush=True)
        if args.instructions:
            for name, tree in (("as it is", THIS_SRC), ("compiled", src)):
                each = instructions_per_call(tree, args.instructions)
                print(f"{name}: {each:,.0f} instructions a call", flush=True)
            return 0
        return subprocess.call(
            [
                sys.executable,
                str(HERE / "publish_cpu.py"),
                "--other",
                str(src),
                "--rounds",
                str(args.rounds),
                "--seconds",
                str(args.seconds),
            ]
        )


if __name__ == "__main__":
    sys.exit(main())
