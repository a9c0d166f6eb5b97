"""``mtt-transfer export``: a model whose default ``energy`` is the new level.

The model ``mtt train`` exports serves a new level of theory as the variant
``energy/<level>`` (:mod:`metatrain_pet_transfer.recipe.energy_levels`), next to the
pretrained ``energy`` where it was kept. ASE and i-PI select a variant; engines and
tools that only ask for ``energy`` need a model whose default ``energy`` *is* the new
level. This command writes one, from the run's checkpoint (``.ckpt``) or from its
exported model (``.pt``); the multi-output model stays the run's product.

The checkpoint is read with ``weights_only=True`` (:mod:`..checkpoints`), as every
file the plugin loads. The output is written beside its final name and moved there
only if no file of that name exists: an existing file is never overwritten.
"""

import argparse
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Optional


class ExportError(ValueError):
    """An input or output the export cannot use; the message names it."""


def _exported_model(path: Path):
    """The model at ``path`` as a metatomic ``AtomisticModel`` (in memory)."""
    import metatomic.torch as mta

    if not path.is_file():
        raise ExportError(f"model file '{path}' does not exist")
    if path.suffix == ".ckpt":
        from metatrain.utils.io import model_from_checkpoint

        from ..checkpoints import CheckpointError, load_checkpoint_safely

        try:
            checkpoint = load_checkpoint_safely(path)
        except CheckpointError as error:
            raise ExportError(str(error)) from None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            try:
                model = model_from_checkpoint(checkpoint, context="export")
            except Exception as error:
                raise ExportError(
                    f"metatrain could not build a model from '{path}': {error}"
                ) from error
            return model.export()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return mta.load_atomistic_model(str(path))
    except Exception as error:
        raise ExportError(
            f"'{path}' is not an exported metatomic model (.pt) or a metatrain "
            f"checkpoint (.ckpt): {str(error).splitlines()[0]}"
        ) from error


def export_single_level(
    model_path: Path, out: Path, level: Optional[str] = None
) -> str:
    """Write the single-level model of ``model_path`` to ``out``.

    :param model_path: a ``.ckpt`` or exported ``.pt`` with the new level
    :param out: the new ``.pt`` file; must not exist
    :param level: ``pbe0``, ``energy/pbe0`` or ``mtt::energy_pbe0``; default: the
        model's only level other than ``energy``
    :return: the output of the original model served as ``energy``
    """
    from metatomic.torch import AtomisticModel, ModelCapabilities

    from ..recipe.energy_levels import (
        choose_level,
        default_energy_level,
        single_level_outputs,
    )

    model_path, out = Path(model_path), Path(out)
    if out.suffix != ".pt":
        raise ExportError(f"output '{out}' must end in .pt (an exported model)")
    if out.exists() or out.is_symlink():
        raise ExportError(
            f"output '{out}' exists: choose a new name, it is never overwritten"
        )
    if not out.parent.is_dir():
        raise ExportError(f"the folder of the output '{out}' does not exist")
    exported = _exported_model(model_path)
    capabilities = exported.capabilities()
    try:
        source = choose_level(dict(capabilities.outputs), level)
    except ValueError as error:
        raise ExportError(f"'{model_path}': {error}") from None

    single = ModelCapabilities(
        outputs=single_level_outputs(dict(capabilities.outputs), source),
        atomic_types=capabilities.atomic_types,
        interaction_range=capabilities.interaction_range,
        length_unit=capabilities.length_unit,
        supported_devices=capabilities.supported_devices,
        dtype=capabilities.dtype,
    )
    wrapped = default_energy_level(exported.module, source).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.script
        model = AtomisticModel(wrapped, exported.metadata(), single)
        _save_new(model, out)
    return source


def _save_new(model, out: Path) -> None:
    """Save under a temporary name beside ``out``, then link it to ``out``: the
    link fails if ``out`` appeared meanwhile, so nothing is ever overwritten."""
    handle, temporary = tempfile.mkstemp(
        prefix=f".{out.name}.", suffix=".tmp", dir=out.parent
    )
    os.close(handle)
    try:
        model.save(temporary)
        try:
            os.link(temporary, out)
        except FileExistsError:
            raise ExportError(
                f"output '{out}' appeared while exporting: not overwritten"
            ) from None
    finally:
        os.unlink(temporary)


# ------------------------------------------------------------------------------ CLI


def register(subparsers) -> None:
    """Add the ``export`` subcommand to the ``mtt-transfer`` parser."""
    parser = subparsers.add_parser(
        "export",
        help="write a model whose default `energy` is the new level (for engines "
        "that cannot select a variant)",
        description="Write a single-level model: its default `energy` output is "
        "the chosen level of theory (e.g. energy/pbe0 of a transferred model), for "
        "engines and tools that only ask for `energy`. Other energy outputs are "
        "left out. The run's multi-output model.pt is not changed.",
    )
    parser.add_argument(
        "model",
        type=Path,
        metavar="MODEL",
        help="the run's checkpoint (.ckpt) or exported model (.pt)",
    )
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        metavar="OUT.pt",
        help="the new model file (must not exist)",
    )
    parser.add_argument(
        "--level",
        metavar="LEVEL",
        help="the level served as `energy`: pbe0, energy/pbe0 or mtt::energy_pbe0 "
        "(default: the model's only level other than `energy`)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``mtt-transfer export``; returns the exit code."""
    try:
        source = export_single_level(args.model, args.output, args.level)
    except ExportError as error:
        print(f"mtt-transfer export: {error}", file=sys.stderr)
        return 1
    print(f"wrote {args.output}: its default `energy` is '{source}' of {args.model}")
    return 0
