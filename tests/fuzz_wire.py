"""Coverage-guided fuzzing (atheris) of the daemon's decode-and-validate path.

    python tests/fuzz_wire.py -runs=100000 -seed=1

Every input must decode into rows or be refused with WireError: nothing else may escape,
and every row kept must have its table's shape and types.
"""

from __future__ import annotations

import sys
import time

import atheris
import msgpack

with atheris.instrument_imports():
    from memory_bank import wire

VALIDATOR = wire.Validator()


def check(raw: bytes) -> None:
    try:
        msg = wire.decode(raw, VALIDATOR)
    except wire.WireError:
        return
    for row in msg.events:
        assert len(row) == wire.EVENT_FIELDS and type(row[0]) is int and type(row[2]) is str
    for row in msg.anomalies:
        assert len(row) == wire.ANOMALY_FIELDS and type(row[3]) is str
    for row in msg.metrics:
        assert len(row) == wire.METRIC_FIELDS and row[3] == row[3]  # finite, not NaN
    for row in msg.operations:
        assert row[0] in wire.OP_NAMES


def seeds() -> list[bytes]:
    now = time.time()
    publisher = 9  # the id block its rows' ids lie in
    pub = publisher << 32
    bad = [[pub + 9, "t", 1, None, b"x", []], [pub + 10, float("nan"), "E", "C", None, None]]
    return [
        msgpack.packb([1, publisher, 2, 1, bad, bad, bad, [[9, now], [1, now]]]),
        msgpack.packb(
            [
                1,
                publisher,
                1,
                0,
                [[pub + 1, now, "E", "C", "m", '{"a": 1}']],
                [[pub + 2, now, "A", "HIGH", "d", None, 1.0, 2.0]],
                [[pub + 3, now, "current", 3.5, "A", None]],
                [
                    [1, now, "S"],
                    [2, now, "S"],
                    [3, now, "S", None, 1.0, None, 2.0],
                    [4, now, "P", "{}", "{}", 0.5],
                ],
            ]
        ),
    ]


def main() -> None:
    """Starts from a corpus of valid messages (written to a temporary folder) so the fuzzer
    mutates real messages rather than searching for msgpack from nothing."""
    import tempfile
    from pathlib import Path

    corpus = Path(tempfile.mkdtemp(prefix="mb-fuzz-corpus-"))
    for i, raw in enumerate(seeds()):
        check(raw)
        (corpus / f"seed{i}").write_bytes(raw)
    atheris.Setup([*sys.argv, str(corpus)], check)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
