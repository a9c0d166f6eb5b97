"""``python -m metatrain_pet_transfer``: ``mtt`` for interpreters that skip ``.pth``.

Some clusters and ``python -S`` ignore the ``.pth`` file that installs the
entry-point bridge at start-up. This launcher installs the bridge explicitly, then
hands the command line to metatrain's own ``mtt`` entry point unchanged:
``python -m metatrain_pet_transfer train options.yaml`` is ``mtt train options.yaml``.
"""

import sys


def main() -> None:
    import _metatrain_pet_transfer_bridge

    _metatrain_pet_transfer_bridge.install()

    from metatrain.__main__ import main as mtt_main

    sys.argv[0] = "mtt"
    sys.exit(mtt_main())


if __name__ == "__main__":
    main()
