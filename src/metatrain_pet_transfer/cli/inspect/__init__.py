"""``mtt-transfer inspect``: what a checkpoint holds, before writing ``options.yaml``.

A user starting a transfer needs to know the target names, units and gradients the
checkpoint was trained on, its atomic types (new ones in the data are added by
``pet_transfer``, not by native PET), its cutoff
and hypers (``architecture.model`` must match them or be left out) and whether the
installed metatrain can read it. All of this is in the checkpoint, but reading it
by hand means unpickling a file that may come from a stranger.

Everything here reads the file through :func:`load_checkpoint_safely`
(``weights_only=True`` with a minimal allow-list), so inspecting a file never runs
code from it. ``--verify`` answers only "is this file safe and usable?", with an
exit code a script can test.
"""

import argparse
import json
import sys
from typing import List

from ...checkpoints import CheckpointError
from .describe import (
    composition_weights,
    count_parameters,
    describe_checkpoint,
    verify_checkpoint,
)
from .formatting import format_summary, options_snippet


#: exit codes of ``inspect``: usable / refused by ``--verify`` / unreadable
EXIT_OK, EXIT_REFUSED, EXIT_UNREADABLE = 0, 1, 2


def register(subparsers) -> None:
    """Add the ``inspect`` subcommand to the ``mtt-transfer`` parser."""
    parser = subparsers.add_parser(
        "inspect",
        help="show what a checkpoint holds, or --verify that it is safe to use",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("checkpoint", help="path to a metatrain .ckpt file")
    parser.add_argument(
        "--json", action="store_true", help="print the information as JSON"
    )
    parser.add_argument(
        "--verify",
        action="store_true",
        help="only check that the file loads safely and is a PET checkpoint the "
        "installed metatrain can read (exit code 0 if so, 1 if not)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``mtt-transfer inspect``; returns the exit code."""
    if args.verify:
        try:
            message = verify_checkpoint(args.checkpoint)
        except CheckpointError as error:
            print(f"REFUSED: {_one_line(error)}", file=sys.stderr)
            return EXIT_REFUSED
        print(f"OK: {message}")
        return EXIT_OK

    try:
        summary = describe_checkpoint(args.checkpoint)
    except CheckpointError as error:
        print(f"mtt-transfer inspect: {_one_line(error)}", file=sys.stderr)
        return EXIT_UNREADABLE
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        print(format_summary(summary))
    return EXIT_OK


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())


__all__: List[str] = [
    "composition_weights",
    "count_parameters",
    "describe_checkpoint",
    "format_summary",
    "options_snippet",
    "register",
    "run",
    "verify_checkpoint",
]
