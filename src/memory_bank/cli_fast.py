"""The console scripts' entry points, which answer the two commands people type most often
without loading click: ``memory-viewer --summary`` and ``memorybank status``.

Click and the modules it pulls in are most of a command's start-up. A command line made
only of the options cli_options declares (which the click commands are built from too) is
answered here, with the same code the click commands run (summary.py, status.py); any other
command line, --help included, goes to click, which parses and reports it. A failure here
ends as under the click commands' error boundary (cli_common.fail): one line, the same
exit status. ``python -m memory_bank`` always runs the click group.
"""

from __future__ import annotations

import gc
import os
import sys

from .cli_options import DB, ENDPOINT, JSON, OUTPUT, SUMMARY, parse
from .locations import is_url, real_path

TYPE_CHECKING = False  # (typing.TYPE_CHECKING without importing typing: see lazylog)
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable


def memory_viewer() -> None:
    """``memory-viewer``: the seed's viewer."""
    values = parse(sys.argv[1:], (DB, SUMMARY, OUTPUT))
    # Any other command line, or a database missing or on PostgreSQL: the click viewer (it
    # says what is wrong, or loads psycopg).
    if (
        values is None
        or not values["summary"]
        or is_url(values["db"])
        or not os.path.exists(real_path(values["db"]))
    ):
        from .viewer import memory_viewer as viewer

        return viewer()
    db, output = values["db"], values["output"]
    color = sys.stdout.isatty()

    def lines() -> Iterable[str]:
        from .formatting import terminal_width
        from .store import open_reader
        from .summary import summary_lines

        width = terminal_width()
        return summary_lines(open_reader(db).check(), output, color, width)

    _answer(lines, db, color)


def memorybank() -> None:
    """``memorybank``: the daemon, its status, and every other command."""
    values = None
    if sys.argv[1:2] == ["status"]:
        values = parse(sys.argv[2:], (DB, OUTPUT, JSON, ENDPOINT))
    if values is None:
        from .cli import main

        return main(prog_name="memorybank")

    def lines() -> Iterable[str]:
        from .status import status_lines

        output = "json" if values["as_json"] else values["output"]
        return status_lines(values["db"], output, values["endpoint"])

    _answer(lines, values["db"], sys.stdout.isatty())


def _answer(lines: Callable[[], Iterable[str]], db: str, color: bool) -> None:
    """Print ``lines()`` as click.echo would (escape sequences kept only on a terminal);
    a failure, even after some lines, ends as the error boundary ends it."""
    # No garbage collection from here on: the modules the answer loads make thousands of
    # objects, none of them garbage, which collections would walk again and again (a
    # twentieth of the command's instructions); the process ends as soon as it answers.
    gc.disable()
    out = sys.stdout
    try:
        for line in lines():
            if "\033" in line and not color:
                import click  # (rare: data holding escape sequences) it strips them, as ever

                click.echo(line, color=False)
            else:
                out.write(line + "\n")
        out.flush()
    except (Exception, KeyboardInterrupt) as exc:
        from .cli_common import fail

        fail(exc, db)
    # Everything is said and flushed: end here rather than tear the interpreter down
    # (freeing every module's objects, a last garbage collection), which is an eighth of
    # the command's instructions and changes nothing outside the process. Nothing on this
    # path registers atexit work (no logging, no threads: tests/test_startup.py); the
    # reader's connection is read-only, so closing it would write nothing.
    sys.stderr.flush()
    os._exit(0)
