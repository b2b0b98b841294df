"""MemoryBank: persistent memory for an EV-charging lab, one writer daemon per database.

``from memory_bank import Publisher`` loads only the light write half (standard library,
pyzmq, msgpack); ``MemoryBank`` (which also reads, through sqlite3) loads on first use;
the viewer loads neither.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["MemoryBank", "Publisher", "__version__"]


def __getattr__(name: str):
    if name == "Publisher":
        from .publisher import Publisher

        return Publisher
    if name == "MemoryBank":
        from .api import MemoryBank

        return MemoryBank
    raise AttributeError(f"module 'memory_bank' has no attribute {name!r}")
