"""The whole report: find the run, evaluate its models, draw, write ``summary.md``.

:func:`make_report` is what ``mtt-transfer report`` does; :func:`write_report` is the
part the demo reuses with models it evaluated itself.
"""

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from .baseline import energy_baseline
from .evaluation import Comparison, evaluate, metrics_table
from .history import (
    History,
    overfitting,
    read_history,
    zero_shot_lines,
    zero_shot_metrics,
)
from .labels import (
    Structures,
    energy_targets,
    report_structures,
    training_structures,
)
from .plots import plot_learning_curve, plot_parity
from .runs import ReportError, Run, find_run


#: what the report writes, in its output folder
PARITY_PNG, CURVE_PNG, SUMMARY_MD = "parity.png", "learning_curve.png", "summary.md"


# ------------------------------------------------------------------------ the report


@dataclass
class Report:
    """What :func:`write_report` wrote."""

    folder: Path
    run: Optional[Run] = None
    """the run reported on"""
    parity: Optional[Path] = None
    learning_curve: Optional[Path] = None
    summary: Optional[Path] = None
    comparisons: List[Comparison] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)
    caveat: str = ""
    """what the errors mean, when it is not plain"""


def write_report(
    run: Run,
    out: Path,
    comparisons: List[Comparison],
    structures_description: str,
    other_targets: Sequence[str] = (),
    extra_sections: Sequence[str] = (),
    title: str = "Transfer report",
    intro: str = "",
    training: Optional[Structures] = None,
    caveat: str = "",
) -> Report:
    """Write the plots and ``summary.md`` of a run into ``out``.

    :param intro: markdown placed before the errors
    :param training: the training structures and labels, for the parity plot's
        energy baseline (default: read from the run, :func:`.training_structures`)
    :param extra_sections: markdown sections appended at the end
    :param caveat: what the errors mean, printed under them (e.g. that the
        structures compared are the validation split, which chose the model)
    """
    out.mkdir(parents=True, exist_ok=True)
    if training is None and comparisons:
        training = training_structures(run)
    report = Report(folder=out, run=run, comparisons=comparisons, caveat=caveat)
    history: Optional[History] = None
    try:
        history = read_history(run)
    except ReportError as error:
        report.skipped.append(f"learning curve: {error}")
    # the zero-shot errors are those of the run's first part (a restart has none)
    first_log = history.folders[0] / "train.log" if history else run.train_log
    log_lines = zero_shot_lines(first_log)

    baselines = {
        target: energy_baseline(of_target[0].target, of_target, training)
        for target, of_target in _by_target(comparisons).items()
    }
    if comparisons:
        report.parity = plot_parity(comparisons, out / PARITY_PNG, baselines)
    if history is not None:
        try:
            report.learning_curve = plot_learning_curve(
                history, out / CURVE_PNG, zero_shot_metrics(log_lines)
            )
        except ReportError as error:
            report.skipped.append(f"learning curve: {error}")

    lines = [f"# {title}", ""]
    lines += [
        f"- run: `{run.outputs}`" + (f" ({run.choice})" if run.choice else ""),
        f"- model: `{run.model}`" if run.model else "- model: none found",
        f"- structures: {structures_description}",
        "",
    ]
    if intro:
        lines += [intro.rstrip(), ""]
    lines += ["## Errors", ""]
    if comparisons:
        lines += [metrics_table(comparisons, markdown=True), ""]
        if caveat:
            lines += [caveat, ""]
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
        ]
        for target, baseline in baselines.items():
            lines += [
                f"Parity, energy of {target}: per atom, minus {baseline.description}; "
                "the same for labels and predictions, so that molecules of different "
                "composition share one axis and the distance to the diagonal is the "
                "error per atom.",
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
        columns, units, rows = history.columns, history.units, history.rows
        lines += [_epochs_sentence(history), ""]
        lines += _last_epoch_table(columns, units, rows)
        exported = history.exported_sentence()
        flags = overfitting(columns, units, rows, exported)
        lines += [""] + [" ".join(flags) if flags else exported]
        lines += ["", f"![learning curve]({CURVE_PNG})", ""]
        lines += _kept_heads_drift(run, columns, units, rows)
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


def _by_target(comparisons: List[Comparison]) -> Dict[str, List[Comparison]]:
    grouped: Dict[str, List[Comparison]] = {}
    for comparison in comparisons:
        grouped.setdefault(comparison.target.name, []).append(comparison)
    return grouped


def _epochs_sentence(history: History) -> str:
    """How many epochs were logged, and in which ``train.csv`` (one per part of
    a run continued with ``--restart``)."""
    epochs = history.epochs
    text = f"{len(epochs)} logged epochs ({epochs[0]} to {epochs[-1]}"
    if len(history.folders) == 1:
        return text + ", `train.csv`)."
    parts = [
        f"`{folder.parent.name}/{folder.name}/train.csv` from epoch {start}"
        for folder, start in zip(history.folders, history.starts, strict=True)
    ]
    restarts = len(history.folders) - 1
    times = "once" if restarts == 1 else f"{restarts} times"
    return (
        f"{text}), a run continued {times} with `mtt train --restart`: "
        + "; ".join(parts)
        + "."
    )


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


_KEPT = re.compile(r"Keeping the pretrained head '([^']+)' valid")


def _kept_heads_drift(run: Run, columns, units, rows) -> List[str]:
    """``keep_pretrained_heads``: each kept head's validation errors against the
    pretrained model's predictions (its labels), i.e. the old level's drift, at the
    first and last logged epoch (``train.csv`` as read by the caller)."""
    if not run.train_log.is_file():
        return []
    kept = sorted(set(_KEPT.findall(run.train_log.read_text(errors="replace"))))
    if not kept:
        return []
    lines = [
        "### Old level kept (`keep_pretrained_heads`)",
        "",
        "The kept heads against the untouched pretrained model on the validation "
        "structures (their labels are its predictions): how far the old level "
        "drifted.",
        "",
        "| head | metric | first epoch | last epoch |",
        "|---|---|---|---|",
    ]
    for head in kept:
        forces = "forces" if head == "energy" else f"forces[{head}]"
        for metric in (f"{head} MAE (per atom)", f"{forces} MAE"):
            column = f"validation {metric}"
            if column not in columns:
                continue
            index = columns.index(column)
            values, unit = rows[:, index], units[index]
            lines.append(
                f"| {head} | {metric} | {values[0]:.4g} {unit} | "
                f"{values[-1]:.4g} {unit} |"
            )
    return lines + [""]


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
    description, caveat = "none", ""
    if targets:
        if run.model is None:
            raise ReportError(
                f"no exported model in '{run.outputs}' or '{run.base}' (expected "
                "'model.pt', written by `mtt train`): pass --model"
            )
        structures = report_structures(run, data)
        description, caveat = structures.description, structures.caveat
        if before is not None:
            comparisons += evaluate(Path(before), structures, targets, "before")
        comparisons += evaluate(
            run.model, structures, targets, "after" if before else "model"
        )
    return write_report(run, out, comparisons, description, others, caveat=caveat)
