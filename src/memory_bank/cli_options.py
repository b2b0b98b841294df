"""The options the hot commands share, declared once: click builds its options from these
(cli_common), and the console scripts' fast path (cli_fast) reads a command line with them.

``parse`` is deliberately narrow: a command line made only of these options, each in a
form click reads the same way, gives their values; anything else (another option, --help,
a positional argument, a doubtful value) gives None, and click then parses the line
itself, reporting any mistake. So the fast path never accepts what click would refuse.
Standard library only: nothing here may load click.
"""

# No `from __future__ import annotations` here: typing.NamedTuple compiles each field's
# annotation when it is a string (formatting.py says the same).

from typing import Any, NamedTuple

from .formatting import OUTPUTS
from .locations import DEFAULT_DATABASE


class Option(NamedTuple):
    names: tuple[str, ...]  # as typed: "--output", "-o"
    dest: str  # the command function's parameter
    default: str | bool | None = None
    flag: bool = False
    choices: tuple[str, ...] | None = None


DB = Option(("--db",), "db", DEFAULT_DATABASE)
OUTPUT = Option(("--output", "-o"), "output", "table", choices=OUTPUTS)
JSON = Option(("--json",), "as_json", False, flag=True)
ENDPOINT = Option(("--endpoint",), "endpoint")
SUMMARY = Option(("--summary",), "summary", False, flag=True)


def parse(argv: list[str], options: tuple[Option, ...]) -> dict[str, Any] | None:
    """The values ``argv`` gives ``options`` (defaults for those not given), or None when
    ``argv`` holds anything else or anything click might read differently."""
    by_name = {name: option for option in options for name in option.names}
    values: dict[str, Any] = {option.dest: option.default for option in options}
    args = iter(argv)
    for arg in args:
        name, value = arg, None
        if arg.startswith("--") and "=" in arg:
            name, value = arg.split("=", 1)
        elif len(arg) > 2 and arg[0] == "-" and arg[1] != "-":  # -ojson
            name, value = arg[:2], arg[2:]
        option = by_name.get(name)
        if option is None:
            return None
        if option.flag:
            if value is not None:
                return None
            values[option.dest] = True
            continue
        if value is None:
            value = next(args, None)
        if not value or value.startswith("-") or value not in (option.choices or (value,)):
            return None
        values[option.dest] = value
    return values
