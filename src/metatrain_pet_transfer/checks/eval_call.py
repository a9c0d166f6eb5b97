"""``mtt eval MODEL.ckpt eval.yaml``: targets the model does not serve, named.

``mtt eval`` compares a model's outputs with the labels of the targets its options
name; a name that is not an output of the model stops it with "Not all targets are
within the model's supported outputs", naming neither the target nor the outputs
(typically ``energy`` for a model transferred to ``mtt::energy_pbe0``, which serves
``energy`` only with ``keep_pretrained_heads``). An exported ``.pt`` runs without
the plugin; a ``.ckpt`` of this architecture is loaded by
:meth:`~metatrain_pet_transfer.model.PETTransfer.load_checkpoint`, which calls
:func:`check_eval_targets` first.
"""

from pathlib import Path
from typing import List, Optional

from .stop import stop_run


def eval_options(argv: Optional[List[str]] = None) -> Optional[tuple]:
    """``(model path, options path)`` of this process's ``mtt eval`` call, if it
    is one."""
    from metatrain.cli.eval import _add_eval_model_parser

    from _metatrain_pet_transfer_bridge import mtt_arguments

    arguments = mtt_arguments(argv, _add_eval_model_parser, "eval_model")
    if arguments is None:
        return None
    return Path(arguments.path), Path(arguments.options)


def check_eval_targets(outputs: List[str], energies: List[str]) -> None:
    """Stop ``mtt eval`` when its options name a target that is not one of
    ``outputs`` (the model's, variants included; ``energies`` are named in the
    message)."""
    call = eval_options()
    if call is None:
        return
    model, options = call
    try:
        import yaml

        sections = yaml.safe_load(options.read_text())
    except Exception:
        return  # metatrain reports an unreadable options file
    if isinstance(sections, dict):
        sections = [sections]
    if not isinstance(sections, list):
        return
    unknown = []
    for section in sections:
        targets = section.get("targets") if isinstance(section, dict) else None
        if isinstance(targets, dict):
            unknown += [name for name in targets if name not in outputs]
    if not unknown:
        return
    served = ", ".join(f"'{name}'" for name in energies) or "none"
    unknown = list(dict.fromkeys(unknown))
    names = ", ".join(f"'{name}'" for name in unknown)
    are = (
        "targets {} are not outputs"
        if len(unknown) > 1
        else "target {} is not an output"
    )
    stop_run(
        ValueError(
            f"{options}: {are.format(names)} of '{model}'; its energy "
            f"outputs are {served}. Name the targets as the model serves them "
            "(`mtt-transfer inspect` lists a checkpoint's targets): the variants "
            "`energy/<level>` are outputs of the exported model (`mtt eval "
            "model.pt`), not of the checkpoint; a model transferred with `full` or "
            "`lora` serves `energy` only with `keep_pretrained_heads`"
        ),
        under_command=True,
    )
