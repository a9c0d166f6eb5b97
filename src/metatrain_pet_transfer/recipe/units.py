"""Units: the pretrained heads speak the checkpoint's unit, the labels their own.

A checkpoint's energy head predicts in the unit of its ``dataset_info`` (eV for
every PET we know); a new target's labels are in the unit its ``unit:`` declares
(Hartree, kcal/mol, ...). metatrain trains, logs and exports each target in its
declared unit; every pass of the plugin that puts a pretrained prediction next to a
label (the alignment, its zero-shot errors and its log lines) converts the prediction
first, with metatomic's unit conversion (:func:`unit_factor`).

A unit can also be declared wrong (Hartree labels under ``unit: eV``). Nothing in a
number says its unit, but the pretrained model does: whatever the level of theory,
the labels' forces (or energies, once a per-element offset is allowed) are about the
pretrained predictions, not 27 or 23 times them. :func:`label_slope` measures that
ratio and :func:`unit_mismatch` names the unit it points to.
"""

from typing import Dict, Optional

import metatensor.torch as mts
import numpy as np
import torch
from metatomic.torch import unit_conversion_factor
from metatrain.utils.data import TargetInfo
from metatrain.utils.units import ev_to_mev, get_gradient_units


#: energy units a unit mistake commonly comes from (metatomic's names)
LIKELY_UNITS = ("eV", "meV", "Hartree", "kcal/mol", "kJ/mol", "Ry")

#: a slope this far from 1 (either way) is not a change of level of theory
SLOPE_TOLERANCE = 3.0

#: how close a slope must be to a unit factor for that unit to be named
FACTOR_TOLERANCE = 1.5


def unit_factor(source: TargetInfo, target: TargetInfo) -> float:
    """The factor converting ``source``'s unit (a pretrained head, the
    checkpoint's) into ``target``'s declared one; 1 when either is unknown (empty)."""
    if not source.unit or not target.unit or source.unit == target.unit:
        return 1.0
    return float(unit_conversion_factor(source.unit, target.unit))


def to_ev(unit: str) -> float:
    """The factor converting ``unit`` into eV (1 for an unknown, empty unit)."""
    return float(unit_conversion_factor(unit, "eV")) if unit else 1.0


def force_products(label: mts.TensorMap, prediction: mts.TensorMap) -> np.ndarray:
    """``[sum(label * predicted), sum(predicted**2), sum(label**2)]`` over the
    position gradients of one batch (zeros when either has none): the sums
    :func:`label_slope` needs."""
    block, predicted = label.block(), prediction.block()
    if "positions" not in block.gradients_list():
        return np.zeros(3)
    if "positions" not in predicted.gradients_list():
        return np.zeros(3)
    # the three sums where the model runs; three numbers come back to the host
    x = block.gradient("positions").values.detach().double()
    y = predicted.gradient("positions").values.detach().to(x)
    sums = torch.stack([(x * y).sum(), (y * y).sum(), (x * x).sum()])
    return sums.cpu().numpy()


#: below this correlation the pretrained predictions say nothing of the labels' unit
MIN_CORRELATION = 0.5


def label_slope(
    products: np.ndarray,
    counts: np.ndarray,
    labels: np.ndarray,
    predicted: np.ndarray,
) -> Optional[float]:
    """How the labels scale with the converted pretrained predictions.

    The least-squares slope of the label forces on the predicted ones (``products``
    from :func:`force_products`); without forces, of the total energies on the
    predicted ones with a per-element offset (``counts``: atoms of each type per
    structure). About 1 when the declared unit is right. ``None`` when the data
    cannot tell: no forces and too few structures, or predictions that explain
    little of the labels (correlation under :data:`MIN_CORRELATION`), as those of a
    barely trained model.
    """
    xy, yy, xx = products
    if yy > 0 and xx > 0:
        if xy / np.sqrt(xx * yy) < MIN_CORRELATION:
            return None
        return float(xy / yy)
    if len(predicted) < counts.shape[1] + 3:
        return None
    offsets_only = labels - counts @ np.linalg.lstsq(counts, labels, rcond=None)[0]
    design = np.column_stack([predicted, counts])
    coefficients, *_ = np.linalg.lstsq(design, labels, rcond=None)
    residual = labels - design @ coefficients
    explained = 1 - (residual**2).sum() / max((offsets_only**2).sum(), 1e-300)
    if explained < MIN_CORRELATION**2:
        return None
    return float(coefficients[0])


def unit_mismatch(slope: Optional[float], declared: str) -> Optional[str]:
    """The unit the labels look like they are in, when it is not ``declared``.

    Labels actually in ``unit`` but declared in ``declared`` are
    ``declared -> unit`` times the converted predictions. Only a clear unit factor
    is named: more than :data:`SLOPE_TOLERANCE` away from 1, within
    :data:`FACTOR_TOLERANCE` of the factor.
    """
    if slope is None or slope <= 0 or not declared:
        return None
    if abs(np.log(slope)) < np.log(SLOPE_TOLERANCE):
        return None
    for unit in LIKELY_UNITS:
        if unit == declared:
            continue
        try:
            factor = float(unit_conversion_factor(declared, unit))
        except Exception:  # `declared` is not an energy unit metatomic converts
            return None
        if abs(np.log(slope / factor)) < np.log(FACTOR_TOLERANCE):
            return unit
    return None


def format_metrics(metrics: Dict[str, float], unit: str, length_unit: str) -> str:
    """Metrics (metatrain's names) in ``unit``, shown as metatrain logs them (eV as
    meV): per atom for energies and virials, per ``length_unit`` for forces."""
    parts = []
    for name, value in metrics.items():
        if "positions_gradients" in name:
            shown, shown_unit = ev_to_mev(
                value, get_gradient_units(unit, "positions", length_unit)
            )
        else:
            shown, shown_unit = ev_to_mev(value, unit)
            shown_unit = f"{shown_unit}/atom" if shown_unit else "per atom"
        parts.append(f"{name}: {shown:.4g} {shown_unit}")
    return " | ".join(parts)
