"""Connecting to PostgreSQL, for the writer, the readers and ``migrate`` alike; and times
as psycopg sends them.

psycopg is the optional ``[postgresql]`` extra: importing this module never needs it, and
``connect`` raises an ImportError naming the ``pip install`` when it is missing.
"""

from __future__ import annotations

import datetime as dt
from functools import partial

try:
    import psycopg
except ImportError:  # the optional extra; connect() says how to install it
    psycopg = None  # type: ignore[assignment]

from ..locations import redact_url
from .base import StoreUnavailable

#: Epoch seconds (never None) as a UTC datetime: the conversion on the batch path.
utc_datetime = partial(dt.datetime.fromtimestamp, tz=dt.UTC)


def to_datetime(epoch_seconds: float | None) -> dt.datetime | None:
    """Epoch seconds as the timestamptz value psycopg sends (None stays None)."""
    return None if epoch_seconds is None else utc_datetime(float(epoch_seconds))


def require_driver() -> None:
    """Raise the ImportError that names the extra to install, when psycopg is missing."""
    if psycopg is None:
        raise ImportError(
            'the PostgreSQL store needs psycopg 3: pip install "memory_bank[postgresql]"'
        )


def connect(url: str, **kwargs):
    """A connection (autocommit; transactions are explicit), or StoreUnavailable."""
    require_driver()
    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=10, **kwargs)
    except psycopg.OperationalError as exc:
        # libpq's first two lines say what failed and where; its hints are left out.
        reason = " ".join(line.strip() for line in str(exc).strip().splitlines()[:2])
        raise StoreUnavailable(reason or f"cannot connect to {redact_url(url)}") from exc
