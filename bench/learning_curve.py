"""Transfer from GFN2-xTB to PBE0: ``pet_transfer`` side by side with native metatrain.

One command regenerates a results folder from nothing, from a committed campaign spec
(``bench/campaigns/*.yaml``: data, checkpoint, splits, rows at which N and seeds, the
learning-rate search and its edge rule, the epoch rule)::

    python bench/learning_curve.py --campaign bench/campaigns/accuracy.yaml \\
        --out bench/results/accuracy

Results folders are written by this command only. Every trained row goes through the
path a user takes: an ``options.yaml`` written into a run folder, ``mtt train`` and
``mtt eval`` as subprocesses. The errors are computed here from the predictions
``mtt eval`` writes, so every row is scored by the same code on the same frames, and
they must agree with the MAEs ``mtt eval`` prints.

- Splits are fixed and seeded: a test and a validation split stratified by molecule,
  and nested training subsets (the N=25 set is inside the N=50 set) drawn round-robin
  over molecules, so that small sets still cover as many molecules as possible.
- Rows that search the learning rate train the spec's grid at one (N, seed), one step
  further along the 1-3-10 ladder while the best validation error is at an edge, and
  use the selected value everywhere else; the test error is reported for the
  selected learning rate only (all runs stay in the CSV).
- ``zero-shot`` trains nothing: the pretrained model plus a per-element energy shift
  fitted on the N training frames.
- A run that fails, or whose scores disagree with ``mtt eval``'s, stops the campaign
  (exit status 1, the run folder named). Resumable: the same command again skips the
  runs already ``ok`` in ``<out>/results.csv`` and retries the failed ones.

See bench/README.md.
"""

import argparse
import sys
from pathlib import Path


# the campaign itself lives in bench/transfer_campaign/; this file is its command
# line, run as a script or loaded from its path (tests/test_bench_smoke.py)
BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from transfer_campaign.campaign import run_campaign  # noqa: E402
from transfer_campaign.planning import planned_runs, runs_of_row, search  # noqa: E402
from transfer_campaign.running import CampaignStopped  # noqa: E402
from transfer_campaign.scoring import (  # noqa: E402
    CrossCheckError,
    cross_check,
    deviations,
    errors,
    split_metrics,
)
from transfer_campaign.settings import (  # noqa: E402
    ROWS,
    Pretrained,
    Row,
    Run,
    Settings,
    read_pretrained,
)
from transfer_campaign.spec import (  # noqa: E402
    SpecError,
    add_campaign_options,
    ladder_step,
    read_spec,
)
from transfer_campaign.splits import Campaign, make_splits, prepare  # noqa: E402
from transfer_campaign.tables import COLUMNS, load_results  # noqa: E402


#: what tests and other scripts reach through this module
__all__ = [
    "COLUMNS",
    "ROWS",
    "Campaign",
    "CampaignStopped",
    "CrossCheckError",
    "Pretrained",
    "Row",
    "Run",
    "Settings",
    "SpecError",
    "cross_check",
    "deviations",
    "errors",
    "ladder_step",
    "load_results",
    "main",
    "make_splits",
    "parse_args",
    "planned_runs",
    "prepare",
    "read_pretrained",
    "read_spec",
    "run_campaign",
    "runs_of_row",
    "search",
    "split_metrics",
]


def parse_args(argv=None) -> tuple:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_campaign_options(parser)
    args = parser.parse_args(argv)
    settings = read_spec(args.campaign, args.out, args.runs, args.threads)
    return settings, args.plan, max(1, args.jobs)


def main(argv=None) -> int:
    settings, plan_only, jobs = parse_args(argv)
    for path in (settings.data, settings.checkpoint):
        if not path.is_file():
            raise SystemExit(f"{settings.spec}: {path}: no such file")
    return run_campaign(settings, plan_only, jobs)


if __name__ == "__main__":
    sys.exit(main())
