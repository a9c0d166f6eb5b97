"""Checks of a run's inputs, before any training step.

``mtt train`` reads the data, splits it, loads the checkpoint and then calls the
trainer. Some inputs that cannot give a valid training pass all of that: metatrain
drops a gradient it cannot read with one warning line ("No forces found in section
...") and trains without it, trains with an empty validation set, and lets NaN or
infinite labels reach the loss. The trainer calls :func:`check_run_inputs` first; it
compares what the options asked for (``options_restart.yaml``, the fully expanded
options that ``mtt train`` writes in the checkpoint folder before calling the trainer,
defaults included) with the data the run would train on, and stops the run with one
message that lists every problem, each naming the option, file and structures at
fault and what to do.

Every split is checked: training, validation and test (a fraction of the training
files, or separate files; :mod:`.splits` builds the test split again, since
metatrain only hands it to the final evaluation). The checks themselves live in
:mod:`.gradients` (requested forces, stress and virial), :mod:`.labels` (the labels,
structure by structure), :mod:`.outputs` (no output overwrites an input) and
:mod:`.splits` (a restart keeps the splits of the run it continues).
"""

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

from ..recipe.datasets import trained_targets
from ..recipe.energy_levels import energy_variant_name
from .command_line import mtt_train_call
from .gradients import check_requested_gradients
from .guard import Guard
from .labels import check_labels
from .outputs import check_outputs
from .splits import compare_with_checkpoint, fingerprint, test_datasets
from .stop import format_problems


logger = logging.getLogger(__name__)


class RunInputError(ValueError):
    """Inputs that cannot give a valid training: every problem, with what to do."""


@dataclass
class DatasetSection:
    """The datasets read with one section of the options (one file, usually)."""

    option: str
    """where the section is in the options: ``training_set``, ``validation_set``,
    ``training_set[1]``, ..."""
    options: Optional[dict]
    """its expanded ``systems``/``targets`` options (``None`` when the run has no
    ``options_restart.yaml``)"""
    datasets: Dict[str, List] = field(default_factory=dict)
    """``{"training"|"validation"|"test": [datasets]}`` taken from the section"""

    @property
    def filename(self) -> str:
        if self.options is None:
            return f"the {self.option}"
        return str(self.options["systems"]["read_from"])

    def structures(self):
        """Every ``(dataset, index in dataset)`` of the section."""
        for datasets in self.datasets.values():
            for dataset in datasets:
                for k in range(len(dataset)):
                    yield dataset, k

    def first_sample(self):
        """The first structure of the section, or ``None`` if it has none."""
        for dataset, k in self.structures():
            return dataset[k]
        return None


@dataclass
class CheckedRun:
    """What the checks learnt about the run, kept in its checkpoints."""

    seed: Optional[int]
    """the run's seed (``None`` without ``options_restart.yaml``)"""
    splits: Dict[str, Optional[List]]
    """``[count, digest]`` of each split (:func:`.splits.fingerprint`)"""


def check_run_inputs(
    model,
    hypers: dict,
    train_datasets: List,
    val_datasets: List,
    checkpoint_dir: str,
    restart_record: Optional[dict] = None,
) -> CheckedRun:
    """Stop the run with one clear message if its inputs cannot give a valid training.

    Called by the trainer before alignment and before the first step.

    :param model: the model after ``restart`` (pretrained and new targets)
    :param hypers: the trainer hypers
    :param train_datasets: training datasets of this run
    :param val_datasets: validation datasets of this run
    :param checkpoint_dir: the run's checkpoint folder, where ``mtt train`` wrote
        ``options_restart.yaml``
    :param restart_record: for a restarted run, the record of the checkpoint it
        continues (:func:`..resume.read_record`), if it has one
    :return: the run's seed and split fingerprints
    :raises RunInputError: listing every problem found
    """
    options = _read_expanded_options(checkpoint_dir)
    guard = Guard()  # one rule that fails loses only itself (checks/guard.py)
    test = _guarded_value(guard, test_datasets, options, train_datasets)
    sections = _sections(options, train_datasets, val_datasets, test)
    call = mtt_train_call()

    problems = []
    if options is not None:
        problems += _guarded(guard, check_outputs, options, call)
    problems += _check_splits(options, train_datasets, val_datasets, sections)
    seed = None if options is None else options.get("seed")
    checked = CheckedRun(
        seed=seed,
        splits={
            "training": fingerprint(train_datasets),
            "validation": fingerprint(val_datasets),
            "test": _guarded_value(guard, fingerprint, test),
        },
    )
    if restart_record is not None:
        restart_from = None if call is None else call.restart_from
        problems += compare_with_checkpoint(
            restart_record, checked.splits, seed, restart_from
        )
    problems += _guarded(guard, _check_exported_names, model, train_datasets)
    problems += _guarded(guard, _check_readouts, model, hypers, train_datasets)
    files: Dict[str, object] = {}  # frames read again to explain a problem
    for section in sections:
        if section.first_sample() is None:
            continue
        if section.options is not None:
            problems += _guarded(
                guard, check_requested_gradients, section, files, guard
            )
        problems += _guarded(guard, check_labels, section, model, guard)

    problems = _unique(problems)
    if problems:
        raise RunInputError(format_problems(problems))
    counts = [f"{value[0]} {name}" for name, value in checked.splits.items() if value]
    logger.info(f"Run inputs checked: {', '.join(counts)} structures")
    return checked


def _check_readouts(model, hypers: dict, train_datasets: List) -> List[str]:
    # training.readouts: targets of the run, of a kind the readout applies to
    asked = hypers.get("readouts") or {}
    if not asked:
        return []
    from ..recipe.readouts import any_periodic, readout_problems

    targets = trained_targets(model, train_datasets)
    return readout_problems(targets, asked, periodic=any_periodic(train_datasets))


def _guarded(guard: Guard, check: Callable[..., List[str]], *args) -> List[str]:
    # each rule inside a check runs under `guard` itself, so what a check found is
    # kept when one of its rules fails; this catches what is left (outside any
    # rule): a check that fails there must not stop a training metatrain would run
    return guard.run(check.__name__, check, *args, default=[])


def _guarded_value(guard: Guard, function: Callable, *args):
    # like `_guarded`, for a helper whose value is optional (None when it fails)
    return guard.run(function.__name__, function, *args, default=None)


def _read_expanded_options(checkpoint_dir: str) -> Optional[dict]:
    path = Path(checkpoint_dir) / "options_restart.yaml"
    if not path.is_file():
        # the trainer was called from Python, not by `mtt train`: check the data only
        return None
    import yaml

    return yaml.safe_load(path.read_text())


def _sections(
    options: Optional[dict],
    train_datasets: List,
    val_datasets: List,
    test_datasets: Optional[List] = None,
) -> List[DatasetSection]:
    """Group the datasets by the options section they were read with, as ``mtt
    train`` built them: a validation or test fraction comes from the training
    files."""
    if options is None:
        return [
            DatasetSection("training set", None, {"training": train_datasets}),
            DatasetSection("validation set", None, {"validation": val_datasets}),
        ]

    training = options["training_set"]
    validation = options.get("validation_set")
    test = options.get("test_set")

    def name(base: str, index: int, count: int) -> str:
        return base if count == 1 else f"{base}[{index}]"

    sections = [
        DatasetSection(name("training_set", i, len(training)), conf, {"training": []})
        for i, conf in enumerate(training)
    ]
    for section, dataset in zip(sections, train_datasets, strict=False):
        section.datasets["training"].append(dataset)
    for i, dataset in enumerate(val_datasets):
        if isinstance(validation, list):  # validation files
            option = name("validation_set", i, len(validation))
            sections.append(
                DatasetSection(option, validation[i], {"validation": [dataset]})
            )
        else:  # a fraction, or indices, of the training files
            section = sections[min(i, len(sections) - 1)]
            section.datasets.setdefault("validation", []).append(dataset)
    training_sections = list(sections)
    for i, dataset in enumerate(test_datasets or []):
        if isinstance(test, list):  # test files
            option = name("test_set", i, len(test))
            sections.append(DatasetSection(option, test[i], {"test": [dataset]}))
        else:  # a fraction, or indices, of the training files
            section = training_sections[min(i, len(training_sections) - 1)]
            section.datasets.setdefault("test", []).append(dataset)
    return sections


def _check_splits(
    options: Optional[dict],
    train_datasets: List,
    val_datasets: List,
    sections: List[DatasetSection],
) -> List[str]:
    problems = []
    for section in sections:
        for dataset in section.datasets.get("training", []):
            if len(dataset) == 0:
                problems.append(
                    f"{section.option}: no structure of '{section.filename}' is left "
                    "for training; check the file, its `indices`, and the "
                    "validation_set and test_set fractions"
                )
    if sum(len(d) for d in val_datasets) == 0:
        fraction = None if options is None else options.get("validation_set")
        if isinstance(fraction, (int, float)) and train_datasets:
            total = _root_length(train_datasets[0])
            detail = (
                f"validation_set: {fraction} of the {total} structures of "
                f"'{sections[0].filename}' is less than one structure, so the "
                "validation set is empty"
            )
            fix = f"Use a fraction above 1/{total}, or a validation file"
        else:
            detail = "validation_set: the validation set has no structure"
            fix = "Give it at least one structure"
        problems.append(
            f"{detail}. PET keeps the weights of the epoch with the lowest "
            "validation error: without validation structures it would export the "
            f"first epoch's weights. {fix}"
        )
    return problems


def _check_exported_names(model, train_datasets: List) -> List[str]:
    """Two energy targets that the exported model would serve under one name."""
    served: Dict[str, List[str]] = {}
    for name, info in trained_targets(model, train_datasets).items():
        if info.quantity == "energy":
            served.setdefault(energy_variant_name(name) or name, []).append(name)
    problems = []
    for exported, names in served.items():
        if len(names) > 1:
            listed = " and ".join(f"'{n}'" for n in names)
            problems.append(
                f"training_set.targets: {listed} are the same energy target for "
                f"simulation engines (both '{exported}', the name ASE's "
                "MetatomicCalculator and LAMMPS select): keep one of them, or rename "
                "one to another level of theory"
            )
    return problems


def _root_length(dataset) -> int:
    while isinstance(dataset, torch.utils.data.Subset):
        dataset = dataset.dataset
    return len(dataset)


def _unique(items: List[str]) -> List[str]:
    return list(dict.fromkeys(items))
