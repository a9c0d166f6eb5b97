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
