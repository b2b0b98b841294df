"""`python -m memory_bank` is `memorybank`."""

from .cli import main

main(prog_name="memorybank")
