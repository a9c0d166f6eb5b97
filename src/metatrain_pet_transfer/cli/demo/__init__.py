"""``mtt-transfer demo``: a complete transfer, on data shipped with the package.

A small PET pre-trained on GFN2-xTB (``data/pretrained_xtb.ckpt``, made by
``scripts/make_demo_checkpoint.py``) is transferred to PBE0/def2-SVP with a few dozen
labelled frames, through the path a user takes:

1. the data and an ``options.yaml`` are written into a new run folder;
2. ``mtt train`` with ``num_epochs: 0`` exports the zero-shot model (the pretrained
   model plus a per-element energy shift, see ``recipe/alignment.py``), in
   ``zero-shot/``;
3. ``mtt train options.yaml`` transfers the model (its log is streamed);
4. both models are evaluated on held-out PBE0 frames (before/after table);
5. the transferred model runs a short NVE simulation in ASE, selected as
   ``MetatomicCalculator("model.pt", variants={"energy": "pbe0"})``;
6. ``report/`` gets the parity plot, the learning curve and ``summary.md``
   (:mod:`metatrain_pet_transfer.cli.report`).

Nothing outside the run folder is written, and an existing non-empty folder is
never used: every run goes to a new folder.
"""

import argparse
import shutil
import sys
import time
from datetime import datetime
from pathlib import Path

from .. import report as run_report
from .md import one_thread, run_md
from .options import (
    CHECKPOINT,
    DEFAULT_EPOCHS,
    DEFAULT_MD_STEPS,
    DEMO_DATA,
    LEVEL_GAP_FORCES,
    OPTIONS_HEADER,
    TARGET,
    TEST_XYZ,
    TRAIN_XYZ,
    transfer_options,
    with_parent_paths,
    write_yaml,
)
from .training import run_mtt_train


def _step(number: int, total: int, text: str, start: float) -> None:
    print(f"\n[{number}/{total}] {text}  ({time.perf_counter() - start:.0f} s)")


def default_out() -> Path:
    return Path(f"pet-transfer-demo-{datetime.now():%Y%m%d-%H%M%S}")


def run_demo(
    out: Path, epochs: int, md_steps: int, verbose: bool = False
) -> run_report.Report:
    """The whole demo in ``out`` (created; it must not hold files yet)."""
    import ase.io

    start = time.perf_counter()
    total = 6
    _step(1, total, f"Run folder {out}: data and options.yaml", start)
    out.mkdir(parents=True, exist_ok=True)
    for name in (CHECKPOINT, TRAIN_XYZ, TEST_XYZ):
        shutil.copy(DEMO_DATA / name, out / name)
    options = transfer_options(epochs)
    write_yaml(out / "options.yaml", options, OPTIONS_HEADER.format(target=TARGET))
    train_frames = ase.io.read(out / TRAIN_XYZ, ":")
    test_frames = ase.io.read(out / TEST_XYZ, ":")
    print(
        f"  pretrained PET (GFN2-xTB): {CHECKPOINT}; PBE0/def2-SVP frames: "
        f"{len(train_frames)} for training ({TRAIN_XYZ}, 20% of them for "
        f"validation), {len(test_frames)} held out ({TEST_XYZ})"
    )

    _step(2, total, "Zero-shot model: pretrained + per-element shift", start)
    zero_shot = out / "zero-shot"
    zero_shot.mkdir()
    zero_options = with_parent_paths(options)
    zero_options["architecture"]["training"]["num_epochs"] = 0
    # the demo evaluates this model itself (step 4)
    zero_options["final_eval"] = False
    write_yaml(
        zero_shot / "options.yaml",
        zero_options,
        "# `num_epochs: 0`: exports the aligned start, the zero-shot model\n",
    )
    run_mtt_train(zero_shot, ["options.yaml", "-o", "model.pt"], verbose)

    _step(3, total, f"Transfer: mtt train options.yaml ({epochs} epochs)", start)
    run_mtt_train(out, ["options.yaml", "-o", "model.pt"], verbose)
    run = run_report.find_run(out)
    for line in run_report.overfitting(*run_report.read_train_csv(run.train_csv)):
        print(f"  {line.replace('**', '')}")

    _step(4, total, f"Before vs after on {len(test_frames)} held-out frames", start)
    targets, _ = run_report.energy_targets(run.options)
    structures = run_report.Structures(
        f"`{TEST_XYZ}` ({len(test_frames)} held-out PBE0/def2-SVP frames)",
        test_frames,
        {t.name: test_frames for t in targets},
    )
    with one_thread():
        comparisons = run_report.evaluate(
            zero_shot / "model.pt", structures, targets, "zero-shot"
        )
        comparisons += run_report.evaluate(
            out / "model.pt", structures, targets, "transferred"
        )
    print(_indent(run_report.metrics_table(comparisons)))
    print(
        f"  (GFN2-xTB itself is ~{LEVEL_GAP_FORCES} meV/Å MAE away from PBE0 "
        "forces on these geometries)"
    )

    _step(5, total, f"NVE molecular dynamics in ASE ({md_steps} steps)", start)
    with one_thread():
        md = run_md(out / "model.pt", test_frames, out, md_steps)
    print(
        f"  {md.molecule}: relaxed ({md.relaxation_steps} steps), velocities drawn at "
        f"{md.initial_temperature:.0f} K (NVE: about half goes into the vibrations' "
        f"potential energy); mean T {md.mean_temperature:.0f} K, total-energy drift "
        f"{md.drift:.3g} meV/atom/ps, max deviation {md.max_deviation:.3g} meV/atom"
    )

    _step(6, total, "Report", start)
    story = "\n".join(
        [
            "## What ran",
            "",
            f"1. `zero-shot/`: `mtt train` with `num_epochs: 0`: the pretrained PET "
            f"(GFN2-xTB) with a new `{TARGET}` head copied from its `energy` head and "
            "a per-element shift fitted on the training frames.",
            f"2. `mtt train options.yaml`: transfer to PBE0/def2-SVP on "
            f"{len(train_frames)} frames ({epochs} epochs, method `full`).",
            f"3. Both exported models evaluated on `{TEST_XYZ}` "
            f"({len(test_frames)} frames of the same 26 molecules, not trained on).",
            "",
            f"For scale: GFN2-xTB forces are ~{LEVEL_GAP_FORCES} meV/Å MAE away from "
            "PBE0 on these geometries; the transfer narrows that gap with "
            f"{len(train_frames)} frames, it does not close it.",
        ]
    )
    result = run_report.write_report(
        run,
        out / "report",
        comparisons,
        structures.description,
        intro=story,
        extra_sections=[md.markdown()],
        title="mtt-transfer demo: GFN2-xTB → PBE0/def2-SVP",
        training=run_report.Structures(
            f"training frames (`{TRAIN_XYZ}`)",
            train_frames,
            {t.name: train_frames for t in targets},
        ),
    )
    print(f"  parity plot:    {result.parity}")
    print(f"  learning curve: {result.learning_curve}")
    print(f"  summary:        {result.summary}")
    print(
        f"\nDone in {time.perf_counter() - start:.0f} s. Transferred model: "
        f"{out / 'model.pt'}; options to adapt: {out / 'options.yaml'}"
    )
    return result


def _indent(text: str) -> str:
    return "\n".join(f"  {line}" for line in text.splitlines())


# ------------------------------------------------------------------------------ CLI


def register(subparsers) -> None:
    """Add the ``demo`` subcommand to the ``mtt-transfer`` parser."""
    parser = subparsers.add_parser(
        "demo",
        help="transfer a small xTB-pretrained PET to PBE0 on shipped data, "
        "evaluate it, run MD and write a report",
        description="Transfer a small PET pre-trained on GFN2-xTB to PBE0/def2-SVP "
        "with data shipped in the package (`mtt train`, as a user runs it), compare "
        "the zero-shot and transferred models on held-out frames, run a short NVE "
        "simulation in ASE, and write a report (parity plot, learning curve, "
        "summary.md). About 1.5 minutes on 2 CPU cores.",
    )
    parser.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="new run folder (default: ./pet-transfer-demo-<date>-<time>); an "
        "existing folder must be empty",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        metavar="N",
        default=DEFAULT_EPOCHS,
        help=f"epochs of the transfer (default: {DEFAULT_EPOCHS})",
    )
    parser.add_argument(
        "--md-steps",
        type=int,
        metavar="N",
        default=DEFAULT_MD_STEPS,
        help=f"NVE steps of 0.5 fs (default: {DEFAULT_MD_STEPS})",
    )
    parser.add_argument(
        "--verbose", action="store_true", help="show the full training logs"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``mtt-transfer demo``; returns the exit code."""
    out = args.out if args.out is not None else default_out()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        print(
            f"mtt-transfer demo: '{out}' already exists and is not an empty folder; "
            "the demo never overwrites files: choose a new --out",
            file=sys.stderr,
        )
        return 2
    if args.epochs < 1 or args.md_steps < 1:
        print(
            "mtt-transfer demo: --epochs and --md-steps must be >= 1", file=sys.stderr
        )
        return 2
    missing = [
        n for n in (CHECKPOINT, TRAIN_XYZ, TEST_XYZ) if not (DEMO_DATA / n).is_file()
    ]
    if missing:
        print(
            f"mtt-transfer demo: the package's demo data is incomplete (missing "
            f"{', '.join(missing)} in {DEMO_DATA}); reinstall metatrain-pet-transfer",
            file=sys.stderr,
        )
        return 1
    try:
        run_demo(out, args.epochs, args.md_steps, args.verbose)
    except (RuntimeError, run_report.ReportError) as error:
        print(f"\nmtt-transfer demo: {error}", file=sys.stderr)
        return 1
    return 0
