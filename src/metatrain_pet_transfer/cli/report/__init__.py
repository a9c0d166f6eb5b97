"""``mtt-transfer report``: plots and a summary of a finished ``mtt train`` run.

What a run folder must hold, and where each piece is looked for:

- the run itself: ``RUN_DIR`` is either the folder where ``mtt train`` ran (the latest
  ``outputs/<date>/<time>/`` with a ``train.csv`` is used) or such an outputs folder;
- ``train.csv`` (metatrain's per-epoch metrics) for the learning curve, and
  ``train.log`` for the zero-shot errors logged by the alignment start (optional);
- the options: ``options_restart.yaml`` of the outputs folder, else ``options.yaml``;
  relative data paths are resolved from the folder where ``mtt train`` ran;
- the exported model (``.pt``): the one of the outputs folder (``model.pt`` by
  default), or ``--model``;
- structures with labels for the parity plots: ``--data FILE`` (an ASE-readable file
  with the keys of the options), else the options' test set (a file, or the test
  indices metatrain saved for a fractional split), else the validation set.

The model is run through ``metatomic_ase.MetatomicCalculator`` (the path a simulation
takes), selecting each energy target the way ASE does: ``energy``, or the variant
``energy/<level>`` (:mod:`.energy_levels`). Energies, forces and stresses (for
periodic structures) of every energy target are compared with the labels; other
targets are listed but not plotted. Labels are read in ASE units (eV, Å).

Writes into ``RUN_DIR/report/`` (or ``--out``): ``parity.png``, ``learning_curve.png``
and ``summary.md``.
"""

import argparse
import csv
import re
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np


#: what the report writes, in its output folder
PARITY_PNG, CURVE_PNG, SUMMARY_MD = "parity.png", "learning_curve.png", "summary.md"


class ReportError(ValueError):
    """A run folder the report cannot use; the message names the missing piece."""


# ------------------------------------------------------------------------- the run


@dataclass
class Run:
    """The pieces of a finished ``mtt train`` run the report reads."""

    outputs: Path
    """metatrain's outputs folder (``train.csv``, ``train.log``, ...)"""
    base: Path
    """where ``mtt train`` ran: relative data paths start here"""
    options: dict
    """the run's options, datasets expanded by metatrain"""
    model: Optional[Path]
    """the exported model, if one was found"""

    @property
    def train_csv(self) -> Path:
        return self.outputs / "train.csv"

    @property
    def train_log(self) -> Path:
        return self.outputs / "train.log"


def _is_outputs_folder(path: Path) -> bool:
    return (path / "train.csv").is_file() or (path / "options_restart.yaml").is_file()


def find_run(run_dir, model: Optional[Path] = None) -> Run:
    """Locate the outputs folder, options and exported model of a run.

    :param run_dir: the folder where ``mtt train`` ran, or its outputs folder
    :param model: the exported model to use instead of the run's own
    :raises ReportError: naming the folder and the file that is missing
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ReportError(f"run folder '{run_dir}' does not exist")
    if _is_outputs_folder(run_dir):
        outputs = run_dir
        # `mtt train` writes into <where it ran>/outputs/<date>/<time>
        if outputs.parent.parent.name == "outputs":
            base = outputs.parents[2]
        else:
            base = outputs
    else:
        candidates = sorted(
            p.parent
            for p in run_dir.glob("outputs/*/*/*")
            if p.name in ("train.csv", "options_restart.yaml")
        )
        if not candidates:
            raise ReportError(
                f"'{run_dir}' is not a metatrain run: it has no 'train.csv' (a "
                "metatrain outputs folder) and no 'outputs/<date>/<time>/train.csv' "
                "(a folder where `mtt train` ran)"
            )
        outputs = candidates[-1]
        base = run_dir

    options = _read_options(outputs, base)
    if model is None:
        model = _find_model(outputs, base)
    elif not Path(model).is_file():
        raise ReportError(f"model file '{model}' does not exist")
    return Run(outputs=outputs, base=base, options=options, model=model)


def _read_options(outputs: Path, base: Path) -> dict:
    import yaml

    for path in (outputs / "options_restart.yaml", base / "options.yaml"):
        if path.is_file():
            with open(path) as file:
                options = yaml.safe_load(file)
            return _expand_datasets(options)
    raise ReportError(
        f"no options for the run in '{outputs}': expected 'options_restart.yaml' "
        f"there (written by `mtt train`) or 'options.yaml' in '{base}'"
    )


def _expand_datasets(options: dict) -> dict:
    """The dataset sections in metatrain's expanded form (lists of datasets)."""
    from omegaconf import OmegaConf

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from metatrain.utils.omegaconf import expand_dataset_config

    options = dict(options)
    for section in ("training_set", "validation_set", "test_set"):
        value = options.get(section)
        if isinstance(value, (dict, list)):
            expanded = expand_dataset_config(OmegaConf.create(value))
            options[section] = OmegaConf.to_container(expanded, resolve=True)
    return options


def _find_model(outputs: Path, base: Path) -> Optional[Path]:
    exported = sorted(outputs.glob("*.pt"))
    for path in [outputs / "model.pt", *exported, base / "model.pt"]:
        if path.is_file():
            return path
    return None


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
    if not path.is_file():
        return None
    values = np.loadtxt(path, dtype=int, ndmin=1)
    return [int(i) for i in values] if len(values) else None


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
                f"{split} set `{path.name}` ({len(frames)} structures)", frames, labels
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


def _info_or_calc(atoms, key: str, kind: str):
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


def _stress_labels(target: EnergyTarget, frames, label_frames) -> Optional[list]:
    """3x3 stress labels, from stress or from virial (``-virial / volume``)."""
    if target.stress_key:
        refs = [_info_or_calc(a, target.stress_key, "info") for a in label_frames]
        if all(r is not None for r in refs):
            return [_stress_matrix(r) for r in refs]
    if target.virial_key:
        refs = [_info_or_calc(a, target.virial_key, "info") for a in label_frames]
        if all(r is not None for r in refs):
            return [
                -np.asarray(r, dtype=float).reshape(3, 3) / atoms.get_volume()
                for r, atoms in zip(refs, frames, strict=True)
            ]
    return None


# ----------------------------------------------------------------------- evaluation


@dataclass
class Comparison:
    """Predictions of one model for one energy target, next to the labels."""

    model: str
    """the model's name in plots and tables (e.g. ``before``, ``after``)"""
    target: EnergyTarget
    n_atoms: np.ndarray
    counts: np.ndarray
    """(structures, elements) atom counts, for the per-element energy baseline"""
    energy: np.ndarray
    energy_ref: np.ndarray
    forces: Optional[np.ndarray] = None
    forces_ref: Optional[np.ndarray] = None
    stress: Optional[np.ndarray] = None
    stress_ref: Optional[np.ndarray] = None
    note: str = ""

    def metrics(self) -> Dict[str, float]:
        """MAE and RMSE in the labels' unit: energies per atom, forces per
        component, stresses per component."""
        result = {}
        error = (self.energy - self.energy_ref) / self.n_atoms
        result["energy MAE"] = float(np.mean(np.abs(error)))
        result["energy RMSE"] = float(np.sqrt(np.mean(error**2)))
        for name in ("forces", "stress"):
            predicted, reference = getattr(self, name), getattr(self, f"{name}_ref")
            if predicted is not None:
                error = predicted - reference
                result[f"{name} MAE"] = float(np.mean(np.abs(error)))
                result[f"{name} RMSE"] = float(np.sqrt(np.mean(error**2)))
        return result


def _variant(target: str, outputs: Sequence[str]) -> tuple:
    """How ASE selects ``target`` in a model with these outputs:
    ``(variant, note)`` for ``MetatomicCalculator(variants={"energy": variant})``."""
    from ...recipe.energy_levels import energy_variant_name

    if target.startswith("energy/") and target in outputs:
        return target[len("energy/") :], ""
    alias = energy_variant_name(target)
    if alias is not None and alias in outputs:
        return alias[len("energy/") :], ""
    if target == "energy" and "energy" in outputs:
        return None, ""
    if "energy" in outputs:
        return None, f"the model has no '{target}' output: its 'energy' is used"
    raise ReportError(
        f"the model has no energy output for '{target}' (outputs: {sorted(outputs)})"
    )


def evaluate(
    model: Path,
    structures: Structures,
    targets: List[EnergyTarget],
    name: str,
    batch_size: int = 32,
) -> List[Comparison]:
    """Run ``model`` on the structures, once per energy target.

    :param model: an exported model (``.pt``)
    :param name: how the model is called in the plots and tables
    """
    import metatomic.torch as mta
    from metatomic_ase import MetatomicCalculator

    if not Path(model).is_file():
        raise ReportError(f"model file '{model}' does not exist")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = mta.load_atomistic_model(str(model))
    outputs = list(loaded.capabilities().outputs.keys())
    elements = sorted({int(z) for f in structures.frames for z in f.numbers})
    comparisons = []
    for target in targets:
        variant, note = _variant(target.name, outputs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            calculator = MetatomicCalculator(
                loaded, variants={"energy": variant} if variant else None
            )
        frames = structures.frames
        label_frames = structures.label_frames[target.name]
        energies, forces, stresses = [], [], []
        periodic = all(f.pbc.all() for f in frames)
        for start in range(0, len(frames), batch_size):
            batch = frames[start : start + batch_size]
            result = calculator.compute_energy(batch, compute_forces_and_stresses=True)
            energies += list(np.atleast_1d(result["energy"]))
            forces += list(result["forces"])
            if periodic and "stress" in result:
                stresses += list(result["stress"])

        energy_ref = []
        for atoms in label_frames:
            value = _info_or_calc(atoms, target.energy_key, "info")
            if value is None:
                raise ReportError(
                    f"a structure has no energy label '{target.energy_key}' for "
                    f"'{target.name}'"
                )
            energy_ref.append(float(value))
        comparison = Comparison(
            model=name,
            target=target,
            n_atoms=np.array([len(f) for f in frames], dtype=float),
            counts=np.array(
                [[np.sum(f.numbers == z) for z in elements] for f in frames],
                dtype=float,
            ),
            energy=np.array(energies, dtype=float),
            energy_ref=np.array(energy_ref),
            note=note,
        )
        if target.forces_key:
            refs = [_info_or_calc(a, target.forces_key, "array") for a in label_frames]
            if all(r is not None for r in refs):
                comparison.forces = np.concatenate([f.reshape(-1) for f in forces])
                comparison.forces_ref = np.concatenate([r.reshape(-1) for r in refs])
        if periodic and stresses:
            refs = _stress_labels(target, frames, label_frames)
            if refs is not None:
                comparison.stress = np.concatenate(
                    [np.asarray(s).reshape(-1) for s in stresses]
                )
                comparison.stress_ref = np.concatenate([r.reshape(-1) for r in refs])
        comparisons.append(comparison)
    return comparisons


# --------------------------------------------------------------------------- tables


def _units(target: EnergyTarget) -> tuple:
    """(scale, energy unit, force unit, stress unit) for display: meV when in eV."""
    if target.unit.lower() == "ev":
        return 1000.0, "meV/atom", "meV/Å", "meV/Å³"
    return 1.0, f"{target.unit}/atom", f"{target.unit}/Å", f"{target.unit}/Å³"


def metrics_table(comparisons: List[Comparison], markdown: bool = False) -> str:
    """The errors of every model and target, as text or a markdown table."""
    rows = []
    header = ["target", "model", "energy MAE", "force MAE", "stress MAE"]
    for comparison in comparisons:
        scale, energy_unit, force_unit, stress_unit = _units(comparison.target)
        metrics = comparison.metrics()
        row = [comparison.target.name, comparison.model]
        for key, unit in [
            ("energy MAE", energy_unit),
            ("forces MAE", force_unit),
            ("stress MAE", stress_unit),
        ]:
            value = metrics.get(key)
            row.append("-" if value is None else f"{scale * value:.1f} {unit}")
        rows.append(row)
    if all(row[4] == "-" for row in rows):
        header = header[:4]
        rows = [row[:4] for row in rows]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines += [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows
    ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- plots


def _matplotlib():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _energy_baseline(comparisons: List[Comparison]) -> np.ndarray:
    """Per-element reference energies fitted on the labels (least squares), so that
    energies of different molecules share one axis; the same baseline is taken
    from labels and predictions, so the distance to the diagonal is the error."""
    reference = comparisons[0]
    weights, *_ = np.linalg.lstsq(reference.counts, reference.energy_ref, rcond=None)
    return reference.counts @ weights


def plot_parity(comparisons: List[Comparison], path: Path) -> Path:
    """One row per model, one column per quantity (energy, forces, stress)."""
    plt = _matplotlib()
    models = list(dict.fromkeys(c.model for c in comparisons))
    targets = list(dict.fromkeys(c.target.name for c in comparisons))
    columns = []
    for target in targets:
        first = next(c for c in comparisons if c.target.name == target)
        columns.append((target, "energy"))
        for quantity in ("forces", "stress"):
            if getattr(first, quantity) is not None:
                columns.append((target, quantity))

    figure, axes = plt.subplots(
        len(models),
        len(columns),
        figsize=(4.2 * len(columns), 4.0 * len(models)),
        squeeze=False,
    )
    colors = ["tab:orange", "tab:blue", "tab:green", "tab:red"]
    for column, (target, quantity) in enumerate(columns):
        of_target = [c for c in comparisons if c.target.name == target]
        scale, energy_unit, force_unit, stress_unit = _units(of_target[0].target)
        baseline = _energy_baseline(of_target) if quantity == "energy" else None
        values = {}
        for comparison in of_target:
            if quantity == "energy":
                x = (comparison.energy_ref - baseline) / comparison.n_atoms
                y = (comparison.energy - baseline) / comparison.n_atoms
                x, y = scale * x, scale * y
            else:
                x = getattr(comparison, f"{quantity}_ref")
                y = getattr(comparison, quantity)
            values[comparison.model] = (x, y, comparison)
        everything = np.concatenate([np.r_[x, y] for x, y, _ in values.values()])
        low, high = np.min(everything), np.max(everything)
        pad = 0.05 * (high - low or 1.0)
        limits = (low - pad, high + pad)
        for row, model in enumerate(models):
            ax = axes[row, column]
            if model not in values:
                ax.set_visible(False)
                continue
            x, y, comparison = values[model]
            metrics = comparison.metrics()
            raw_unit = of_target[0].target.unit
            if quantity == "energy":
                label = f"energy − per-element baseline ({energy_unit})"
                unit = energy_unit
            elif quantity == "forces":
                label, unit = f"force components ({raw_unit}/Å)", force_unit
            else:
                label, unit = f"stress components ({raw_unit}/Å³)", stress_unit
            mae = scale * metrics[f"{quantity} MAE"]
            ax.plot(limits, limits, color="0.6", lw=1, zorder=0)
            ax.scatter(
                x,
                y,
                s=6 if quantity != "energy" else 14,
                alpha=0.5,
                color=colors[models.index(model) % len(colors)],
                edgecolors="none",
            )
            ax.set_xlim(limits)
            ax.set_ylim(limits)
            ax.set_aspect("equal")
            ax.set_xlabel(f"reference {label}")
            ax.set_ylabel(f"predicted {label}")
            # the error goes in the title: a box inside the axes can hide points
            title = f"{model}: {quantity}"
            if target != "energy":
                title += f" of {target}"
            ax.set_title(f"{title}\nMAE {mae:.1f} {unit}", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def read_train_csv(path: Path) -> tuple:
    """``(columns, units, rows)`` of metatrain's ``train.csv`` (header, unit row,
    one row of floats per logged epoch)."""
    if not path.is_file():
        raise ReportError(
            f"'{path}' does not exist: it is written by `mtt train` in its outputs "
            "folder (one row per logged epoch)"
        )
    with open(path, newline="") as file:
        lines = list(csv.reader(file))
    if len(lines) < 2:
        raise ReportError(f"'{path}' has no header and unit rows")
    columns = [c.strip() for c in lines[0]]
    units = [u.strip() for u in lines[1]]
    rows = []
    for line in lines[2:]:
        if line:
            rows.append([float(v) if v.strip() else np.nan for v in line])
    return columns, units, np.array(rows, dtype=float).reshape(-1, len(columns))


_ZERO_SHOT = re.compile(r"Zero-shot (training|validation) errors: (.*)$")


def zero_shot_lines(log: Path) -> List[str]:
    """The alignment and zero-shot lines of ``train.log`` (without timestamps)."""
    if not log.is_file():
        return []
    lines = []
    for line in log.read_text(errors="replace").splitlines():
        if "Zero-shot" in line or "Alignment:" in line:
            lines.append(re.sub(r"^\[[^\]]*\]\[[A-Z]+\] - ", "", line).strip())
    return lines


def zero_shot_metrics(lines: List[str], split: str = "validation") -> Dict[str, float]:
    """``{train.csv metric name: value}`` of the zero-shot line for ``split``: the
    errors before the first step, in the units of ``train.csv``."""
    metrics = {}
    for line in lines:
        match = _ZERO_SHOT.search(line)
        if not match or match.group(1) != split:
            continue
        for item in match.group(2).split(" | "):
            name, _, value = item.rpartition(": ")
            number = value.split()[0] if value else ""
            try:
                metrics[_external_metric_name(name)] = float(number)
            except ValueError:
                continue
    return metrics


def _external_metric_name(name: str) -> str:
    """``mtt::e_positions_gradients MAE`` -> ``forces[mtt::e] MAE``, as in the CSV."""
    target, _, metric = name.partition(" ")
    for suffix, external in (
        ("_positions_gradients", "forces"),
        ("_strain_gradients", "virial"),
    ):
        if target.endswith(suffix):
            base = target[: -len(suffix)]
            target = external if base == "energy" else f"{external}[{base}]"
    return f"{target} {metric}"


def plot_learning_curve(
    train_csv: Path, path: Path, zero_shot: Optional[Dict[str, float]] = None
) -> Path:
    """Training and validation metrics per epoch (MAE when logged, else RMSE), one
    panel per metric; the zero-shot validation error as a point at epoch 0."""
    plt = _matplotlib()
    columns, units, rows = read_train_csv(train_csv)
    if len(rows) == 0:
        raise ReportError(f"'{train_csv}' has no epoch rows: the run logged nothing")
    epochs = rows[:, columns.index("Epoch")] + 1 if "Epoch" in columns else None
    if epochs is None:
        epochs = np.arange(1, len(rows) + 1)
    metrics = [
        c[len("validation ") :]
        for c in columns
        if c.startswith("validation ") and c != "validation loss"
    ]
    if any("MAE" in m for m in metrics):
        metrics = [m for m in metrics if "MAE" in m]
    if not metrics:
        raise ReportError(f"'{train_csv}' has no validation metric columns")
    zero_shot = zero_shot or {}

    figure, axes = plt.subplots(
        1, len(metrics), figsize=(4.6 * len(metrics), 3.8), squeeze=False
    )
    for ax, metric in zip(axes[0], metrics, strict=True):
        unit = ""
        for split, style in (("training", "-"), ("validation", "-")):
            name = f"{split} {metric}"
            if name not in columns:
                continue
            index = columns.index(name)
            unit = units[index] or unit
            ax.plot(
                epochs,
                rows[:, index],
                style,
                marker="o" if len(epochs) < 30 else None,
                ms=3,
                label=split,
                color="tab:blue" if split == "training" else "tab:red",
            )
        if metric in zero_shot:
            ax.plot(
                [0],
                [zero_shot[metric]],
                marker="*",
                ms=12,
                ls="none",
                color="black",
                label="zero-shot (validation)",
            )
            ax.axhline(zero_shot[metric], color="0.5", ls="--", lw=1)
        ax.set_xlabel("epochs completed")
        what = metric.split(" ", 1)[1] if " " in metric else metric
        what = what.replace("(per atom)", "per atom")
        ax.set_ylabel(f"{what} ({unit.replace('/A', '/Å')})" if unit else what)
        ax.set_title(metric, fontsize=10)
        plotted = [
            rows[:, columns.index(f"{split} {metric}")]
            for split in ("training", "validation")
            if f"{split} {metric}" in columns
        ]
        plotted = np.concatenate(plotted + [[zero_shot.get(metric, 1.0)]])
        if np.all(plotted[np.isfinite(plotted)] > 0):
            _plain_log_axis(ax)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _plain_log_axis(ax) -> None:
    """A log y axis labelled with plain numbers (``200``, not ``2 x 10^2``)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_yscale("log")
    low, high = ax.get_ylim()
    decades = np.log10(high / low)
    subs = (1.0, 2.0, 5.0) if decades > 1.2 else (1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.0)
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=subs))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


# ------------------------------------------------------------------------ the report


@dataclass
class Report:
    """What :func:`write_report` wrote."""

    folder: Path
    parity: Optional[Path] = None
    learning_curve: Optional[Path] = None
    summary: Optional[Path] = None
    comparisons: List[Comparison] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)


def write_report(
    run: Run,
    out: Path,
    comparisons: List[Comparison],
    structures_description: str,
    other_targets: Sequence[str] = (),
    extra_sections: Sequence[str] = (),
    title: str = "Transfer report",
    intro: str = "",
) -> Report:
    """Write the plots and ``summary.md`` of a run into ``out``.

    :param intro: markdown placed before the errors
    :param extra_sections: markdown sections appended at the end
    """
    out.mkdir(parents=True, exist_ok=True)
    report = Report(folder=out, comparisons=comparisons)
    log_lines = zero_shot_lines(run.train_log)

    if comparisons:
        report.parity = plot_parity(comparisons, out / PARITY_PNG)
    try:
        report.learning_curve = plot_learning_curve(
            run.train_csv, out / CURVE_PNG, zero_shot_metrics(log_lines)
        )
    except ReportError as error:
        report.skipped.append(f"learning curve: {error}")

    lines = [f"# {title}", ""]
    lines += [
        f"- run: `{run.outputs}`",
        f"- model: `{run.model}`" if run.model else "- model: none found",
        f"- structures: {structures_description}",
        "",
    ]
    if intro:
        lines += [intro.rstrip(), ""]
    lines += ["## Errors", ""]
    if comparisons:
        lines += [metrics_table(comparisons, markdown=True), ""]
        notes = [f"{c.model}: {c.note}." for c in comparisons if c.note]
        lines += [
            " ".join(
                [
                    "Energy errors per atom, force and stress errors per Cartesian "
                    "component.",
                    *notes,
                ]
            ),
            "",
            f"![parity plot]({PARITY_PNG})",
            "",
            "Parity: energies are shown per atom, minus a per-element baseline fitted "
            "on the reference labels (the same for labels and predictions), so that "
            "molecules of different composition share one axis.",
            "",
        ]
    else:
        lines += ["No energy target to evaluate.", ""]
    if other_targets:
        lines += [
            f"Not plotted (not energy targets): {', '.join(other_targets)}.",
            "",
        ]
    lines += ["## Training", ""]
    if report.learning_curve is not None:
        columns, units, rows = read_train_csv(run.train_csv)
        lines += [f"{len(rows)} logged epochs (`{run.train_csv.name}`).", ""]
        lines += _last_epoch_table(columns, units, rows)
        lines += ["", f"![learning curve]({CURVE_PNG})", ""]
    if log_lines:
        lines += ["Alignment start (`train.log`):", "", "```"]
        lines += log_lines
        lines += ["```", ""]
    for skipped in report.skipped:
        lines += [f"- not written: {skipped}"]
    for section in extra_sections:
        lines += ["", section.rstrip(), ""]
    report.summary = out / SUMMARY_MD
    report.summary.write_text("\n".join(lines).rstrip() + "\n")
    return report


def _last_epoch_table(columns, units, rows) -> List[str]:
    """Last and best value of each validation metric."""
    lines = ["| metric | last epoch | best |", "|---|---|---|"]
    for index, column in enumerate(columns):
        if not column.startswith("validation ") or column == "validation loss":
            continue
        values = rows[:, index]
        unit = units[index]
        lines.append(
            f"| {column} | {values[-1]:.4g} {unit} | {np.nanmin(values):.4g} {unit} |"
        )
    return lines


def make_report(
    run_dir,
    out: Optional[Path] = None,
    data: Optional[Path] = None,
    model: Optional[Path] = None,
    before: Optional[Path] = None,
) -> Report:
    """Everything ``mtt-transfer report`` does: find, evaluate, plot, summarize.

    :param run_dir: the folder where ``mtt train`` ran, or its outputs folder
    :param out: output folder (default ``<run_dir>/report``)
    :param data: labelled structures to compare on (default: the run's test or
        validation structures)
    :param model: exported model to evaluate (default: the run's)
    :param before: another exported model to compare with (e.g. the zero-shot one)
    """
    run = find_run(run_dir, model)
    out = Path(out) if out is not None else Path(run_dir) / "report"
    targets, others = energy_targets(run.options)
    comparisons: List[Comparison] = []
    description = "none"
    if targets:
        if run.model is None:
            raise ReportError(
                f"no exported model in '{run.outputs}' or '{run.base}' (expected "
                "'model.pt', written by `mtt train`): pass --model"
            )
        structures = report_structures(run, data)
        description = structures.description
        if before is not None:
            comparisons += evaluate(Path(before), structures, targets, "before")
        comparisons += evaluate(
            run.model, structures, targets, "after" if before else "model"
        )
    return write_report(run, out, comparisons, description, others)


# ------------------------------------------------------------------------------ CLI


def register(subparsers) -> None:
    """Add the ``report`` subcommand to the ``mtt-transfer`` parser."""
    parser = subparsers.add_parser(
        "report",
        help="parity plots, learning curve and summary of a finished run",
        description="Parity plots (energy, forces, stress where labelled), the "
        "learning curve and a markdown summary of a finished `mtt train` run, "
        "written to RUN_DIR/report/.",
        epilog="RUN_DIR is the folder where `mtt train` ran (its latest "
        "outputs/<date>/<time>/ is used) or such an outputs folder. Read from it: "
        "train.csv (learning curve), train.log (zero-shot errors, optional), "
        "options_restart.yaml or options.yaml (targets and data), the exported "
        "model (.pt). Structures compared: --data, else the options' test set "
        "(file or metatrain's indices/test.txt), else the validation set.",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", type=Path)
    parser.add_argument(
        "--data",
        type=Path,
        metavar="FILE",
        help="labelled structures (ASE-readable, keys of the options) to compare on; "
        "default: the run's test set, else its validation set",
    )
    parser.add_argument(
        "--model",
        type=Path,
        metavar="FILE",
        help="exported model (.pt); default: the run's",
    )
    parser.add_argument(
        "--before",
        type=Path,
        metavar="FILE",
        help="another exported model to compare with, e.g. the zero-shot model of a "
        "`num_epochs: 0` run",
    )
    parser.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="output folder (default: RUN_DIR/report)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``mtt-transfer report``; returns the exit code."""
    try:
        report = make_report(
            args.run_dir,
            out=args.out,
            data=args.data,
            model=args.model,
            before=args.before,
        )
    except ReportError as error:
        print(f"mtt-transfer report: {error}", file=sys.stderr)
        return 1
    if report.comparisons:
        print(metrics_table(report.comparisons))
    for path in (report.parity, report.learning_curve, report.summary):
        if path is not None:
            print(f"wrote {path}")
    for skipped in report.skipped:
        print(f"not written: {skipped}", file=sys.stderr)
    return 0
