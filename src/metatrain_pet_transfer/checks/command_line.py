"""What ``mtt train`` was asked on the command line: the output and restart files.

metatrain hands an architecture its options and data, but not the paths given on the
command line: ``-o/--output`` (the exported model, with its checkpoint beside it
under the same name ending in ``.ckpt``) and ``--restart`` (the checkpoint the run
continues). The plugin needs both to check a run before anything is unpickled or
trained (that it continues one of its own checkpoints, and that it would not write
over one of its inputs). :func:`mtt_train_call` reads them from ``sys.argv`` with
metatrain's own parser of the ``train`` sub-command, so the defaults (``model.pt``)
and ``--restart auto`` mean what they mean to metatrain.

When the process is not ``mtt train`` (metatrain's ``train_model`` called from
Python, or the trainer called directly, as in metatrain's test battery), there is no
command line to read: :func:`mtt_train_call` returns ``None`` and the checks that
need it are skipped.
"""

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple


@dataclass(frozen=True)
class MttTrainCall:
    """The files named on the command line of ``mtt train``."""

    options: Path
    """the options file"""
    output: Path
    """``-o/--output``: the exported model (``model.pt`` by default)"""
    restart_from: Optional[Path]
    """``--restart``: the checkpoint the run continues (``auto`` resolved as
    metatrain resolves it), or ``None``"""
    overrides: Tuple[str, ...] = ()
    """``-r/--override``: options given on the command line (OmegaConf dot-list)"""

    @property
    def checkpoint(self) -> Path:
        """The final checkpoint ``mtt train`` writes beside the exported model."""
        return self.output.with_suffix(".ckpt")


def mtt_train_call(argv: Optional[List[str]] = None) -> Optional[MttTrainCall]:
    """The ``mtt train`` command line of this process, if it is one.

    :param argv: the command line (``sys.argv`` by default)
    :return: the files it names, or ``None`` if it is not an ``mtt train`` call
    """
    from metatrain.utils.io import check_file_extension

    # the bridge reads the command line too, before metatrain reads the options
    from _metatrain_pet_transfer_bridge import mtt_train_arguments

    arguments = mtt_train_arguments(argv)
    if arguments is None:
        return None
    with warnings.catch_warnings():  # metatrain warns about it itself
        warnings.simplefilter("ignore")
        # `train_model` appends `.pt` to an output without it
        output = Path(check_file_extension(filename=arguments.output, extension=".pt"))
    restart_from = arguments.restart_from
    return MttTrainCall(
        options=Path(arguments.options),
        output=output,
        restart_from=None if restart_from is None else Path(restart_from),
        overrides=tuple(arguments.override_options or ()),
    )
