"""Reading PET checkpoints without trusting them.

A ``.ckpt`` is a pickle: unpickling a stranger's file with ``weights_only=False`` can
run arbitrary code. Every load this package performs goes through
:func:`load_checkpoint_safely`, which uses ``torch.load(weights_only=True)`` with the
smallest allow-list a PET checkpoint needs: TorchScript objects (metatomic's
``ModelMetadata`` and metatensor ``Labels``, rebuilt by compiled code) and metatrain's
two plain data classes ``DatasetInfo`` and ``TargetInfo``.

:func:`check_pretrained_checkpoint` runs when the options are validated, i.e. before
``mtt train`` itself unpickles ``training.finetune.read_from`` with
``weights_only=False``: a file that is missing, truncated, not a PET checkpoint, too new
for the installed metatrain, or that would need arbitrary code to load, stops the run
there, with its path in the message.

:func:`check_restart_checkpoint` does the same for ``mtt train --restart FILE`` (the
validator of ``training.num_epochs`` reads ``FILE`` from the command line, also before
metatrain unpickles it), and stops a restart that would not continue a
``pet_transfer`` run, or that has nothing left to train.
"""

import zipfile
from pathlib import Path
from typing import Any, Dict, Iterable, Union

import torch


#: architectures whose checkpoints this plugin can start from
PET_ARCHITECTURES = ("pet", "pet_transfer")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used, with the reason and the path."""


def _safe_globals() -> list:
    import metatomic.torch  # noqa: F401 (registers the TorchScript classes)
    from metatrain.utils.data.dataset import DatasetInfo
    from metatrain.utils.data.target_info import TargetInfo

    return [torch.ScriptObject, DatasetInfo, TargetInfo]


def load_checkpoint_safely(path: Union[str, Path]) -> Dict[str, Any]:
    """Load a metatrain checkpoint with ``weights_only=True``.

    :param path: path to a ``.ckpt`` file
    :return: the checkpoint dictionary
    :raises CheckpointError: if the file is missing, unreadable, truncated, needs
        types outside the allow-list to unpickle, or is not a checkpoint dictionary
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint file '{path}' does not exist")
    if not path.is_file():
        raise CheckpointError(f"checkpoint path '{path}' is not a file")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"checkpoint file '{path}' is not a torch checkpoint, or it is truncated "
            "(a torch checkpoint is a zip archive; was the file fully copied?)"
        )
    if is_exported_model(path):
        raise CheckpointError(
            f"'{path}' is an exported TorchScript model, not a checkpoint. "
            + where_is_the_checkpoint(path)
        )
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            checkpoint = torch.load(path, weights_only=True, map_location="cpu")
    except PermissionError as error:
        raise CheckpointError(f"checkpoint file '{path}' is not readable") from error
    except Exception as error:
        message = str(error)
        if "Unsupported global" in message or "weights_only" in message.lower():
            raise CheckpointError(
                f"checkpoint file '{path}' refers to Python objects a PET checkpoint "
                "never contains, so loading it could run code: refusing to load it. "
                f"Details: {_first_unsafe_line(message)}"
            ) from error
        first_line = message.splitlines()[0] if message else type(error).__name__
        raise CheckpointError(
            f"checkpoint file '{path}' is damaged or truncated (torch could not read "
            f"it: {first_line})"
        ) from error
    if not isinstance(checkpoint, dict) or "architecture_name" not in checkpoint:
        raise CheckpointError(
            f"'{path}' is not a metatrain checkpoint (no 'architecture_name' entry)"
        )
    return checkpoint


def is_exported_model(path: Union[str, Path]) -> bool:
    """Whether ``path`` is an exported model (``mtt export``, ``mtt train -o``): a
    TorchScript archive, which carries compiled code and no training state."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return False
    return any(name.endswith("/constants.pkl") for name in names)


def where_is_the_checkpoint(exported: Union[str, Path]) -> str:
    """Where the checkpoint of an exported model is, for messages."""
    beside = Path(exported).with_suffix(".ckpt")
    if beside.is_file():
        return f"Its checkpoint is the .ckpt beside it: '{beside}'"
    return (
        "Use the checkpoint it was exported from: `mtt train -o NAME.pt` writes "
        "NAME.ckpt beside it, and the run's outputs/<date>/<time>/ folder holds "
        "model_<epoch>.ckpt"
    )


def _first_unsafe_line(message: str) -> str:
    for line in message.splitlines():
        if "Unsupported global" in line or "Unsupported operand" in line:
            return line.strip()
    return message.splitlines()[0] if message else ""


def check_pretrained_checkpoint(path: Union[str, Path]) -> Dict[str, Any]:
    """Check that ``path`` is a PET checkpoint the installed metatrain can load.

    :param path: value of ``training.finetune.read_from``
    :return: the checkpoint dictionary (loaded with ``weights_only=True``)
    :raises CheckpointError: naming the path and what is wrong with it
    """
    checkpoint = load_checkpoint_safely(path)
    architecture = checkpoint["architecture_name"]
    if architecture not in PET_ARCHITECTURES:
        raise CheckpointError(
            f"checkpoint '{path}' was written by the '{architecture}' architecture; "
            "pet_transfer starts from PET checkpoints (architecture 'pet' or "
            "'pet_transfer')"
        )

    _check_versions(checkpoint, path)
    return checkpoint


def _check_versions(checkpoint: Dict[str, Any], path: Union[str, Path]) -> None:
    from metatrain import __version__ as metatrain_version
    from metatrain.pet import PET, Trainer

    for kind, supported in [
        ("model", PET.__checkpoint_version__),
        ("trainer", Trainer.__checkpoint_version__),
    ]:
        version = checkpoint.get(f"{kind}_ckpt_version")
        if version is not None and version > supported:
            raise CheckpointError(
                f"checkpoint '{path}' uses PET {kind} checkpoint version {version}, "
                f"but the installed metatrain {metatrain_version} reads at most "
                f"version {supported}: upgrade metatrain"
            )


def check_restart_checkpoint(
    path: Union[str, Path], num_epochs: int, outputs: Iterable[Path] = ()
) -> Dict[str, Any]:
    """Check that ``mtt train --restart path`` continues a ``pet_transfer`` run
    that has epochs left to train.

    :param path: the ``--restart`` file (``auto`` already resolved)
    :param num_epochs: ``training.num_epochs`` of the continued run
    :param outputs: the files the run would write at the end (for the message)
    :return: the checkpoint dictionary (loaded with ``weights_only=True``)
    :raises CheckpointError: naming the path and what is wrong with it
    """
    checkpoint = load_checkpoint_safely(path)
    architecture = checkpoint["architecture_name"]
    if architecture != "pet_transfer":
        raise CheckpointError(
            f"'{path}' was written by the '{architecture}' architecture. `mtt train "
            "--restart` continues a run with the trainer of the checkpoint's own "
            "architecture, so this run would not be a pet_transfer run (none of its "
            "checks or steps). To transfer from this checkpoint, give it as "
            "training.finetune.read_from and drop --restart"
        )
    _check_versions(checkpoint, path)
    epoch = checkpoint.get("epoch")
    if epoch is not None and epoch + 1 >= num_epochs:
        written = " and ".join(f"'{output}'" for output in outputs)
        overwrite = f", then write over {written}" if written else ""
        raise CheckpointError(
            f"nothing left to train: '{path}' was written after epoch {epoch} "
            f"(epochs count from 0) and training.num_epochs is {num_epochs}, so this "
            f"run would train no epoch{overwrite}. Nothing was trained and no file "
            f"was changed. To train longer, raise training.num_epochs above "
            f"{epoch + 1}; that run's model is the checkpoint itself (`mtt export "
            f"{path}`)"
        )
    return checkpoint
