"""pytest plugin of ``bench/host_pet_tests.py``: what of ``metatrain_pet_transfer``
was in the process running metatrain's PET tests.

Loaded with ``-p pet_tests_probe`` (after ``-p metatrain_pet_transfer`` in the
``imported`` mode); at the end of the session it prints one ``probe:`` line.
"""

import os
import sys


def _loaded() -> dict:
    return {
        "plugin": "metatrain_pet_transfer" in sys.modules,
        "bridge": "_metatrain_pet_transfer_bridge" in sys.modules,
    }


#: before any test module is collected
AT_START = _loaded()


def pytest_terminal_summary(terminalreporter):
    import metatrain
    from metatrain.pet import PET

    at_end = _loaded()
    terminalreporter.write_line(
        f"probe: mode={os.environ.get('PET_TESTS_MODE')} "
        f"plugin imported first={AT_START['plugin']} "
        f"plugin loaded={at_end['plugin']} bridge loaded={at_end['bridge']} "
        f"PET.restart wrapped={hasattr(PET.restart, '__wrapped__')} "
        f"metatrain from {os.path.dirname(metatrain.__file__)}"
    )
