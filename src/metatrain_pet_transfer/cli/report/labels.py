"""The labelled structures a report compares models on, and their labels.

Which energy targets the options declare (with the keys of their forces, stress and
virial labels), which structures to use (``--data``, else the run's test set, else
its validation set; fractional splits through metatrain's ``indices/*.txt``), and
how to read a label from an ASE ``Atoms`` (``info``, ``arrays`` or the calculator
ASE puts extended-XYZ ``energy``/``forces``/``stress`` into).
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from .runs import ReportError, Run


# -------------------------------------------------------------------- labels, data


@dataclass
class EnergyTarget:
    """An energy target of the options and the keys of its labels."""

    name: str
    energy_key: str
    forces_key: Optional[str]
    stress_key: Optional[str]
    unit: str
    virial_key: Optional[str] = None
    """virial labels (``-V * stress``), compared as stresses"""


@dataclass
class Structures:
    """Labelled structures the models are compared on."""

    description: str
    frames: list
    label_frames: Dict[str, list]
    """per target, the frames holding its labels (usually ``frames`` itself)"""
    caveat: str = ""
    """what their errors mean, when it is not plain (the validation split)"""


def energy_targets(options: dict) -> tuple:
    """The energy targets of the first training set, and the names of the others."""
    training_set = options.get("training_set")
    if not isinstance(training_set, list) or not training_set:
        raise ReportError("the run's options have no training_set section")
    targets, others = [], []
    for name, config in training_set[0]["targets"].items():
        if config.get("quantity", "energy") != "energy":
            others.append(name)
            continue
        targets.append(
            EnergyTarget(
                name=name,
                energy_key=config["key"],
                forces_key=_gradient_key(config.get("forces")),
                stress_key=_gradient_key(config.get("stress")),
                unit=config.get("unit", "eV"),
                virial_key=_gradient_key(config.get("virial")),
            )
        )
    return targets, others


def _gradient_key(config) -> Optional[str]:
    if isinstance(config, dict):
        return config.get("key")
    return None


def _resolve(base: Path, path) -> Path:
    path = Path(path)
    return path if path.is_absolute() else base / path


def _read_frames(path: Path) -> list:
    import ase.io

    if not path.is_file():
        raise ReportError(f"structure file '{path}' does not exist")
    try:
        return ase.io.read(path, ":")
    except Exception as error:
        raise ReportError(
            f"could not read '{path}' with ASE ({type(error).__name__}: {error}); "
            "pass an ASE-readable file with --data"
        ) from error


def _indices(path: Path) -> Optional[List[int]]:
    """The indices metatrain saved for a split; ``None`` for none (``test_set: 0``
    leaves an empty file, which ``np.loadtxt`` would warn about)."""
    if not path.is_file():
        return None
    values = [int(value) for value in path.read_text().split()]
    return values or None


#: said under the errors when the run has no test set
VALIDATION_CAVEAT = (
    "The run has no test set: these errors are on its validation structures, "
    "which chose the exported model (the epoch with the best validation error), "
    "so they are optimistic. Give `test_set` (a fraction or a file), or pass "
    "`--data` with structures the run never used."
)


def report_structures(run: Run, data: Optional[Path] = None) -> Structures:
    """The labelled structures of the parity plots (see the module docstring)."""
    targets, _ = energy_targets(run.options)
    if data is not None:
        frames = _read_frames(Path(data))
        return Structures(
            f"`{Path(data).name}` ({len(frames)} structures)",
            frames,
            {t.name: frames for t in targets},
        )

    training_set = run.options["training_set"]
    for section in ("test_set", "validation_set"):
        value = run.options.get(section)
        split = section.replace("_set", "")
        if isinstance(value, list) and value:
            dataset = value[0]
            path = _resolve(run.base, dataset["systems"]["read_from"])
            frames = _read_frames(path)
            labels = _label_frames(run, dataset, frames)
            return Structures(
                f"{split} set `{path.name}` ({len(frames)} structures)",
                frames,
                labels,
                VALIDATION_CAVEAT if split == "validation" else "",
            )
        if isinstance(value, (int, float)) and len(training_set) == 1:
            index_file = run.outputs / "indices" / f"{split}.txt"
            indices = _indices(index_file)
            if indices is None:
                continue
            dataset = training_set[0]
            path = _resolve(run.base, dataset["systems"]["read_from"])
            all_frames = _read_frames(path)
            frames = [all_frames[i] for i in indices]
            labels = {
                name: [frames_[i] for i in indices]
                for name, frames_ in _label_frames(run, dataset, all_frames).items()
            }
            return Structures(
                f"{split} split of `{path.name}` ({len(frames)} structures, indices "
                f"from `indices/{split}.txt`)",
                frames,
                labels,
                VALIDATION_CAVEAT if split == "validation" else "",
            )
    raise ReportError(
        f"no test or validation structures found for the run in '{run.outputs}' "
        "(neither a test/validation file in the options nor 'indices/test.txt' or "
        "'indices/validation.txt'): pass --data FILE"
    )


def _label_frames(run: Run, dataset: dict, frames: list) -> Dict[str, list]:
    labels = {}
    for name, config in dataset["targets"].items():
        source = config.get("read_from") or dataset["systems"]["read_from"]
        source_path = _resolve(run.base, source)
        system_path = _resolve(run.base, dataset["systems"]["read_from"])
        if source_path == system_path:
            labels[name] = frames
        else:
            labels[name] = _read_frames(source_path)
    return labels


def label_value(atoms, key: str, kind: str):
    """A label stored under ``key``; ASE moves ``energy``/``forces``/``stress`` keys
    of extended XYZ files into a calculator."""
    if kind == "array" and key in atoms.arrays:
        return np.asarray(atoms.arrays[key], dtype=float)
    if key in atoms.info:
        return np.asarray(atoms.info[key], dtype=float)
    if atoms.calc is not None and key in getattr(atoms.calc, "results", {}):
        return np.asarray(atoms.calc.results[key], dtype=float)
    return None


def _stress_matrix(value) -> np.ndarray:
    value = np.asarray(value, dtype=float).reshape(-1)
    if value.size == 9:
        return value.reshape(3, 3)
    if value.size == 6:  # ASE's Voigt order: xx, yy, zz, yz, xz, xy
        xx, yy, zz, yz, xz, xy = value
        return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
    raise ReportError(f"a stress label has {value.size} values (expected 6 or 9)")


def stress_labels(target: EnergyTarget, frames, label_frames) -> Optional[list]:
    """3x3 stress labels, from stress or from virial (``-virial / volume``)."""
    if target.stress_key:
        refs = [label_value(a, target.stress_key, "info") for a in label_frames]
        if all(r is not None for r in refs):
            return [_stress_matrix(r) for r in refs]
    if target.virial_key:
        refs = [label_value(a, target.virial_key, "info") for a in label_frames]
        if all(r is not None for r in refs):
            return [
                -np.asarray(r, dtype=float).reshape(3, 3) / atoms.get_volume()
                for r, atoms in zip(refs, frames, strict=True)
            ]
    return None


def training_structures(run: Run) -> Optional[Structures]:
    """The structures the run trained on, with their labels (for the energy
    baseline of the parity plot); ``None`` if they cannot be read.

    With fractional validation or test splits, metatrain saved the training indices
    in ``indices/training.txt``; otherwise the whole training file is the training
    set.
    """
    training_set = run.options.get("training_set")
    if not isinstance(training_set, list) or len(training_set) != 1:
        return None
    dataset = training_set[0]
    path = _resolve(run.base, dataset["systems"]["read_from"])
    try:
        frames = _read_frames(path)
        labels = _label_frames(run, dataset, frames)
    except ReportError:
        return None
    indices = _indices(run.outputs / "indices" / "training.txt")
    if indices is not None:
        if max(indices) >= len(frames):
            return None  # the file changed since the run
        frames = [frames[i] for i in indices]
        labels = {name: [f[i] for i in indices] for name, f in labels.items()}
    return Structures(f"training structures of `{path.name}`", frames, labels)
