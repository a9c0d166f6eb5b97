"""Running exported models on the labelled structures, and their errors.

Models run through ``metatomic_ase.MetatomicCalculator``, the path a simulation takes,
selecting each energy target the way ASE does (``energy`` or the variant
``energy/<level>``, :mod:`metatrain_pet_transfer.recipe.energy_levels`). ASE gives
eV, eV/Å and eV/Å³ whatever the model's unit; the predictions are converted into the
unit the options declare for the labels (``unit:``, Hartree for instance). Errors are
per atom for energies and per Cartesian component for forces and stresses, in the
labels' unit (shown in meV when the labels are in eV).
"""

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from .labels import EnergyTarget, Structures, label_value, stress_labels
from .runs import ReportError


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
    elements: tuple
    """atomic numbers of the columns of ``counts``"""
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
        # ASE's eV (per Å, per Å³) into the labels' unit
        factor = from_ev(target.unit)
        energies = [factor * e for e in energies]
        forces = [factor * np.asarray(f) for f in forces]
        stresses = [factor * np.asarray(s) for s in stresses]

        energy_ref = []
        for atoms in label_frames:
            value = label_value(atoms, target.energy_key, "info")
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
            elements=tuple(elements),
            energy=np.array(energies, dtype=float),
            energy_ref=np.array(energy_ref),
            note=note,
        )
        if target.forces_key:
            refs = [label_value(a, target.forces_key, "array") for a in label_frames]
            if all(r is not None for r in refs):
                comparison.forces = np.concatenate([f.reshape(-1) for f in forces])
                comparison.forces_ref = np.concatenate([r.reshape(-1) for r in refs])
        if periodic and stresses:
            refs = stress_labels(target, frames, label_frames)
            if refs is not None:
                comparison.stress = np.concatenate(
                    [np.asarray(s).reshape(-1) for s in stresses]
                )
                comparison.stress_ref = np.concatenate([r.reshape(-1) for r in refs])
        comparisons.append(comparison)
    return comparisons


def from_ev(unit: str) -> float:
    """The factor converting eV (what ASE returns) into ``unit``; 1 for an unknown
    (empty) unit, which metatomic does not convert either."""
    if not unit:
        return 1.0
    from metatomic.torch import unit_conversion_factor

    try:
        return float(unit_conversion_factor("eV", unit))
    except Exception as error:
        raise ReportError(
            f"cannot convert eV into the labels' unit '{unit}' ({error})"
        ) from error


# --------------------------------------------------------------------------- tables


def display_units(target: EnergyTarget) -> tuple:
    """(scale, energy unit, force unit, stress unit) for display: meV when in eV."""
    if target.unit.lower() == "ev":
        return 1000.0, "meV/atom", "meV/Å", "meV/Å³"
    return 1.0, f"{target.unit}/atom", f"{target.unit}/Å", f"{target.unit}/Å³"


def number(value: float) -> str:
    """An error for display: one decimal from 1 up (``8.2``), three significant
    digits below (``0.00153``, for Hartree)."""
    return f"{value:.1f}" if abs(value) >= 1 else f"{value:.3g}"


def metrics_table(comparisons: List[Comparison], markdown: bool = False) -> str:
    """The errors of every model and target, as text or a markdown table."""
    rows = []
    header = ["target", "model", "energy MAE", "force MAE", "stress MAE"]
    for comparison in comparisons:
        scale, energy_unit, force_unit, stress_unit = display_units(comparison.target)
        metrics = comparison.metrics()
        row = [comparison.target.name, comparison.model]
        for key, unit in [
            ("energy MAE", energy_unit),
            ("forces MAE", force_unit),
            ("stress MAE", stress_unit),
        ]:
            value = metrics.get(key)
            row.append("-" if value is None else f"{number(scale * value)} {unit}")
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
