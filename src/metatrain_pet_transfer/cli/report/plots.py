"""The report's figures: parity plots and the learning curve (PNG, matplotlib Agg).

Parity: one row per model, one column per quantity (energy, forces, stress); energies
are per atom minus a baseline (:mod:`.baseline`: per-element energies fitted on the
training labels), so that molecules of different composition share one axis. Axes
and errors share one unit (meV for eV labels); a few extreme points (rattled
frames) do not stretch an axis (:func:`axis_limits`), the title counts them.
Learning curve: training and validation errors per epoch from ``train.csv`` (across
restarts), epochs numbered as in ``train.log``, with the zero-shot validation error
before epoch 0 and the exported epoch marked.
"""

from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from .baseline import EnergyBaseline, energy_baseline
from .evaluation import Comparison, display_units, number
from .history import History
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
            else:
                x = getattr(comparison, f"{quantity}_ref")
                y = getattr(comparison, quantity)
            # the axes in the unit of the title's error (meV for eV labels)
            values[comparison.model] = (scale * x, scale * y, comparison)
        everything = np.concatenate([np.r_[x, y] for x, y, _ in values.values()])
        limits = axis_limits(everything)
        for row, model in enumerate(models):
            ax = axes[row, column]
            if model not in values:
                ax.set_visible(False)
                continue
            x, y, comparison = values[model]
            metrics = comparison.metrics()
            if quantity == "energy":
                what = "mean" if baseline.weights is None else "baseline"
                unit = energy_unit
                label = f"energy − {what} ({unit})"
            elif quantity == "forces":
                unit = force_unit
                label = f"force components ({unit})"
            else:
                unit = stress_unit
                label = f"stress components ({unit})"
            mae = scale * metrics[f"{quantity} MAE"]
            outside = int(
                np.sum(
                    (x < limits[0])
                    | (x > limits[1])
                    | (y < limits[0])
                    | (y > limits[1])
                )
            )
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
            # the error and the counts go in the title: a box inside the axes can
            # hide points
            title = f"{model}: {quantity}"
            if target != "energy":
                title += f" of {target}"
            count = f"{len(comparison.n_atoms)} structures"
            if quantity != "energy":
                count += f", {len(x)} components"
            if outside:
                count += f", {outside} outside the axes"
            ax.set_title(f"{title}\nMAE {number(mae)} {unit}\n{count}", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


#: the share of points a parity axis shows at least; the rest (rattled frames with
#: forces of tens of eV/Å) would squeeze every other point into the middle
ROBUST_SHARE = 0.995


def axis_limits(values: np.ndarray) -> tuple:
    """Limits of a parity axis: every value, unless a few stretch it more than
    twice the range of the central :data:`ROBUST_SHARE` of them; then that range
    (the points outside are counted in the title)."""
    values = values[np.isfinite(values)]
    low, high = np.min(values), np.max(values)
    tail = (1 - ROBUST_SHARE) / 2
    robust_low, robust_high = np.quantile(values, [tail, 1 - tail])
    if (high - low) > 2 * (robust_high - robust_low) > 0:
        low, high = robust_low, robust_high
    pad = 0.05 * (high - low or 1.0)
    return (low - pad, high + pad)


def plot_learning_curve(
    history: History, path: Path, zero_shot: Optional[Dict[str, float]] = None
) -> Path:
    """Training and validation metrics per epoch (MAE when logged, else RMSE), one
    panel per metric, epochs numbered as in ``train.log``; the zero-shot validation
    error before epoch 0, the exported epoch and the restarts marked."""
    plt = _matplotlib()
    from matplotlib.ticker import MaxNLocator

    columns, units, rows = history.columns, history.units, history.rows
    epochs = history.epochs
    metrics = [
        c[len("validation ") :]
        for c in columns
        if c.startswith("validation ") and c != "validation loss"
    ]
    if any("MAE" in m for m in metrics):
        metrics = [m for m in metrics if "MAE" in m]
    if not metrics:
        raise ReportError(f"'{history.folders[-1]}' has no validation metric columns")
    zero_shot = zero_shot or {}
    labels = {
        # PET accumulates the training errors over the epoch's steps, with the
        # weights of each step; validation runs after the epoch
        "training": "training (during the epoch's steps)",
        "validation": "validation (after the epoch)",
    }
    if history.averaged:
        labels["training"] = "training (raw weights, during the steps)"
        labels["validation"] = (
            f"validation (averaged weights, ema_decay {history.averaged:g})"
        )

    figure, axes = plt.subplots(
        1, len(metrics), figsize=(5.0 * len(metrics), 4.6), squeeze=False
    )
    for ax, metric in zip(axes[0], metrics, strict=True):
        unit = ""
        for split in ("training", "validation"):
            name = f"{split} {metric}"
            if name not in columns:
                continue
            index = columns.index(name)
            unit = units[index] or unit
            ax.plot(
                epochs,
                rows[:, index],
                "-",
                marker="o" if len(epochs) < 30 else None,
                ms=3,
                label=labels[split],
                color="tab:blue" if split == "training" else "tab:red",
            )
        if metric in zero_shot:
            ax.plot(
                [-1],
                [zero_shot[metric]],
                marker="*",
                ms=12,
                ls="none",
                color="black",
                label="zero-shot (validation, before epoch 0)",
            )
            ax.axhline(zero_shot[metric], color="0.5", ls="--", lw=1)
        for start in history.starts[1:]:
            ax.axvline(start - 0.5, color="0.4", ls=":", lw=1)
        if len(history.starts) > 1:
            ax.plot([], [], color="0.4", ls=":", lw=1, label="mtt train --restart")
        if history.exported is not None:
            ax.axvline(history.exported, color="tab:green", lw=1.5, alpha=0.7)
            ax.plot(
                [],
                [],
                color="tab:green",
                lw=1.5,
                label=f"exported: epoch {history.exported}",
            )
        ax.set_xlabel("epoch (numbered as in train.log)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
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
    # one legend under the panels: inside, it hides points
    handles, names = axes[0, 0].get_legend_handles_labels()
    figure.legend(handles, names, loc="lower center", ncol=3, fontsize=8)
    rows_of_legend = (len(names) + 2) // 3
    figure.tight_layout(rect=(0, 0.06 + 0.05 * rows_of_legend, 1, 1))
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


#: fewest labelled ticks a log axis gets
MIN_TICKS = 4


def _plain_log_axis(ax) -> None:
    """A log y axis labelled with plain numbers (``200``, not ``2 x 10^2``), with at
    least :data:`MIN_TICKS` labels however narrow its range."""
    from matplotlib.ticker import (
        FixedLocator,
        FuncFormatter,
        LogLocator,
        MaxNLocator,
        NullFormatter,
    )

    ax.set_yscale("log")
    low, high = ax.get_ylim()
    decades = np.log10(high / low)
    subs = (1.0, 2.0, 5.0) if decades > 1.2 else (1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.0)
    ticks = LogLocator(base=10, subs=subs).tick_values(low, high)
    ticks = ticks[(ticks >= low) & (ticks <= high)]
    if len(ticks) < MIN_TICKS:
        # less than a decade: evenly spaced round numbers
        ticks = MaxNLocator(nbins=6, steps=[1, 2, 2.5, 5, 10]).tick_values(low, high)
        ticks = ticks[(ticks >= low) & (ticks <= high) & (ticks > 0)]
    ax.yaxis.set_major_locator(FixedLocator(ticks))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_ylim(low, high)
