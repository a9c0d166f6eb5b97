"""Scoring the predictions ``mtt eval`` writes, and checking them against its log.

Part of ``bench/learning_curve.py`` (running side). Every row is scored by the same
code on the same frames: energy MAE per atom (meV/atom) and force MAE over Cartesian
components (meV/Å), metatrain's own definitions (``errors``, ``split_metrics``).
``cross_check`` compares them with the MAEs ``mtt eval`` prints and raises
``CrossCheckError`` when they disagree or when the log holds no MAE line at all (a
changed log format must not pass silently). Zero-shot's per-element energy shifts
are a least-squares fit (``fit_element_shifts``).
"""

import re
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np

from .settings import ENERGY_KEY, FORCES_KEY
from .splits import Campaign


class CrossCheckError(RuntimeError):
    """Our MAEs and those ``mtt eval`` printed disagree, or it printed none."""


def read_predictions(path: Path, target: str, reference):
    """Energies (eV) and forces (eV/Å) that ``mtt eval`` wrote, frame by frame.

    ``mtt eval`` stores ``<target>_positions_gradients`` (dE/dr), so forces are its
    negative. The geometries are checked against ``reference`` so a reordering can
    never pair the wrong labels.
    """
    import ase.io

    predicted = ase.io.read(path, ":")
    if len(predicted) != len(reference):
        raise ValueError(f"{path}: {len(predicted)} frames, expected {len(reference)}")
    energies, forces = [], []
    for atoms, ref in zip(predicted, reference, strict=True):
        if not np.allclose(atoms.positions, ref.positions, atol=1e-5):
            raise ValueError(f"{path}: frames are not in the order of the eval set")
        energies.append(float(_info_or_calc(atoms, target)))
        gradient = np.asarray(atoms.info[f"{target}_positions_gradients"], dtype=float)
        forces.append(-gradient.reshape(-1, 3))
    return np.array(energies), forces


def _info_or_calc(atoms, key: str):
    """ASE's extxyz reader moves a plain ``energy`` into a calculator."""
    if key in atoms.info:
        return atoms.info[key]
    return atoms.calc.results[key]


def errors(energies, forces, frames) -> Dict[str, float]:
    """Energy MAE per atom (meV/atom) and force MAE over components (meV/Å).

    The same definitions as metatrain's "MAE (per atom)" and gradient MAE: the
    energy error of each frame divided by its number of atoms, averaged over frames;
    the force error averaged over every Cartesian component of every atom.
    """
    labels = np.array([atoms.info[ENERGY_KEY] for atoms in frames])
    label_forces = [atoms.arrays[FORCES_KEY] for atoms in frames]
    return deviations(energies, forces, labels, label_forces, frames)


def deviations(energies, forces, reference_energies, reference_forces, frames):
    """The MAEs of :func:`errors` against any reference: labels, or another model's
    predictions (the kept heads' drift from the pretrained model)."""
    n_atoms = np.array([len(atoms) for atoms in frames])
    force_errors = np.concatenate(
        [np.abs(f - g).ravel() for f, g in zip(forces, reference_forces, strict=True)]
    )
    return {
        "energy": 1000
        * float(np.mean(np.abs(energies - reference_energies) / n_atoms)),
        "force": 1000 * float(force_errors.mean()),
    }


def split_metrics(energies, forces, campaign: Campaign) -> Dict[str, float]:
    """Validation and test errors from predictions on the val+test file (the
    validation frames first, then the test frames)."""
    n_val = len(campaign.splits["val"])
    val = errors(
        energies[:n_val], forces[:n_val], campaign.subset(campaign.splits["val"])
    )
    test = errors(
        energies[n_val:], forces[n_val:], campaign.subset(campaign.splits["test"])
    )
    return {
        "val_energy_mae_meV_atom": val["energy"],
        "val_force_mae_meV_A": val["force"],
        "test_energy_mae_meV_atom": test["energy"],
        "test_force_mae_meV_A": test["force"],
    }


def logged_errors(log: Path) -> Optional[Dict[str, float]]:
    """The MAEs ``mtt eval`` printed (its last energy and force MAE lines)."""
    text = log.read_text(errors="replace")
    energy = re.findall(r"MAE \(per atom\): ([0-9.eE+-]+) meV", text)
    force = re.findall(r"positions_gradients MAE: ([0-9.eE+-]+) meV/A", text)
    if not (energy and force):
        return None
    return {"energy": float(energy[-1]), "force": float(force[-1])}


#: how far our MAEs may be from the printed ones: relative, plus an absolute
#: margin for the printed digits and float32 predictions (meV/atom and meV/Å)
RELATIVE, ABSOLUTE = 0.01, 0.05


def cross_check(energies, forces, frames, log: Path) -> None:
    """Raise ``CrossCheckError`` unless our MAEs on ``frames`` are those that ``mtt
    eval`` printed in ``log`` (for the same predictions and frames)."""
    theirs = logged_errors(log)
    if theirs is None:
        raise CrossCheckError(
            f"{log}: no 'MAE (per atom): ... meV' and 'positions_gradients MAE: ... "
            "meV/A' lines to cross-check the scores against (did the log format "
            "change?)"
        )
    ours = errors(energies, forces, frames)
    off = {
        key: (round(ours[key], 3), theirs[key])
        for key in ours
        if abs(ours[key] - theirs[key]) > RELATIVE * abs(theirs[key]) + ABSOLUTE
    }
    if off:
        raise CrossCheckError(
            f"{log}: our MAEs differ from those mtt eval printed (ours, printed): {off}"
        )


def composition(frames, elements: Sequence[int]) -> np.ndarray:
    """Number of atoms of each element, one row per frame."""
    return np.array(
        [[np.sum(atoms.numbers == z) for z in elements] for atoms in frames],
        dtype=float,
    )


def fit_element_shifts(frames, residuals: np.ndarray, elements: Sequence[int]):
    """Least-squares per-element energies (eV) explaining ``residuals`` (eV/frame).

    Composition models do the same; with few frames the minimum-norm solution keeps
    the shifts of elements the data cannot tell apart finite.
    """
    shifts, *_ = np.linalg.lstsq(composition(frames, elements), residuals, rcond=None)
    return shifts
