"""``mtt-transfer report``: plots and a summary of a finished ``mtt train`` run.

What a run folder must hold, and where each piece is looked for:

- the run itself: ``RUN_DIR`` is either the folder where ``mtt train`` ran (the newest
  ``outputs/<date>/<time>/`` whose ``train.csv`` logged epochs is used, and named) or
  such an outputs folder;
- ``train.csv`` (metatrain's per-epoch metrics) for the learning curve, and
  ``train.log`` for the zero-shot errors logged by the alignment start (optional);
- the options: ``options_restart.yaml`` of the outputs folder, else ``options.yaml``;
  relative data paths are resolved from the folder where ``mtt train`` ran;
- the exported model (``.pt``): the one of the outputs folder (``model.pt`` by
  default), or ``--model``;
- structures with labels for the parity plots: ``--data FILE`` (an ASE-readable file
  with the keys of the options), else the options' test set (a file, or the test
  indices metatrain saved for a fractional split), else the validation set.

The model is run through ``metatomic_ase.MetatomicCalculator`` (the path a simulation
takes), selecting each energy target the way ASE does: ``energy``, or the variant
``energy/<level>`` (:mod:`metatrain_pet_transfer.recipe.energy_levels`).
Energies, forces and stresses (for periodic structures) of every energy target are
compared with the labels; other targets are listed but not plotted. Labels are read
in ASE units (eV, Å).

Writes into ``RUN_DIR/report/`` (or ``--out``): ``parity.png``, ``learning_curve.png``
and ``summary.md``.
"""

import argparse
import sys
from pathlib import Path

from .evaluation import Comparison, evaluate, metrics_table
from .history import (
    overfitting,
    read_train_csv,
    zero_shot_lines,
    zero_shot_metrics,
)
from .labels import EnergyTarget, Structures, energy_targets, report_structures
from .plots import plot_learning_curve, plot_parity
from .runs import ReportError, Run, find_run
from .summary import (
    CURVE_PNG,
    PARITY_PNG,
    SUMMARY_MD,
    Report,
    make_report,
    write_report,
)


__all__ = [
    "CURVE_PNG",
    "PARITY_PNG",
    "SUMMARY_MD",
    "Comparison",
    "EnergyTarget",
    "Report",
    "ReportError",
    "Run",
    "Structures",
    "energy_targets",
    "evaluate",
    "find_run",
    "make_report",
    "metrics_table",
    "overfitting",
    "plot_learning_curve",
    "plot_parity",
    "read_train_csv",
    "register",
    "report_structures",
    "run",
    "write_report",
    "zero_shot_lines",
    "zero_shot_metrics",
]


def register(subparsers) -> None:
    """Add the ``report`` subcommand to the ``mtt-transfer`` parser."""
    parser = subparsers.add_parser(
        "report",
        help="parity plots, learning curve and summary of a finished run",
        description="Parity plots (energy, forces, stress where labelled), the "
        "learning curve and a markdown summary of a finished `mtt train` run, "
        "written to RUN_DIR/report/.",
        epilog="RUN_DIR is the folder where `mtt train` ran (its newest "
        "outputs/<date>/<time>/ that logged epochs is used) or such an outputs "
        "folder. Read from it: "
        "train.csv (learning curve), train.log (zero-shot errors, optional), "
        "options_restart.yaml or options.yaml (targets and data), the exported "
        "model (.pt). Structures compared: --data, else the options' test set "
        "(file or metatrain's indices/test.txt), else the validation set.",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", type=Path)
    parser.add_argument(
        "--data",
        type=Path,
        metavar="FILE",
        help="labelled structures (ASE-readable, keys of the options) to compare on; "
        "default: the run's test set, else its validation set",
    )
    parser.add_argument(
        "--model",
        type=Path,
        metavar="FILE",
        help="exported model (.pt); default: the run's",
    )
    parser.add_argument(
        "--before",
        type=Path,
        metavar="FILE",
        help="another exported model to compare with, e.g. the zero-shot model of a "
        "`num_epochs: 0` run",
    )
    parser.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="output folder (default: RUN_DIR/report)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``mtt-transfer report``; returns the exit code."""
    try:
        report = make_report(
            args.run_dir,
            out=args.out,
            data=args.data,
            model=args.model,
            before=args.before,
        )
    except ReportError as error:
        print(f"mtt-transfer report: {error}", file=sys.stderr)
        return 1
    print(
        f"run: {report.run.outputs}"
        + (f" ({report.run.choice})" if report.run.choice else "")
    )
    if report.comparisons:
        print(metrics_table(report.comparisons))
    if report.caveat:
        print(report.caveat)
    for path in (report.parity, report.learning_curve, report.summary):
        if path is not None:
            print(f"wrote {path}")
    for skipped in report.skipped:
        print(f"not written: {skipped}", file=sys.stderr)
    return 0
