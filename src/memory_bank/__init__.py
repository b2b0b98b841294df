"""MemoryBank: persistent memory for an EV-charging lab, one writer daemon per database.

``from memory_bank import Publisher`` stays light (standard library, pyzmq, msgpack);
``MemoryBank`` (which also reads, through sqlite3) is imported on first use.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .publisher import Publisher  # noqa: E402

__all__ = ["MemoryBank", "Publisher", "__version__"]


def __getattr__(name: str):
    if name == "MemoryBank":
        from .api import MemoryBank

        return MemoryBank
    raise AttributeError(f"module 'memory_bank' has no attribute {name!r}")
