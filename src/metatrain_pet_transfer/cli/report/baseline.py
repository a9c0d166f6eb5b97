"""The energy axis of the parity plot: total energies minus a per-element baseline.

Molecules of different composition have total energies hundreds of eV apart; the
parity plot shows ``(E - baseline) / n_atoms`` so that they share one axis, with
the same baseline subtracted from labels and predictions (the distance to the
diagonal stays the error per atom).

The baseline is fitted (least squares of the reference energies on the element
counts) on the run's **training** structures, not on the plotted ones: fitted on
the plotted labels themselves, it reproduces them exactly whenever there are about
as few structures as elements, and every reference point collapses onto 0 (a
vertical stripe). When no training labels can be read, the plotted labels are used
if they outnumber the elements well; otherwise energies are shown per atom
relative to their mean, and the summary says which was done.
"""

from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np

from .evaluation import Comparison
from .labels import EnergyTarget, Structures, label_value


#: the plotted labels fit the baseline only with this many structures per parameter
OVERDETERMINED = 3


@dataclass
class EnergyBaseline:
    """What is subtracted from total energies on the parity plot's energy axis."""

    description: str
    """one sentence for the summary"""
    weights: Optional[Dict[int, float]] = None
    """per-element energies (label units); ``None``: the mean energy per atom"""
    mean_per_atom: float = 0.0

    def offsets(self, comparison: Comparison) -> np.ndarray:
        """The baseline total energy of each structure of ``comparison``."""
        if self.weights is None:
            return self.mean_per_atom * comparison.n_atoms
        per_element = np.array([self.weights[z] for z in comparison.elements])
        return comparison.counts @ per_element


def _fit(counts: np.ndarray, energies: np.ndarray) -> np.ndarray:
    weights, *_ = np.linalg.lstsq(counts, energies, rcond=None)
    return weights


def _training_fit(
    target: EnergyTarget, training: Structures, needed: List[int]
) -> Optional[EnergyBaseline]:
    frames = training.frames
    label_frames = training.label_frames.get(target.name, frames)
    energies = [label_value(a, target.energy_key, "info") for a in label_frames]
    if not frames or any(e is None for e in energies):
        return None
    elements = sorted({int(z) for f in frames for z in f.numbers})
    if not set(needed) <= set(elements):
        return None  # an element of the plotted structures was never trained on
    counts = np.array([[np.sum(f.numbers == z) for z in elements] for f in frames])
    weights = _fit(counts.astype(float), np.array(energies, dtype=float).reshape(-1))
    return EnergyBaseline(
        description=f"a per-element baseline fitted (least squares) on the "
        f"reference labels of the {len(frames)} {training.description}, not on the "
        "plotted structures",
        weights=dict(zip(elements, weights.tolist(), strict=True)),
    )


def energy_baseline(
    target: EnergyTarget,
    comparisons: List[Comparison],
    training: Optional[Structures] = None,
) -> EnergyBaseline:
    """The baseline of ``target``'s energy panel (see the module docstring).

    :param comparisons: the models' predictions for ``target`` (same structures)
    :param training: the run's training structures with their labels, if known
    """
    reference = comparisons[0]
    needed = list(reference.elements)
    if training is not None:
        baseline = _training_fit(target, training, needed)
        if baseline is not None:
            return baseline
    n_structures = len(reference.energy_ref)
    if n_structures >= OVERDETERMINED * len(needed):
        weights = _fit(reference.counts, reference.energy_ref)
        return EnergyBaseline(
            description=f"a per-element baseline fitted (least squares) on the "
            f"reference labels of the {n_structures} plotted structures (no "
            "training labels to fit it on)",
            weights=dict(zip(needed, weights.tolist(), strict=True)),
        )
    per_atom = reference.energy_ref / reference.n_atoms
    return EnergyBaseline(
        description=f"the mean reference energy per atom of the {n_structures} "
        f"plotted structures ({n_structures} structures are too few to fit "
        f"{len(needed)} per-element energies without reproducing the labels)",
        mean_per_atom=float(np.mean(per_atom)),
    )
