"""Control requests, dispatched: one small handler per op.

sync (a publisher's acknowledgement barrier), ping, stats (the figures `memorybank status`
shows), lease (a block of ids, and under CURVE a spool token), retention and vacuum. Each
handler answers through ``reply``, now or once what it waits for is done.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..spool_auth import LOCAL
from .acks import Reply

if TYPE_CHECKING:
    from .core import Writer

Handler = Callable[["Writer", dict, Reply, str], None]


def dispatch(writer: Writer, request: dict, reply: Reply, peer: str = LOCAL) -> None:
    """Answer one control request; an unknown op gets an error reply."""
    op = request.get("op")
    handler = HANDLERS.get(op) if isinstance(op, str) else None
    if handler is None:
        reply({"rid": request.get("rid"), "ok": False, "error": f"unknown op {op!r}"})
        return
    handler(writer, request, reply, peer)


def _sync(writer: Writer, request: dict, reply: Reply, peer: str) -> None:
    """Answer once the publisher's messages up to ``seq`` are committed (or it must resend,
    or ``wait`` passes); ``token`` asks for its spool token, ``dropped`` and ``base`` report
    what it dropped and what it sends no more."""
    pub, seq = int(request["pub"]), int(request["seq"])
    if request.get("token"):
        token = writer.spools.token(pub, peer)
        reply = functools.partial(_with_fields, reply, {"spool_token": token})
    acks = writer.acks
    if "dropped" in request:
        acks.dropped[pub] = int(request["dropped"])
    if "base" in request:
        acks.settle(pub, int(request["base"]))
    acks.wait(
        pub,
        seq,
        float(request.get("wait", 10.0)),
        bool(request.get("urgent", True)),
        request.get("rid"),
        reply,
    )


def _ping(writer: Writer, request: dict, reply: Reply, peer: str) -> None:
    reply(
        {
            "rid": request.get("rid"),
            "ok": True,
            "pid": os.getpid(),
            "db": writer.name,
            "instance": writer.instance,
        }
    )


def _stats(writer: Writer, request: dict, reply: Reply, peer: str) -> None:
    reply({"rid": request.get("rid"), "ok": True, "stats": writer.figures()})


def _lease(writer: Writer, request: dict, reply: Reply, peer: str) -> None:
    rid = request.get("rid")
    try:
        block = writer.lease_id_block()
    except writer.unavailable_errors as exc:
        reply({"rid": rid, "ok": False, "error": f"cannot lease ids now: {exc}"})
        return
    reply({"rid": rid, "ok": True, "block": block, "spool_token": writer.spools.token(block, peer)})


def _maintenance(writer: Writer, request: dict, reply: Reply, peer: str) -> None:
    days = request.get("days")
    writer.start_maintenance(
        request["op"],
        request.get("trigger", "request"),
        reply,
        request.get("rid"),
        None if days is None else float(days),
        tuple(request.get("then", ())),
    )


HANDLERS: dict[str, Handler] = {
    "sync": _sync,
    "ping": _ping,
    "stats": _stats,
    "lease": _lease,
    "retention": _maintenance,
    "vacuum": _maintenance,
}


def _with_fields(reply: Reply, fields: dict, body: dict) -> None:
    """``reply`` with ``fields`` added to the body (a reply that may be sent later)."""
    reply({**body, **fields})
