"""Simulated CSMS, charge point and charger, each run as its own process.

They follow the seed's anomaly cycle (limit 0 A -> 100 A -> remote start -> remote stop)
on a shared clock: cycle k starts at ``t0 + k * cycle``. Each logs the way the seed's
integration examples do, through ``MemoryBank`` in its own process.

    python -m memory_bank.demo.sim csms --db ev.db --t0 T --seconds 20 --cycle 4
"""

from __future__ import annotations

import argparse
import random
import time

from memory_bank import MemoryBank

CP_ID = "CP_1"


def transaction_id(t0: float, cycle: int) -> str:
    return f"TXN_{int(t0)}_{cycle + 1}"


def _sleep_until(at: float) -> None:
    delay = at - time.time()
    if delay > 0:
        time.sleep(delay)


def _cycles(t0: float, seconds: float, cycle: float):
    """The cycles that complete before ``t0 + seconds``."""
    k = 0
    while t0 + (k + 1) * cycle <= t0 + seconds + 1e-9:
        yield k, t0 + k * cycle
        k += 1


def run_csms(memory: MemoryBank, t0: float, seconds: float, cycle: float) -> None:
    memory.log_event(
        "OCPP_BOOT",
        "CSMS",
        f"Charge point {CP_ID} connected",
        {"cp_id": CP_ID, "model": "SimCharger", "vendor": "MemoryBank"},
    )
    for k, start in _cycles(t0, seconds, cycle):
        txn = transaction_id(t0, k)
        _sleep_until(start)
        memory.log_event("ANOMALY_CYCLE_START", "CSMS", f"Anomaly cycle {k + 1}", {"cycle": k + 1})
        memory.log_event("OCPP_SET_PROFILE", "CSMS", "SetChargingProfile 0A", {"limit": 0})
        _sleep_until(start + cycle * 0.125)
        memory.log_event("OCPP_SET_PROFILE", "CSMS", "SetChargingProfile 100A", {"limit": 100})
        memory.record_anomaly(
            "CURRENT_LIMIT_FLUCTUATION",
            "HIGH",
            "Rapid charging limit change: 0A → 100A",
            {"cycle": k + 1, "cp_id": CP_ID},
            current_value=100.0,
            expected_value=32.0,
        )
        memory.increment_session_anomaly_count(txn)
        _sleep_until(start + cycle * 0.25)
        memory.log_event(
            "OCPP_REMOTE_START",
            "CSMS",
            "RemoteStartTransaction sent",
            {"transaction_id": txn, "connector_id": 1},
        )
        _sleep_until(start + cycle * 0.75)
        memory.log_event(
            "OCPP_REMOTE_STOP", "CSMS", "RemoteStopTransaction sent", {"transaction_id": txn}
        )
        memory.record_pattern(
            "ANOMALY_CYCLE",
            {"sequence": ["0A", "100A", "START", "STOP"], "cycle_time": cycle},
            confidence=1.0,
        )


def run_cp(memory: MemoryBank, t0: float, seconds: float, cycle: float) -> None:
    memory.log_event("OCPP_BOOT", "CP", "BootNotification accepted", {"cp_id": CP_ID})
    for k, start in _cycles(t0, seconds, cycle):
        txn = transaction_id(t0, k)
        _sleep_until(start + cycle * 0.25 + 0.05)
        memory.log_event(
            "CAN_TX", "CP", "START command sent to charger", {"can_id": "0x200", "data": [1]}
        )
        memory.start_session(txn)
        _sleep_until(start + cycle * 0.75 + 0.05)
        memory.log_event(
            "CAN_TX", "CP", "STOP command sent to charger", {"can_id": "0x200", "data": [0]}
        )
        memory.end_session(txn)  # statistics come from the charger's current metrics


def run_charger(
    memory: MemoryBank, t0: float, seconds: float, cycle: float, period: float = 0.1
) -> None:
    rng = random.Random(int(t0))
    tick = 0
    end = t0 + seconds
    while True:
        at = t0 + tick * period
        if at > end:
            break
        _sleep_until(at)
        phase = ((at - t0) % cycle) / cycle
        charging = 0.25 + 0.05 / cycle < phase < 0.75 + 0.05 / cycle
        current = round(32.0 + rng.uniform(-1.5, 1.5), 2) if charging else 0.0
        memory.log_event(
            "CAN_RX",
            "CHARGER",
            f"Current reading: {current}A",
            {"can_id": "0x300", "current": current},
        )
        memory.record_metric("current", current, "A", {"connector_id": 1})
        memory.record_metric("voltage", round(230.0 + rng.uniform(-2, 2), 1), "V")
        tick += 1


ROLES = {"csms": run_csms, "cp": run_cp, "charger": run_charger}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("role", choices=sorted(ROLES))
    parser.add_argument("--db", required=True)
    parser.add_argument("--t0", type=float, required=True)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--cycle", type=float, default=4.0)
    args = parser.parse_args(argv)
    with MemoryBank(args.db) as memory:
        ROLES[args.role](memory, args.t0, args.seconds, args.cycle)


if __name__ == "__main__":
    main()
