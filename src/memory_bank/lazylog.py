"""A logger that imports ``logging`` on its first use.

The store's modules log only on paths a reader never takes (a schema migration, a replayed
message), and importing ``logging`` (with traceback, textwrap and the regular expressions
they compile) is a large part of a short command's start-up: ``memory-viewer --summary``
reads through these modules and never logs.
"""

from __future__ import annotations

# typing.TYPE_CHECKING, without importing typing: a tenth of a short command's start-up
# (mypy and ruff read any name TYPE_CHECKING so).
TYPE_CHECKING = False

if TYPE_CHECKING:
    import logging


class _LazyLogger:
    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attribute: str):
        import logging

        value = getattr(logging.getLogger(self._name), attribute)
        setattr(self, attribute, value)  # the logger's bound method, from now on
        return value


def lazy_logger(name: str) -> logging.Logger:
    """``logging.getLogger(name)``, resolved when first used."""
    return _LazyLogger(name)  # type: ignore[return-value]
