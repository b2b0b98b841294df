"""Control requests, dispatched: one small handler per op.

sync (a publisher's acknowledgement barrier), ping, stats (the figures `memorybank status`
shows), lease (a block of ids, and under CURVE a spool token), retention and vacuum. Each
handler reads its request and builds its reply through ``wire`` and answers through
``reply``, now or once what it waits for is done.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from .. import wire
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
        reply(wire.error_reply(request.get("rid"), f"unknown op {op!r}"))
        return
    handler(writer, request, reply, peer)


def _sync(writer: Writer, request: dict, reply: Reply, peer: str) -> None:
    """Answer once the publisher's messages up to ``seq`` are committed (or it must resend,
    or ``wait`` passes); it may report what it dropped and what it sends no more (``base``),
    and ask for its spool token."""
    sync = wire.SyncRequest.parse(request)
    pub = sync.publisher_id
    if sync.token:
        token = writer.spools.token(pub, peer)
        reply = functools.partial(_with_spool_token, reply, token)
    acks = writer.acks
    if sync.dropped is not None:
        acks.dropped[pub] = sync.dropped
    if sync.base is not None:
        acks.settle(pub, sync.base)
    acks.wait(pub, sync.seq, sync.wait, sync.urgent, sync.rid, reply)


def _ping(writer: Writer, request: dict, reply: Reply, peer: str) -> None:
    reply(wire.ping_reply(request.get("rid"), os.getpid(), writer.name, writer.instance))


def _stats(writer: Writer, request: dict, reply: Reply, peer: str) -> None:
    reply(wire.stats_reply(request.get("rid"), writer.figures()))


def _lease(writer: Writer, request: dict, reply: Reply, peer: str) -> None:
    rid = request.get("rid")
    try:
        block = writer.lease_id_block()
    except writer.unavailable_errors as exc:
        reply(wire.error_reply(rid, f"cannot lease ids now: {exc}"))
        return
    reply(wire.lease_reply(rid, block, writer.spools.token(block, peer)))


def _maintenance(writer: Writer, request: dict, reply: Reply, peer: str) -> None:
    run = wire.MaintenanceRequest.parse(request)
    writer.maintenance.start(run.job, run.trigger, reply, run.rid, run.days, run.then)


HANDLERS: dict[str, Handler] = {
    wire.OP_SYNC: _sync,
    wire.OP_PING: _ping,
    wire.OP_STATS: _stats,
    wire.OP_LEASE: _lease,
    **{job: _maintenance for job in wire.MAINTENANCE_JOBS},
}


def _with_spool_token(reply: Reply, token: dict | None, body: dict) -> None:
    """``reply`` with the spool token added to the body (a reply that may be sent later)."""
    reply(wire.with_spool_token(body, token))
