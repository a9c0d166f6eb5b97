"""The options file against the checkpoint, before metatrain reads any data.

Between validating the architecture options and calling the trainer, ``mtt train``
reads the data and fits the checkpoint's ``dataset_info`` to it; some plain input
errors stop it there, with metatrain's words and none of the options or files at
fault (and, from ``model.restart``, "The error above most likely originates from an
architecture ... contact its maintainer"):

- ``systems.length_unit`` other than the checkpoint's ("Can't update DatasetInfo
  with a different `length_unit`");
- a target the checkpoint has (``energy``) declared in another unit ("Can't update
  DatasetInfo with different target information ... is not compatible with ...");
- an energy ``key`` the file does not hold ("energy key ... was not found"), where
  the message for a wrong forces key lists the keys of the file.

:func:`check_options_file` runs while the options are validated (the validator of
``training.finetune.read_from``, with the checkpoint it has just read safely): it
reads the options file of ``mtt train``'s command line (with its ``-r`` overrides),
as metatrain expands it, and compares it with the checkpoint and with the first
structure of each file. Any finding stops the run there (:func:`.stop.stop_run`), before
a single label is read.
"""

from pathlib import Path
from typing import Dict, List, Optional

from .command_line import MttTrainCall, mtt_train_call
from .stop import InputError, format_problems, stop_run


#: the dataset sections of the options
SECTIONS = ("training_set", "validation_set", "test_set")


def check_options_file(checkpoint: dict, read_from: str) -> None:
    """Stop the run if the dataset sections of the options cannot go with the
    checkpoint in ``read_from`` (see the module docstring); nothing to check when
    the process is not ``mtt train``."""
    call = mtt_train_call()
    if call is None:
        return
    sections = _expanded_sections(call)
    if not sections:
        return
    dataset_info = checkpoint["model_data"]["dataset_info"]
    problems = []
    for option, section in sections:
        problems += _length_unit(option, section, dataset_info, read_from)
        problems += _target_units(option, section, dataset_info, read_from)
        problems += _energy_keys(option, section, call)
    if problems:
        stop_run(InputError(format_problems(list(dict.fromkeys(problems)))))


def _expanded_sections(call: MttTrainCall) -> List[tuple]:
    """``[(option, expanded section)]`` of the options file, as metatrain expands
    them; empty when the file cannot be read or expanded (metatrain says why)."""
    try:
        from metatrain.utils.omegaconf import expand_dataset_config
        from omegaconf import OmegaConf

        options = OmegaConf.merge(
            OmegaConf.load(call.options), OmegaConf.from_dotlist(list(call.overrides))
        )
        sections = []
        for name in SECTIONS:
            value = options.get(name)
            if value is None or isinstance(value, (int, float)):
                continue  # a fraction of the training set
            expanded = OmegaConf.to_container(
                expand_dataset_config(value), resolve=True
            )
            for index, section in enumerate(expanded):
                option = name if len(expanded) == 1 else f"{name}[{index}]"
                sections.append((option, section))
        return sections
    except Exception:
        return []


def _length_unit(option: str, section: dict, dataset_info, read_from: str) -> list:
    length_unit = section["systems"].get("length_unit")
    if length_unit is None or length_unit == dataset_info.length_unit:
        return []
    return [
        f"{option}.systems.length_unit is '{length_unit}', but the checkpoint "
        f"'{read_from}' was trained with positions in '{dataset_info.length_unit}': "
        "metatrain cannot mix the two. If the positions of "
        f"'{section['systems']['read_from']}' are in {dataset_info.length_unit}, "
        f"write `length_unit: {dataset_info.length_unit}`; otherwise convert the "
        "file (positions, cells, and the forces' and stresses' length unit)"
    ]


def _target_units(option: str, section: dict, dataset_info, read_from: str) -> list:
    problems = []
    for name, target in section.get("targets", {}).items():
        existing = dataset_info.targets.get(name)
        unit = target.get("unit", "")
        if existing is None or existing.unit == unit:
            continue
        problems.append(
            f"{option}.targets['{name}'].unit is '{unit}', but '{name}' is a target "
            f"of the checkpoint '{read_from}' in '{existing.unit}': a target keeps "
            f"its name's unit. Give these labels a new name (e.g. "
            f"'mtt::{name}_<level>' or '{name}/<level>', which may have any unit), "
            f"or convert them to {existing.unit}"
        )
    return problems


def _energy_keys(option: str, section: dict, call: MttTrainCall) -> list:
    """Energy keys missing from the first structure of a file metatrain reads with
    ASE (its reader takes ``atoms.info[key]``)."""
    problems = []
    first: Dict[str, Optional[object]] = {}
    for name, target in section.get("targets", {}).items():
        if target.get("quantity", "energy") != "energy" or "key" not in target:
            continue
        if target.get("reader") not in (None, "ase"):
            continue
        path = Path(target.get("read_from") or section["systems"]["read_from"])
        if not path.is_absolute():
            path = Path.cwd() / path
        if str(path) not in first:
            first[str(path)] = _first_structure(path)
        atoms = first[str(path)]
        if atoms is None or target["key"] in atoms.info:
            continue
        numbers = [
            key
            for key, value in atoms.info.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)
        ]
        listed = ", ".join(f"'{k}'" for k in numbers) or "none"
        problem = (
            f"{option}.targets['{name}'].key: the first structure of '{path.name}' "
            f"has no energy '{target['key']}'. Numbers in its info line: {listed}. "
            "Give the energy's key with `key: ...`"
        )
        if target["key"] in getattr(atoms.calc, "results", {}):
            # ASE moves an extended-XYZ `energy=` into a calculator
            problem += (
                f"; ASE reads '{target['key']}' as a calculator's result, which "
                "metatrain's reader does not look at: rename it in the file (e.g. "
                f"'{target['key']}_dft=')"
            )
        problems.append(problem)
    return problems


def _first_structure(path: Path):
    """The first structure of ``path`` as ASE reads it, or ``None`` (metatrain
    reports a file it cannot read)."""
    try:
        import ase.io

        return ase.io.read(path, index=0)
    except Exception:
        return None
