"""The report's figures: parity plots and the learning curve (PNG, matplotlib Agg).

Parity: one row per model, one column per quantity (energy, forces, stress); energies
are per atom minus a baseline (:mod:`.baseline`: per-element energies fitted on the
training labels), so that molecules of different composition share one axis.
Learning curve: training and validation errors per epoch from ``train.csv``, with
the zero-shot validation error at epoch 0.
"""

from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from .baseline import EnergyBaseline, energy_baseline
from .evaluation import Comparison, display_units
from .history import read_train_csv
from .runs import ReportError


# ----------------------------------------------------------------------------- plots


def _matplotlib():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_parity(
    comparisons: List[Comparison],
    path: Path,
    baselines: Optional[Dict[str, EnergyBaseline]] = None,
) -> Path:
    """One row per model, one column per quantity (energy, forces, stress).

    :param baselines: per target, what the energy panel subtracts (default: chosen
        from the plotted structures alone, :func:`.baseline.energy_baseline`)
    """
    baselines = baselines or {}
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
        scale, energy_unit, force_unit, stress_unit = display_units(of_target[0].target)
        baseline = None
        if quantity == "energy":
            baseline = baselines.get(target) or energy_baseline(
                of_target[0].target, of_target
            )
        values = {}
        for comparison in of_target:
            if quantity == "energy":
                offsets = baseline.offsets(comparison)
                x = (comparison.energy_ref - offsets) / comparison.n_atoms
                y = (comparison.energy - offsets) / comparison.n_atoms
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
                what = "mean" if baseline.weights is None else "baseline"
                label = f"energy − {what} ({energy_unit})"
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
