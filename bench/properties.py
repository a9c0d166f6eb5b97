"""New properties from an xTB-pretrained PET: dipoles, HOMO-LUMO gaps, charges.

One command regenerates a results folder from nothing, from a committed campaign spec
(``bench/campaigns/properties.yaml``: data, checkpoint, the accuracy campaign's
splits, rows at which N and seeds, the learning-rate search, the epoch rule)::

    python bench/properties.py --campaign bench/campaigns/properties.yaml \\
        --out bench/results/properties

Each property (``mtt::dipole``, a Cartesian vector per structure; ``mtt::gap``, a
scalar per structure; ``mtt::charges``, a scalar per atom) is trained alone, one
metatrain generic target per run, by the same rows: the training set's mean, PET from
scratch, native metatrain ``full`` and ``heads`` fine-tuning (learning rates searched
on the validation MAE of the property, with the energy campaign's 1-3-10 edge rule),
the plugin's defaults and its probe start (``num_epochs: 0``). Every trained row goes
through ``mtt train`` and ``mtt eval`` as subprocesses; the errors are computed here
from the predictions ``mtt eval`` writes and must agree with the MAE it prints. A
dipole model is also evaluated on rotated test molecules (its error under rotation).
The splits are the accuracy campaign's (``bench/results/accuracy/splits.json``), so
property and energy numbers share test frames and training sets. Resumable: the same
command again skips the runs already ``ok`` and retries the failed ones.

The machinery is the energy campaign's (``bench/transfer_campaign/``), reused by
import; what is particular to properties is in ``bench/property_campaign/``.
See bench/README.md.
"""

import argparse
import sys
from pathlib import Path


BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from property_campaign.running import rewrite_report, run_properties  # noqa: E402
from property_campaign.spec import ROW_NAMES, read_property_spec  # noqa: E402
from transfer_campaign.spec import add_campaign_options  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_campaign_options(parser)
    parser.add_argument(
        "--rows",
        default=None,
        help="run only these rows of the spec (comma-separated; the others are "
        "neither run nor removed from the results)",
    )
    parser.add_argument(
        "--report",
        action="store_true",
        help="rewrite results.md and the plots from results.csv, run nothing (safe "
        "while another process runs the campaign)",
    )
    args = parser.parse_args(argv)
    rows = None
    if args.rows is not None:
        rows = [row.strip() for row in args.rows.split(",") if row.strip()]
        unknown = [row for row in rows if row not in ROW_NAMES]
        if unknown:
            parser.error(f"--rows: unknown {unknown}; known: {', '.join(ROW_NAMES)}")
    settings = read_property_spec(args.campaign, args.out, args.runs, args.threads)
    return settings, rows, args.plan, max(1, args.jobs), args.report


def main(argv=None) -> int:
    settings, rows, plan_only, jobs, report_only = parse_args(argv)
    base = settings.base
    for path in (base.data, base.checkpoint):
        if not path.is_file():
            raise SystemExit(f"{base.spec}: {path}: no such file")
    import torch

    torch.set_num_threads(base.threads)  # the rotation check runs in this process
    if report_only:
        return rewrite_report(settings)
    return run_properties(settings, rows, plan_only, jobs)


if __name__ == "__main__":
    sys.exit(main())
