"""Stopping ``mtt train`` (or ``mtt eval``) on bad input, with the message alone.

An error raised through metatrain is framed as something else: raised from the
trainer, metatrain wraps it as coming from "an architecture" whose maintainer should
be contacted; raised while the options are validated, it is listed as an error of
the option being validated, with a link to a page metatrain's site does not have for
plugin architectures. For inputs the plugin has checked itself, the message says
what is wrong and what to do; :func:`stop_run` logs it and ends the process.
"""

import logging
from typing import List

from .command_line import mtt_train_call


class InputError(Exception):
    """Inputs that cannot give a valid training, found before any training step."""


def format_problems(problems: List[str]) -> str:
    """One message listing every problem."""
    listed = "\n".join(f"- {problem}" for problem in problems)
    count = "1 problem" if len(problems) == 1 else f"{len(problems)} problems"
    return (
        f"{count} in the inputs of this run, found before any training step "
        f"(nothing was trained, no existing file was changed):\n{listed}"
    )


def stop_run(error: Exception, under_command: bool = False) -> None:
    """Stop ``mtt train`` on ``error``: its message is logged (``train.log`` and the
    terminal) and the process exits with status 1. Called from Python (no ``mtt
    train`` command line: metatrain's ``train_model``, the tests, an options
    validation), ``error`` is raised instead.

    :param under_command: the caller knows the process is an ``mtt`` command (e.g.
        ``mtt eval``)
    """
    if not under_command and mtt_train_call() is None:
        raise error
    logging.getLogger().error(str(error))
    raise SystemExit(1)
