"""What every command shares, in sqlite-utils' manner: one error boundary, one ``--db``
option, one output option.

The boundary is a click group class: every command under it, including commands added
later with ``@main.command()`` or ``main.add_command``, fails with one line on stderr that
says what went wrong and what to do, never a traceback. The exit status says whose the
problem is: 2 when the input is wrong or missing (a file that is not a MemoryBank
database, a folder that does not exist, a bad time), 1 when the world is (no daemon, an
unreachable server, a missing optional package, a full disk). ``--debug`` or
``MEMORYBANK_DEBUG=1`` lets the traceback through.
"""

from __future__ import annotations

import errno
import os
import sys
from typing import NoReturn

import click

from .cli_options import DB, OUTPUT, Option
from .locations import DEFAULT_DATABASE, is_url, redact_url, resolve_db_path

DEBUG_ENV = "MEMORYBANK_DEBUG"
_DB_KEY = "memorybank.db"  # in click's ctx.meta, shared by a command and its groups
_DEBUG_KEY = "memorybank.debug"

# The extra that brings each optional top-level package, for "pip install" hints.
EXTRA_FOR = {
    "matplotlib": "png",
    "psycopg": "postgresql",
    "ocpp": "demo",
    "websockets": "demo",
    "can": "demo",
    "starlette": "web",
    "uvicorn": "web",
    "apprise": "alerts",
    "paho": "alerts",
    "prometheus_client": "alerts",
}

# OSError numbers that mean "the path you gave cannot be used" (input) rather than "the
# machine failed" (disk full, I/O error: runtime).
_PATH_ERRNOS = {
    errno.ENOENT,
    errno.EEXIST,
    errno.ENOTDIR,
    errno.EISDIR,
    errno.EACCES,
    errno.EPERM,
    errno.EROFS,
    errno.ENAMETOOLONG,
}


_PATH_ERRORS = (
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
)


class InputError(click.ClickException):
    """The user's input is wrong or missing: exit status 2."""

    exit_code = 2


def require_database(db: str) -> None:
    """A reading command's SQLite path must hold a database already: readers never create
    one, so a mistyped path fails here (exit 2) rather than showing an empty database."""
    if not is_url(db) and not resolve_db_path(db).exists():
        raise InputError(
            f"no database at {resolve_db_path(db)}; start a daemon with "
            f"'memorybank daemon --db {db}', or pass --db PATH"
        )


def debugging(ctx: click.Context | None = None) -> bool:
    if ctx is not None and ctx.meta.get(_DEBUG_KEY):
        return True
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def _sqlite_failure(exc: Exception, db: str) -> click.ClickException:
    text = str(exc)
    runtime = ("locked", "busy", "disk i/o", "full", "interrupt")
    if any(word in text.lower() for word in runtime):
        return click.ClickException(f"SQLite cannot use {db} now: {text}")
    return InputError(f"{db} cannot be used as a MemoryBank database: {text}")


def _path_failure(exc: OSError) -> click.ClickException:
    path = exc.filename
    if path is None:
        return InputError(str(exc))
    folder = os.path.dirname(os.path.abspath(os.fspath(path)))
    if exc.errno == errno.ENOENT and not os.path.isdir(folder):
        return InputError(f"{path}: the folder {folder} does not exist; create it first")
    return InputError(f"{path}: {exc.strerror}")


def _import_failure(exc: ImportError) -> click.ClickException:
    text = str(exc)
    if "pip install" in text:
        return click.ClickException(text)
    top = (exc.name or "").split(".")[0]
    if top in EXTRA_FOR:
        return click.ClickException(
            f'{top} is not installed: pip install "memory_bank[{EXTRA_FOR[top]}]"'
        )
    return click.ClickException(text)


def as_click_exception(exc: Exception, db: str | None = None) -> click.ClickException:
    """The one line (and exit status) a command fails with for ``exc``."""
    shown = redact_url(db) if db else "the database"
    sqlite3 = sys.modules.get("sqlite3")  # a sqlite3 error means sqlite3 is loaded
    psycopg = sys.modules.get("psycopg")
    if isinstance(exc, ValueError):  # InvalidDatabase, a bad configuration, a bad time...
        return InputError(str(exc))
    if sqlite3 is not None and isinstance(exc, sqlite3.Error):
        return _sqlite_failure(exc, shown)
    if psycopg is not None and isinstance(exc, psycopg.errors.UndefinedTable):
        return InputError(
            f"{shown} has no MemoryBank tables ({exc.diag.message_primary}); a daemon "
            f"creates them: memorybank daemon --db {shown}"
        )
    if psycopg is not None and isinstance(exc, psycopg.Error):
        return click.ClickException(f"PostgreSQL error on {shown}: {exc}")
    if isinstance(exc, ImportError):
        return _import_failure(exc)
    if isinstance(exc, _PATH_ERRORS) or (isinstance(exc, OSError) and exc.errno in _PATH_ERRNOS):
        return _path_failure(exc)
    if isinstance(exc, ConnectionError | RuntimeError | OSError):
        return click.ClickException(str(exc) or type(exc).__name__)
    return click.ClickException(
        f"unexpected {type(exc).__name__}: {exc} (run again with --debug or "
        f"{DEBUG_ENV}=1 for the traceback, and please report it)"
    )


def _set_debug(ctx: click.Context, _param, value: bool) -> None:
    if value:
        ctx.meta[_DEBUG_KEY] = True


class ErrorBoundary(click.Group):
    """A click group whose every command turns a failure into one line and an exit status.

    It also gives the group a ``--debug`` flag (traceback instead of the one line).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.params.append(
            click.Option(
                ["--debug"],
                is_flag=True,
                expose_value=False,
                is_eager=True,
                callback=_set_debug,
                help=f"Show a failure's traceback (also: {DEBUG_ENV}=1).",
            )
        )

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            if debugging(ctx):
                raise
            raise as_click_exception(exc, ctx.meta.get(_DB_KEY)) from exc


def report(
    exc: Exception, ctx: click.Context | None = None, db: str | None = None
) -> click.ClickException:
    """Show ``exc`` as the boundary would, without exiting (the interactive menu goes on);
    returns what was shown. ``db``: the database named, outside a click context."""
    if debugging(ctx):
        raise exc
    if not isinstance(exc, click.ClickException):
        exc = as_click_exception(exc, ctx.meta.get(_DB_KEY) if ctx else db)
    exc.show()
    return exc


def fail(exc: Exception | KeyboardInterrupt, db: str | None) -> NoReturn:
    """Exit as a command under the boundary would on ``exc``, outside any click context:
    the console scripts' fast path (cli_fast) ends its failures here."""
    if isinstance(exc, KeyboardInterrupt | EOFError | click.Abort):  # as click's main does
        if not isinstance(exc, click.Abort):
            click.echo(file=sys.stderr)
        click.echo("Aborted!", file=sys.stderr)
        sys.exit(1)
    sys.exit(report(exc, db=db).exit_code)


def remember_db(ctx: click.Context, _param, value):
    """An option callback: the database this command works on, named in its errors."""
    if value is not None:
        ctx.meta[_DB_KEY] = value
    return value


def click_option(option: Option, **settings):
    """The click option of a declared ``option`` (cli_options: names, default, choices),
    with ``settings`` (help, callback...) that only click uses."""
    if option.flag:
        return click.option(*option.names, option.dest, is_flag=True, **settings)
    kind = click.Choice(option.choices) if option.choices else None
    return click.option(*option.names, option.dest, default=option.default, type=kind, **settings)


def db_option(
    default: str | None = DEFAULT_DATABASE,
    help: str = "Database: a SQLite path or a postgresql:// URL.",
):
    """The one ``--db`` option: the database a command works on (named in its errors)."""
    return click_option(
        DB._replace(default=default),
        show_default=default is not None,
        metavar="PATH|URL",
        help=help,
        callback=remember_db,
    )


output_option = click_option(
    OUTPUT,
    show_default=True,
    help="Output format: a table for people; json, jsonl or csv for scripts.",
)
