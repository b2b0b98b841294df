"""A CSMS (OCPP 1.6 central system) built on the `ocpp` package, logging through MemoryBank.

It runs the seed's anomaly cycle against every charge point that boots: SetChargingProfile
0 A, SetChargingProfile 100 A (an anomaly), RemoteStartTransaction, RemoteStopTransaction.
Transaction ids come from here, as in real OCPP.

    python -m memory_bank.demo.csms --db ev.db --port 9000 --cycle 8
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import signal
from datetime import UTC, datetime

import websockets
from ocpp.routing import on
from ocpp.v16 import ChargePoint
from ocpp.v16.enums import RegistrationStatus
from websockets.typing import Subprotocol

from memory_bank import MemoryBank

from .ocpp_compat import call, call_result, request_path

log = logging.getLogger("memory_bank.demo.csms")


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


def charging_profile(limit: float) -> dict:
    return {
        "charging_profile_id": 1,
        "stack_level": 0,
        "charging_profile_purpose": "TxDefaultProfile",
        "charging_profile_kind": "Absolute",
        "charging_schedule": {
            "charging_rate_unit": "A",
            "charging_schedule_period": [{"start_period": 0, "limit": limit}],
        },
    }


class ChargePointSession(ChargePoint):
    """The CSMS's side of one connected charge point."""

    transaction_ids = itertools.count(int(datetime.now().timestamp()) % 100000 * 100 + 1)

    def __init__(self, cp_id: str, connection, memory: MemoryBank, cycle: float):
        super().__init__(cp_id, connection)
        self.memory = memory
        self.cycle = cycle
        self.started: asyncio.Queue = asyncio.Queue()
        self.stopped: asyncio.Queue = asyncio.Queue()

    @on("BootNotification")
    def on_boot(self, charge_point_vendor, charge_point_model, **_):
        self.memory.log_event(
            "OCPP_BOOT",
            "CSMS",
            f"Charge point {self.id} connected",
            {"cp_id": self.id, "model": charge_point_model, "vendor": charge_point_vendor},
        )
        asyncio.get_running_loop().call_soon(lambda: asyncio.ensure_future(self.run_cycles()))
        return call_result.BootNotification(
            current_time=now_iso(), interval=10, status=RegistrationStatus.accepted
        )

    @on("Heartbeat")
    def on_heartbeat(self, **_):
        return call_result.Heartbeat(current_time=now_iso())

    @on("StatusNotification")
    def on_status(self, **_):
        return call_result.StatusNotification()

    @on("StartTransaction")
    def on_start_transaction(self, connector_id, id_tag, meter_start, timestamp, **_):
        txn = next(self.transaction_ids)
        self.started.put_nowait(txn)
        return call_result.StartTransaction(transaction_id=txn, id_tag_info={"status": "Accepted"})

    @on("StopTransaction")
    def on_stop_transaction(self, meter_stop, timestamp, transaction_id, **_):
        self.stopped.put_nowait(transaction_id)
        return call_result.StopTransaction()

    @on("MeterValues")
    def on_meter_values(self, connector_id, meter_value, **_):
        return call_result.MeterValues()

    async def command(self, event_type: str, message: str, payload, data: dict):
        self.memory.log_event("OCPP_COMMAND", "CSMS", message, data)
        if event_type != "OCPP_COMMAND":
            self.memory.log_event(event_type, "CSMS", message, data)
        return await self.call(payload)

    async def run_cycles(self) -> None:
        """The seed's anomaly cycle, every ``cycle`` seconds, until the connection ends."""
        try:
            await self._cycles()
        except websockets.ConnectionClosed:
            log.info("charge point %s disconnected", self.id)

    async def _cycles(self) -> None:
        loop = asyncio.get_running_loop()
        number = 0
        while True:
            number += 1
            start = loop.time()
            self.memory.log_event(
                "ANOMALY_CYCLE_START",
                "CSMS",
                f"Anomaly cycle {number}",
                {"cycle": number, "cp_id": self.id},
            )
            await self.command(
                "OCPP_SET_PROFILE",
                "SetChargingProfile 0A",
                call.SetChargingProfile(connector_id=1, cs_charging_profiles=charging_profile(0)),
                {"limit": 0, "cp_id": self.id},
            )
            await asyncio.sleep(max(0.0, start + self.cycle * 0.125 - loop.time()))
            await self.command(
                "OCPP_SET_PROFILE",
                "SetChargingProfile 100A",
                call.SetChargingProfile(connector_id=1, cs_charging_profiles=charging_profile(100)),
                {"limit": 100, "cp_id": self.id},
            )
            self.memory.record_anomaly(
                "CURRENT_LIMIT_FLUCTUATION",
                "HIGH",
                "Rapid charging limit change: 0A → 100A",
                {"cycle": number, "cp_id": self.id},
                current_value=100.0,
                expected_value=32.0,
            )
            await asyncio.sleep(max(0.0, start + self.cycle * 0.25 - loop.time()))
            await self.command(
                "OCPP_REMOTE_START",
                "RemoteStartTransaction sent",
                call.RemoteStartTransaction(id_tag="MEMORYBANK", connector_id=1),
                {"connector_id": 1, "cp_id": self.id},
            )
            txn = await self.started.get()
            self.memory.increment_session_anomaly_count(f"TXN_{txn}")
            await asyncio.sleep(max(0.0, start + self.cycle * 0.75 - loop.time()))
            await self.command(
                "OCPP_REMOTE_STOP",
                "RemoteStopTransaction sent",
                call.RemoteStopTransaction(transaction_id=txn),
                {"transaction_id": txn, "cp_id": self.id},
            )
            await self.stopped.get()
            self.memory.record_pattern(
                "ANOMALY_CYCLE",
                {"sequence": ["0A", "100A", "START", "STOP"], "cycle_time": self.cycle},
                confidence=1.0,
            )
            await asyncio.sleep(max(0.0, start + self.cycle - loop.time()))


async def serve(db: str, port: int, cycle: float, ready_file: str | None) -> None:
    memory = MemoryBank(db)

    async def on_connect(connection):
        cp_id = request_path(connection).strip("/") or "CP"
        session = ChargePointSession(cp_id, connection, memory, cycle)
        try:
            await session.start()
        except websockets.ConnectionClosed:
            pass

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with websockets.serve(
        on_connect, "127.0.0.1", port, subprotocols=[Subprotocol("ocpp1.6")]
    ) as server:
        actual = server.sockets[0].getsockname()[1]
        log.info("CSMS listening on ws://127.0.0.1:%d", actual)
        if ready_file:
            with open(ready_file, "w") as fh:
                fh.write(str(actual))
        await stop.wait()
    memory.close()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True)
    parser.add_argument("--port", type=int, default=0, help="0: a free port")
    parser.add_argument("--cycle", type=float, default=8.0)
    parser.add_argument("--ready-file", help="write the port here once listening")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    asyncio.run(serve(args.db, args.port, args.cycle, args.ready_file))


if __name__ == "__main__":
    main()
