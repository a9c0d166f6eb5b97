"""What a run logged: ``train.csv``, the zero-shot lines of ``train.log``, and the
epoch whose weights were exported.

``train.csv`` is metatrain's per-epoch table (header, unit row, one row per logged
epoch); the alignment start logs the zero-shot errors (before the first step) into
``train.log``. Both are read here, with errors that name the file. A run continued
with ``mtt train --restart`` has one outputs folder per part
(:func:`.runs.restart_chain`): :func:`read_history` joins their tables into one.

The exported model holds the weights of the epoch PET selects with the run's
``best_model_metric`` (default ``mae_prod``: the product of every validation MAE),
the one metatrain names in ``train.log`` ("Using best model from epoch N") when it
loads the final checkpoint: :func:`exported_epoch`.
"""

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from .runs import ReportError, Run, restart_chain


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


def overfitting(
    columns: List[str],
    units: List[str],
    rows: np.ndarray,
    exported: str = "",
) -> List[str]:
    """Sentences flagging validation MAEs that ended above their best epoch while
    the training MAE kept falling (the model fits its training structures more
    than the others), and saying which epoch the exported model holds.

    :param exported: the sentence saying which epoch the exported model holds
        (:meth:`History.exported_sentence`); default: PET's default rule,
        ``mae_prod``, on these rows
    :return: one sentence per such metric, then ``exported``; empty when no
        validation MAE rose by more than :data:`OVERFIT_MARGIN`
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
    if not exported:
        epoch = selected_epoch(columns, rows, "mae_prod")
        if epoch is not None:
            exported = (
                f"The exported model holds the weights of epoch {epoch} (the lowest "
                f"`mae_prod`, PET's default `best_model_metric`)."
            )
    if exported:
        lines.append(exported)
    if training_fell:
        lines.append(
            "More training structures, fewer epochs or a lower learning rate "
            "reduce the gap; a small validation set is itself noisy."
        )
    return lines


# --------------------------------------------------------------- the exported epoch

#: what PET's ``best_model_metric`` means, for sentences
METRIC_WORDS = {
    "mae_prod": "the product of the validation MAEs",
    "rmse_prod": "the product of the validation RMSEs",
    "loss": "the validation loss",
}


def selection_values(columns: List[str], rows: np.ndarray, metric: str) -> np.ndarray:
    """PET's ``best_model_metric`` for each row of ``train.csv`` (metatrain's
    ``get_selected_metric`` on the validation columns: ``mae_prod`` multiplies
    every validation MAE, ``rmse_prod`` every RMSE, ``loss`` is the loss)."""
    if metric == "loss":
        if "validation loss" not in columns:
            return np.full(len(rows), np.nan)
        return rows[:, columns.index("validation loss")]
    word = "MAE" if metric == "mae_prod" else "RMSE"
    indices = [
        i for i, c in enumerate(columns) if c.startswith("validation ") and word in c
    ]
    if not indices:
        return np.full(len(rows), np.nan)
    return np.prod(rows[:, indices], axis=1)


def selected_epoch(
    columns: List[str], rows: np.ndarray, metric: str = "mae_prod"
) -> Optional[int]:
    """The logged epoch PET keeps as the best model: the first with the lowest
    ``metric`` (its comparison is strict)."""
    if "Epoch" not in columns or len(rows) == 0:
        return None
    values = selection_values(columns, rows, metric)
    if not np.any(np.isfinite(values)):
        return None
    best = int(np.nanargmin(values))
    return int(rows[best, columns.index("Epoch")])


_BEST = re.compile(r"Using best model from epoch (\d+)")


def logged_export_epoch(log: Path) -> Optional[int]:
    """The epoch metatrain names when it loads the final checkpoint, after
    "Training finished!" (the same words before training are about the pretrained
    checkpoint)."""
    if not log.is_file():
        return None
    text = log.read_text(errors="replace")
    _, finished, after = text.rpartition("Training finished!")
    if not finished:
        return None
    found = _BEST.findall(after)
    return int(found[0]) if found else None


# -------------------------------------------------------------- a run's whole history


@dataclass
class History:
    """The epochs of a run, across its restarts (oldest part first)."""

    columns: List[str]
    units: List[str]
    rows: np.ndarray
    folders: List[Path]
    """the outputs folders whose ``train.csv`` hold epochs, oldest first"""
    starts: List[int] = field(default_factory=list)
    """the first epoch each folder logged"""
    metric: str = "mae_prod"
    """the run's ``best_model_metric``"""
    exported: Optional[int] = None
    """the epoch whose weights the exported model holds"""
    exported_source: str = ""
    """how :attr:`exported` is known (``train.log`` or the rule on ``train.csv``)"""
    averaged: Optional[float] = None
    """the run's ``ema_decay`` (validation on averaged weights), ``None`` if off"""

    @property
    def epochs(self) -> np.ndarray:
        if "Epoch" in self.columns:
            return self.rows[:, self.columns.index("Epoch")].astype(int)
        return np.arange(len(self.rows))

    def exported_sentence(self) -> str:
        """Which epoch the exported model holds, and by which rule."""
        if self.exported is None:
            return ""
        words = METRIC_WORDS.get(self.metric, self.metric)
        last = int(self.epochs[-1]) if len(self.rows) else None
        which = "the last epoch, " if self.exported == last else ""
        return (
            f"The exported model holds the weights of {which}epoch {self.exported}: "
            f"the lowest `{self.metric}` ({words}), PET's `best_model_metric`"
            f" ({self.exported_source})."
        )


def read_history(run: Run) -> History:
    """The run's ``train.csv`` joined across its restarts, with the exported epoch.

    :raises ReportError: if no part of the run logged an epoch
    """
    folders = restart_chain(run.outputs, run.base)
    tables = []
    for folder in folders:
        path = folder / "train.csv"
        try:
            columns, units, rows = read_train_csv(path)
        except ReportError:
            if folder == run.outputs and not tables:
                raise
            continue
        if len(rows):
            tables.append((folder, columns, units, rows))
    if not tables:
        read_train_csv(run.train_csv)  # raises, naming the file
        raise ReportError(f"'{run.train_csv}' has no epoch rows")
    _, columns, units, _ = tables[-1]
    joined, starts, used = [], [], []
    for index, (folder, their_columns, _, rows) in enumerate(tables):
        epochs = (
            rows[:, their_columns.index("Epoch")] if "Epoch" in their_columns else None
        )
        if index + 1 < len(tables) and epochs is not None:
            next_columns, next_rows = tables[index + 1][1], tables[index + 1][3]
            if "Epoch" in next_columns:
                # a restart continues after its checkpoint's epoch: later rows of
                # the earlier part were trained again
                rows = rows[epochs < next_rows[0, next_columns.index("Epoch")]]
        if len(rows) == 0:
            continue
        aligned = np.full((len(rows), len(columns)), np.nan)
        for j, name in enumerate(columns):
            if name in their_columns:
                aligned[:, j] = rows[:, their_columns.index(name)]
        joined.append(aligned)
        used.append(folder)
        starts.append(
            int(aligned[0, columns.index("Epoch")]) if "Epoch" in columns else 0
        )
    rows = np.concatenate(joined)
    training = run.options.get("architecture", {}).get("training", {}) or {}
    metric = training.get("best_model_metric", "mae_prod")
    history = History(
        columns=columns,
        units=units,
        rows=rows,
        folders=used,
        starts=starts,
        metric=metric,
        averaged=training.get("ema_decay", 0.99),
    )
    logged = logged_export_epoch(run.train_log)
    if logged is not None:
        history.exported = logged
        history.exported_source = f'`train.log`: "Using best model from epoch {logged}"'
    else:
        history.exported = selected_epoch(columns, rows, metric)
        history.exported_source = "on the logged epochs of `train.csv`"
    return history
