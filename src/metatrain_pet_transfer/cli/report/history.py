"""What a run logged: ``train.csv`` and the zero-shot lines of ``train.log``.

``train.csv`` is metatrain's per-epoch table (header, unit row, one row per logged
epoch); the alignment start logs the zero-shot errors (before the first step) into
``train.log``. Both are read here, with errors that name the file.
"""

import csv
import re
from pathlib import Path
from typing import Dict, List

import numpy as np

from .runs import ReportError


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
    if not any(lines):
        raise ReportError(
            f"'{path}' is empty: that run logged no epoch (e.g. `mtt train --restart` "
            "with no epoch left to train); report on the outputs folder of the run "
            "that trained"
        )
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


#: a validation error this much above its best at the last epoch is reported
OVERFIT_MARGIN = 0.05


def overfitting(columns: List[str], units: List[str], rows: np.ndarray) -> List[str]:
    """Sentences flagging validation MAEs that ended above their best epoch while
    the training MAE kept falling (the model fits its training structures more
    than the others), and saying which epoch the exported model holds.

    :return: one sentence per such metric, then one about the exported model;
        empty when no validation MAE rose by more than :data:`OVERFIT_MARGIN`
    """
    if len(rows) < 2 or "Epoch" not in columns:
        return []
    epochs = rows[:, columns.index("Epoch")].astype(int)
    sentences, training_fell = [], False
    for index, column in enumerate(columns):
        if not column.startswith("validation ") or "MAE" not in column:
            continue
        values = rows[:, index]
        if not np.all(np.isfinite(values)):
            continue
        best = int(np.argmin(values))
        last = values[-1]
        if best == len(values) - 1 or last <= (1 + OVERFIT_MARGIN) * values[best]:
            continue
        metric = column[len("validation ") :]
        unit = units[index]
        sentence = (
            f"validation {metric} was lowest at epoch {epochs[best]} "
            f"({values[best]:.4g} {unit}) and ends at {last:.4g} {unit} "
            f"(+{100 * (last / values[best] - 1):.0f}%)"
        )
        training = f"training {metric}"
        if training in columns:
            train_values = rows[:, columns.index(training)]
            if train_values[-1] < train_values[best]:
                training_fell = True
                sentence += (
                    f", while the training error kept falling "
                    f"({train_values[best]:.4g} → {train_values[-1]:.4g} {unit})"
                )
        sentences.append(sentence)
    if not sentences:
        return []
    # rising validation error with a falling training error is overfitting; with
    # both rising it may be a too large learning rate or noise: not called so
    headline = "Overfitting" if training_fell else "Validation error above its best"
    lines = [f"**{headline}**: " + "; ".join(sentences) + "."]
    if "validation loss" in columns:
        loss = rows[:, columns.index("validation loss")]
        if np.all(np.isfinite(loss)):
            kept = int(np.argmin(loss))
            if kept == len(loss) - 1:
                lines.append(
                    f"The exported model holds the weights of the last epoch "
                    f"({epochs[kept]}), whose validation loss is the lowest."
                )
            else:
                lines.append(
                    f"The exported model holds the weights of epoch {epochs[kept]} "
                    "(lowest validation loss), not those of the last epoch."
                )
    if training_fell:
        lines.append(
            "More training structures, fewer epochs or a lower learning rate "
            "reduce the gap; a small validation set is itself noisy."
        )
    return lines
