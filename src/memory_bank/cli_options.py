"""The options the hot commands share, declared once: click builds its options from these
(cli_common), and the console scripts' fast path (cli_fast) reads a command line with them.

``parse`` is deliberately narrow: a command line made only of these options, each in a
form click reads the same way, gives their values; anything else (another option, --help,
a positional argument, a doubtful value) gives None, and click then parses the line
itself, reporting any mistake. So the fast path never accepts what click would refuse.
Standard library only: nothing here may load click.
"""

from __future__ import annotations

from collections import namedtuple

from .formatting import OUTPUTS
from .locations import DEFAULT_DATABASE

TYPE_CHECKING = False  # (typing.TYPE_CHECKING without importing typing: see lazylog)
if TYPE_CHECKING:
    from typing import Any

# names: as typed ("--output", "-o"); dest: the command function's parameter; default;
# flag: takes no value; choices: the values allowed, if not any. (Not typing.NamedTuple:
# importing typing would be a tenth of the hot commands' start-up.)
Option = namedtuple(
    "Option", ["names", "dest", "default", "flag", "choices"], defaults=(None, False, None)
)


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
