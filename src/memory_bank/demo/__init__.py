"""A simulated EV-charging lab that logs through MemoryBank, for `memorybank demo`.

Its OCPP, websockets and CAN packages are the ``demo`` extra, never MemoryBank's own
dependencies (a lab's CSMS pins its own versions of them). Importing the package without
them raises one ImportError that says what to install.
"""

try:
    import can  # noqa: F401
    import ocpp  # noqa: F401
    import websockets  # noqa: F401
except ImportError as exc:
    # Named after this package, so that `python -m memory_bank.demo.csms` prints the
    # message on one line (runpy's "Error while finding module specification") too.
    raise ImportError(
        f"the demo needs ocpp, websockets and python-can ({exc.name} is not installed): "
        'pip install "memory_bank[demo]"',
        name=__name__,
    ) from None
