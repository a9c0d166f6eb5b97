"""Tidying the log lines metatrain writes during the plugin's own calls.

metatrain 2026.4.1's PET trainer logs ``Number of trainable parameters: 105666
[100.00% %]`` (a percent format followed by a second ``%``). The plugin calls that
trainer (:class:`~metatrain_pet_transfer.trainer.Trainer`), so it mends the line
while the call runs; lines metatrain logs outside the plugin's calls are left as
they are (docs/reliability.md lists them).
"""

import contextlib
import logging


class _DoublePercent(logging.Filter):
    """``[9.58% %]`` -> ``[9.58%]`` in the messages of the root logger."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and "% %]" in record.msg:
            record.msg = record.msg.replace("% %]", "%]")
        return True


@contextlib.contextmanager
def tidy_host_log():
    """Mend metatrain's known malformed log lines while the block runs."""
    # metatrain logs through the root logger (`logging.info`), whose own filters
    # see every record it creates
    root = logging.getLogger()
    mend = _DoublePercent()
    root.addFilter(mend)
    try:
        yield
    finally:
        root.removeFilter(mend)
