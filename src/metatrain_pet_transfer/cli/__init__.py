"""``mtt-transfer``: tools around a transfer run, one subcommand per module.

Each subcommand lives in its own module, which exposes ``register(subparsers)``:
it adds its parser and sets ``run`` (a function of the parsed arguments that
returns the exit code). Adding a subcommand is one import and one line in
:data:`SUBCOMMANDS`; this file only dispatches.
"""

import argparse
import os
import sys
from typing import List, Optional

from . import demo, export, inspect, md, report, select


#: modules providing the subcommands, in the order ``--help`` lists them
SUBCOMMANDS = (demo, inspect, report, md, export, select)


def build_parser() -> argparse.ArgumentParser:
    """The ``mtt-transfer`` parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="mtt-transfer",
        description="Tools around pet_transfer runs (training itself is `mtt train`).",
    )
    subparsers = parser.add_subparsers(title="subcommands", metavar="COMMAND")
    for module in SUBCOMMANDS:
        module.register(subparsers)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run ``mtt-transfer`` with ``argv`` (default: the command line).

    :return: the exit code; argparse usage errors exit with 2
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.run(args)
    except BrokenPipeError:
        # `mtt-transfer inspect ... | head`: the reader left, which is no error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
