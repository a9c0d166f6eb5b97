"""One rule at a time: a rule failing on an input it did not foresee loses only itself.

The run-input checks must never stop a training that metatrain would run because
of a bug of their own, and must never lose what they found either. Each rule (the
labels are finite, forces have one row per atom, an isolated atom has a small force,
a requested gradient exists, ...) runs through :meth:`Guard.run`: if it raises, it
is skipped, with one warning per rule ("pet_transfer could not run its input check
..."), and every other rule's findings are kept.

Under the test suite an unexpected guard is an error: with the environment variable
``PET_TRANSFER_STRICT_CHECKS=1`` (set by ``tests/conftest.py``, inherited by the
``mtt train`` subprocesses of the tests) the rule's exception propagates.
"""

import logging
import os
from typing import Callable, Dict


logger = logging.getLogger(__name__)

#: set to 1 to make a failing rule an error instead of a warning (the tests do)
STRICT_ENV = "PET_TRANSFER_STRICT_CHECKS"


def strict() -> bool:
    return os.environ.get(STRICT_ENV, "") not in ("", "0")


class Guard:
    """Runs rules, skipping (and reporting once) those that raise."""

    def __init__(self):
        self.failed: Dict[str, str] = {}
        """rule name -> the first error it raised"""

    def run(self, rule: str, function: Callable, *args, default=None):
        """``function(*args)``, or ``default`` if it raises (outside strict mode)."""
        try:
            return function(*args)
        except Exception as error:
            if strict():
                raise
            if rule not in self.failed:
                self.failed[rule] = f"{type(error).__name__}: {error}"
                logger.warning(
                    f"pet_transfer could not run its input check '{rule}' "
                    f"({self.failed[rule]}); the run goes on without it, the other "
                    "checks still apply"
                )
            return default
