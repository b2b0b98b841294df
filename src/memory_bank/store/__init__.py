"""The store: the one interface the writer, the read queries and the maintenance jobs call.

SQLite (a file path) and PostgreSQL (a ``postgresql://`` URL) are siblings behind it; the
daemon loop, the wire format and the publisher never learn which one is in use.
"""

from __future__ import annotations

import os

from ..locations import is_url, real_path, redact_url, resolve_db_path
from .base import (
    InvalidDatabase,
    Reader,
    Store,
    StoreGone,
    StoreRefused,
    StoreUnavailable,
)

__all__ = [
    "InvalidDatabase",
    "Reader",
    "Store",
    "StoreGone",
    "StoreRefused",
    "StoreUnavailable",
    "is_url",
    "open_reader",
    "open_store",
    "redact_url",
]


def open_store(location: str | os.PathLike, **options) -> Store:
    """The writer's side of the database at ``location`` (a path or a postgresql:// URL)."""
    if is_url(location):
        from .postgresql import PostgresStore

        return PostgresStore(os.fspath(location), **options)
    from .sqlite import SqliteStore

    return SqliteStore(resolve_db_path(location), **options)


def open_reader(location: str | os.PathLike) -> Reader:
    """Read queries over the database at ``location`` (never writes, never creates it)."""
    if is_url(location):
        from .postgresql_reader import PostgresReader

        return PostgresReader(os.fspath(location))
    from .reader import SqliteReader

    return SqliteReader(real_path(location))
