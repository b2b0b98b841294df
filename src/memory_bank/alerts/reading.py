"""How readers query the alerts' tables on either store: the queries of outbox.py and
stream_log.py in each driver's placeholders, and the error a missing table gives.

Apart from storage.py (the writer's side), so that a reader (the viewer's summary, which
asks for the alerts firing) loads neither contextlib nor the storage classes.
"""

from __future__ import annotations

from functools import lru_cache

NO_TABLE_SQLSTATE = "42P01"  # PostgreSQL's undefined_table


def missing_table(exc: Exception) -> bool:
    """The alerts' tables are not there (a database no daemon ran alerts on, or a
    PostgreSQL database a daemon of this version has not yet opened)."""
    return "no such table" in str(exc) or getattr(exc, "sqlstate", None) == NO_TABLE_SQLSTATE


@lru_cache(maxsize=256)
def pg_sql(sql: str) -> str:
    """outbox.py's and stream_log.py's SQL with psycopg's placeholders (they hold no other
    ``?`` and no ``%``)."""
    return sql.replace("?", "%s")


def reader_query(reader):
    """A reader's ``tuples``, taking the ``?`` placeholders outbox.py writes."""
    if getattr(reader, "placeholder", "?") == "?":
        return reader.tuples
    return lambda sql, params=(): reader.tuples(pg_sql(sql), params)
