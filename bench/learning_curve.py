"""Transfer from GFN2-xTB to PBE0: ``pet_transfer`` side by side with native metatrain.

Every trained row goes through the path a user takes: an ``options.yaml`` written into
a run folder, ``mtt train`` and ``mtt eval`` as subprocesses. The errors are computed
here from the predictions ``mtt eval`` writes, so every row is scored by the same code
on the same frames, whatever the architecture logs.

- Splits are fixed and seeded: a test and a validation split stratified by molecule,
  and nested training subsets (the N=25 set is inside the N=50 set) drawn round-robin
  over molecules, so that small sets still cover as many molecules as possible.
- Rows that search the learning rate are scored on the validation split; the test
  error is reported for the selected learning rate only (all runs stay in the CSV).
- ``zero-shot`` trains nothing: the pretrained model plus a per-element energy shift
  fitted on the N training frames.
- Resumable: runs already in ``<out>/results.csv`` with status ``ok`` are skipped.

Usage (see bench/README.md)::

    python bench/learning_curve.py --rows zero-shot,native-full --n 100 --seeds 0 \\
        --out bench/results/pbe0_n100 --runs /tmp/bench_runs/pbe0_n100
    python bench/learning_curve.py --tiny --data tests/data/pbe0_small.xyz \\
        --checkpoint some.ckpt --out /tmp/smoke --rows native-full,zero-shot
"""

import argparse
import sys
from dataclasses import replace
from pathlib import Path


# the campaign itself lives in bench/transfer_campaign/; this file is its command
# line, run as a script or loaded from its path (tests/test_bench_smoke.py)
BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from transfer_campaign.planning import planned_runs, runs_of_row  # noqa: E402
from transfer_campaign.running import run_campaign  # noqa: E402
from transfer_campaign.settings import (  # noqa: E402
    DEFAULT_CHECKPOINT,
    DEFAULT_DATA,
    REPO,
    ROWS,
    Pretrained,
    Row,
    Run,
    Settings,
    read_pretrained,
)
from transfer_campaign.splits import Campaign, make_splits, prepare  # noqa: E402
from transfer_campaign.tables import COLUMNS, load_results  # noqa: E402


#: what tests and other scripts reach through this module, as before the split
__all__ = [
    "COLUMNS",
    "ROWS",
    "Campaign",
    "Pretrained",
    "Row",
    "Run",
    "Settings",
    "load_results",
    "main",
    "make_splits",
    "parse_args",
    "planned_runs",
    "prepare",
    "read_pretrained",
    "run_campaign",
    "runs_of_row",
    "tiny",
]


def parse_args(argv=None) -> tuple:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=DEFAULT_DATA,
        help="extended xyz with energy_pbe0/forces_pbe0 and a `mol` tag",
    )
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=DEFAULT_CHECKPOINT,
        help="the pretrained PET checkpoint (.ckpt)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO / "bench" / "results" / "pbe0",
        help="small results: CSV, markdown, PNG, splits.json",
    )
    parser.add_argument(
        "--runs",
        type=Path,
        default=None,
        help="heavy run folders (default /tmp/bench_runs/<out name>)",
    )
    parser.add_argument(
        "--rows",
        default=",".join(ROWS),
        help=f"comma-separated, from: {', '.join(ROWS)}",
    )
    parser.add_argument(
        "--n",
        default="25,50,100,200,all",
        help="training set sizes; `all` is the whole training pool",
    )
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--epochs", type=int, default=80, help="fine-tuning rows")
    parser.add_argument("--scratch-epochs", type=int, default=200)
    parser.add_argument(
        "--half-epochs-from",
        type=int,
        default=None,
        help="halve every row's epochs for N at or above this size",
    )
    parser.add_argument(
        "--lrs",
        default="1e-4,3e-4,1e-3",
        help="learning rates searched by the fine-tuning rows",
    )
    parser.add_argument(
        "--lr-from",
        type=int,
        default=None,
        help="search --lrs at this N only; other N reuse each row's selected lr",
    )
    parser.add_argument(
        "--scratch-lr",
        type=float,
        default=None,
        help="default: the checkpoint's pre-training learning rate",
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--test-fraction", type=float, default=0.25)
    parser.add_argument("--val-fraction", type=float, default=0.10)
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS")
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="smoke test: 2 epochs, N=10, one lr, tiny splits",
    )
    parser.add_argument(
        "--plan", action="store_true", help="list the runs still to do, and stop"
    )
    args = parser.parse_args(argv)

    unknown = [r for r in args.rows.split(",") if r not in ROWS]
    if unknown:
        parser.error(f"--rows: unknown {unknown}; known rows: {', '.join(ROWS)}")
    out = args.out.resolve()
    settings = Settings(
        data=args.data.resolve(),
        checkpoint=args.checkpoint.resolve(),
        out=out,
        runs=(args.runs or Path("/tmp/bench_runs") / out.name).resolve(),
        rows=args.rows.split(","),
        ns=args.n.split(","),
        seeds=[int(s) for s in args.seeds.split(",")],
        epochs=args.epochs,
        scratch_epochs=args.scratch_epochs,
        half_epochs_from=args.half_epochs_from,
        lrs=[float(lr) for lr in args.lrs.split(",")],
        lr_from=args.lr_from,
        scratch_lr=args.scratch_lr,
        batch_size=args.batch_size,
        test_fraction=args.test_fraction,
        val_fraction=args.val_fraction,
        split_seed=args.split_seed,
        threads=args.threads,
        mtt=Path(sys.executable).parent / "mtt",
    )
    if args.tiny:
        settings = tiny(settings)
    return settings, args.plan


def tiny(settings: Settings) -> Settings:
    """Smoke-test sizes: a few frames per split, 2 epochs, one learning rate."""
    import ase.io

    n_frames = len(ase.io.read(settings.data, ":"))
    return replace(
        settings,
        ns=["10"],
        epochs=2,
        scratch_epochs=2,
        lrs=[1e-3],
        test_fraction=min(settings.test_fraction, 8 / n_frames),
        val_fraction=min(settings.val_fraction, 4 / n_frames),
    )


def main(argv=None) -> int:
    settings, plan_only = parse_args(argv)
    for path in (settings.data, settings.checkpoint):
        if not path.is_file():
            raise SystemExit(f"{path}: no such file")
    return run_campaign(settings, plan_only)


if __name__ == "__main__":
    sys.exit(main())
