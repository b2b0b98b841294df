"""A charge point (OCPP 1.6 client on the `ocpp` package) driving a charger over CAN.

The charger runs in this process on python-can's virtual bus (that bus only connects
buses of one process): the charge point sends it limit/START/STOP frames (0x200) and it
answers with current and voltage readings (0x300) twice a second. The charge point logs both
directions, records each reading as a `current` metric, reports MeterValues to the CSMS,
and starts/ends a session per transaction, as the seed's integration examples do.

    python -m memory_bank.demo.cp --db ev.db --url ws://127.0.0.1:9000/CP_1
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import signal
import struct
from datetime import UTC, datetime

import can
import websockets
from ocpp.routing import on
from ocpp.v16 import ChargePoint
from websockets.typing import Subprotocol

from memory_bank import MemoryBank

from .ocpp_compat import call, call_result

log = logging.getLogger("memory_bank.demo.cp")

COMMAND_ID, READING_ID = 0x200, 0x300
CMD_LIMIT, CMD_START, CMD_STOP = 1, 2, 3
CHANNEL = "memorybank-demo"


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


async def charger(period: float = 0.5) -> None:
    """The charger: obeys 0x200 commands, reports its current on 0x300."""
    bus = can.Bus(interface="virtual", channel=CHANNEL, receive_own_messages=False)
    rng = random.Random(7)
    limit, charging = 32.0, False
    loop = asyncio.get_running_loop()
    reader = can.AsyncBufferedReader()
    notifier = can.Notifier(bus, [reader], loop=loop)
    try:
        while True:
            deadline = loop.time() + period
            while (left := deadline - loop.time()) > 0:
                try:
                    frame = await asyncio.wait_for(reader.get_message(), left)
                except TimeoutError:
                    break
                if frame.arbitration_id != COMMAND_ID:
                    continue
                if frame.data[0] == CMD_LIMIT:
                    limit = float(frame.data[1])
                elif frame.data[0] == CMD_START:
                    charging = True
                elif frame.data[0] == CMD_STOP:
                    charging = False
            current = min(limit, 32.0) + rng.uniform(-1.5, 1.5) if charging else 0.0
            current = max(0.0, round(current, 2))
            volts = round(230.0 + rng.uniform(-2.0, 2.0), 1)
            bus.send(
                can.Message(
                    arbitration_id=READING_ID,
                    is_extended_id=False,
                    data=struct.pack(">HH", int(current * 100), int(volts * 10)),
                )
            )
    finally:
        notifier.stop()
        bus.shutdown()


class ChargePointClient(ChargePoint):
    def __init__(self, cp_id: str, connection, memory: MemoryBank, bus: can.BusABC):
        super().__init__(cp_id, connection)
        self.memory = memory
        self.bus = bus
        self.transaction: int | None = None

    def can_send(self, data: list[int], what: str) -> None:
        self.bus.send(can.Message(arbitration_id=COMMAND_ID, data=data, is_extended_id=False))
        self.memory.log_event("CAN_TX", "CP", what, {"can_id": hex(COMMAND_ID), "data": data})

    @on("SetChargingProfile")
    def on_set_charging_profile(self, connector_id, cs_charging_profiles, **_):
        periods = cs_charging_profiles["charging_schedule"]["charging_schedule_period"]
        limit = int(periods[0]["limit"])
        self.can_send([CMD_LIMIT, min(limit, 255)], f"Limit {limit}A sent to charger")
        return call_result.SetChargingProfile(status="Accepted")

    @on("RemoteStartTransaction")
    def on_remote_start(self, id_tag, **_):
        asyncio.ensure_future(self.start_transaction(id_tag))
        return call_result.RemoteStartTransaction(status="Accepted")

    @on("RemoteStopTransaction")
    def on_remote_stop(self, transaction_id, **_):
        asyncio.ensure_future(self.stop_transaction(transaction_id))
        return call_result.RemoteStopTransaction(status="Accepted")

    async def start_transaction(self, id_tag: str) -> None:
        reply = await self.call(
            call.StartTransaction(connector_id=1, id_tag=id_tag, meter_start=0, timestamp=now_iso())
        )
        self.transaction = reply.transaction_id
        self.memory.start_session(f"TXN_{self.transaction}")
        self.can_send([CMD_START], "START command sent to charger")

    async def stop_transaction(self, transaction_id: int) -> None:
        self.can_send([CMD_STOP], "STOP command sent to charger")
        await self.call(
            call.StopTransaction(meter_stop=0, timestamp=now_iso(), transaction_id=transaction_id)
        )
        self.memory.end_session(f"TXN_{transaction_id}")  # statistics from the metrics
        self.transaction = None

    async def read_charger(self) -> None:
        """CAN_RX: each reading becomes an event, a metric and a MeterValues report."""
        reader = can.AsyncBufferedReader()
        notifier = can.Notifier(self.bus, [reader], loop=asyncio.get_running_loop())
        try:
            while True:
                frame = await reader.get_message()
                if frame.arbitration_id != READING_ID:
                    continue
                raw_current, raw_volts = struct.unpack(">HH", bytes(frame.data[:4]))
                current, volts = raw_current / 100, raw_volts / 10
                self.memory.log_event(
                    "CAN_RX",
                    "CP",
                    f"Current reading: {current}A",
                    {"can_id": hex(READING_ID), "current": current, "voltage": volts},
                )
                self.memory.record_metric("current", float(current), "A", {"connector_id": 1})
                self.memory.record_metric("voltage", float(volts), "V", {"connector_id": 1})
                await self.call(
                    call.MeterValues(
                        connector_id=1,
                        transaction_id=self.transaction,
                        meter_value=[
                            {
                                "timestamp": now_iso(),
                                "sampled_value": [
                                    {
                                        "value": str(current),
                                        "measurand": "Current.Import",
                                        "unit": "A",
                                    }
                                ],
                            }
                        ],
                    )
                )
        finally:
            notifier.stop()


async def run(db: str, url: str) -> None:
    memory = MemoryBank(db)
    bus = can.Bus(interface="virtual", channel=CHANNEL, receive_own_messages=False)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    cp_id = url.rstrip("/").rsplit("/", 1)[-1]
    tasks = [asyncio.ensure_future(charger())]
    try:
        async with websockets.connect(url, subprotocols=[Subprotocol("ocpp1.6")]) as connection:
            client = ChargePointClient(cp_id, connection, memory, bus)
            tasks += [
                asyncio.ensure_future(client.start()),
                asyncio.ensure_future(client.read_charger()),
            ]
            await client.call(
                call.BootNotification(
                    charge_point_model="SimCharger", charge_point_vendor="MemoryBank"
                )
            )
            memory.log_event("OCPP_BOOT", "CP", "BootNotification accepted", {"cp_id": cp_id})
            waiter = asyncio.ensure_future(stop.wait())
            await asyncio.wait([waiter, tasks[1]], return_when=asyncio.FIRST_COMPLETED)
    except websockets.ConnectionClosed:
        pass
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        bus.shutdown()
        memory.close()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True)
    parser.add_argument("--url", required=True, help="ws://HOST:PORT/CP_ID of the CSMS")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    asyncio.run(run(args.db, args.url))


if __name__ == "__main__":
    main()
