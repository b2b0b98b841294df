"""One demo for every ocpp and websockets release a lab may have pinned.

ocpp 1.0 renamed its payload classes (``call.BootNotificationPayload`` became
``call.BootNotification``) and 2.0 dropped the old names; websockets 14 made its new
asyncio server the default, whose connection carries the path on ``request``. The demo
names things the new way and this module answers for the old releases too, so the
``demo`` extra accepts ocpp 0.20 and websockets 12 (the seed's pins) as well as today's.
"""

from __future__ import annotations

from types import ModuleType

from ocpp.v16 import call as _call
from ocpp.v16 import call_result as _call_result


class _Payloads:
    """``call.X`` as ocpp >= 1.0 names it, ``call.XPayload`` on ocpp 0.x."""

    def __init__(self, module: ModuleType):
        self._module = module

    def __getattr__(self, name: str):
        try:
            return getattr(self._module, name)
        except AttributeError:
            return getattr(self._module, name + "Payload")


call = _Payloads(_call)
call_result = _Payloads(_call_result)


def request_path(connection) -> str:
    """The URL path a charge point connected to (new asyncio server, or the legacy one)."""
    request = getattr(connection, "request", None)
    return request.path if request is not None else connection.path
