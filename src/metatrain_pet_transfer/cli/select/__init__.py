"""``mtt-transfer select``: which structures of a pool to label at the new level.

Computing new-level labels is the expensive part of a transfer (a PBE0 frame costs
seconds to minutes, a CCSD(T) frame hours), and users hold many more unlabelled
structures (an MD run with the pretrained model, a set of candidates) than they can
afford to label. This command reads the pool, runs the pretrained PET once over it
(geometry only: labels in the pool are never read), chooses ``-n`` structures with
one of the rules of :mod:`.methods`, and writes them, with every entry of the input
kept, to a new file. ``--exclude`` names structures already labelled or kept for
validation: they count as chosen, so the selection complements them.
"""

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

from ...checkpoints import CheckpointError
from .methods import METHODS, select
from .structures import (
    SelectionError,
    check_output,
    geometry_only,
    label_entries,
    match,
    read_structures,
    write_new_file,
)


def register(subparsers) -> None:
    """Add the ``select`` subcommand to the ``mtt-transfer`` parser."""
    parser = subparsers.add_parser(
        "select",
        help="choose which structures of a pool to label, with the pretrained model",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("checkpoint", type=Path, help="the pretrained PET (.ckpt)")
    parser.add_argument(
        "pool", type=Path, help="unlabelled candidates (any ASE-readable file)"
    )
    parser.add_argument(
        "-n", type=int, required=True, help="how many structures to choose"
    )
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        help="extended XYZ file for the chosen structures (must not exist)",
    )
    parser.add_argument(
        "--method",
        choices=list(METHODS),
        default="mix",
        help="mix: spread over the pool's feature space, weighted by density "
        "(outliers late); fps: farthest-point sampling (outliers first); "
        "uncertainty: largest LLPR variance of the energy head (default: mix)",
    )
    parser.add_argument(
        "--exclude",
        type=Path,
        action="append",
        default=[],
        help="structures already labelled or kept for validation: never chosen, "
        "and counted as covered (may be repeated)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="same seed, same selection (default 0)"
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=64,
        help="structures per forward pass of the model (default 64)",
    )
    parser.add_argument(
        "--device",
        default=None,
        help="where the model runs: cpu, cuda, cuda:1, ... (default: cuda when "
        "available, else cpu)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``mtt-transfer select``; returns the exit code."""
    try:
        return _select(args)
    except (SelectionError, CheckpointError) as error:
        print(f"mtt-transfer select: {error}", file=sys.stderr)
        return 2


def _select(args: argparse.Namespace) -> int:
    from .features import (
        choose_device,
        compute_descriptors,
        load_pretrained,
        unsupported_types,
    )

    # every check on the inputs comes before the model runs
    check_output(args.output)
    if args.n < 1:
        raise SelectionError(f"-n must be at least 1 (got {args.n})")
    if args.batch_size < 1:
        raise SelectionError(f"--batch-size must be at least 1 (got {args.batch_size})")
    pool = read_structures(args.pool, "pool")
    excluded = []
    for path in args.exclude:
        excluded += read_structures(path, "--exclude")
    in_pool = match(pool, excluded)
    candidates = np.array(
        [i for i in range(len(pool)) if i not in set(in_pool.values())], dtype=int
    )
    if args.n > len(candidates):
        raise SelectionError(
            f"-n {args.n}: the pool '{args.pool}' has only {len(candidates)} "
            f"structures to choose from ({len(pool)} read, "
            f"{len(pool) - len(candidates)} of them excluded)"
        )
    device = choose_device(args.device)
    model, target = load_pretrained(args.checkpoint)
    model.to(device)
    for path, frames in [(args.pool, pool), *[(p, excluded) for p in args.exclude]]:
        unknown = unsupported_types(model, frames)
        if unknown:
            known = sorted(int(t) for t in model.atomic_types)
            raise SelectionError(
                f"'{path}' has {_elements(unknown)} (atomic numbers {unknown}), "
                f"which the checkpoint was not trained on (it knows "
                f"{_elements(known)}): its features of these atoms mean nothing. "
                "A transfer (`mtt train`) extends the model to new elements"
            )

    ignored = label_entries(pool)
    print(
        f"pool: {len(pool)} structures from {args.pool}"
        + (f" (ignored, never read: {', '.join(ignored)})" if ignored else "")
    )
    if args.exclude:
        print(
            f"excluded: {len(excluded)} structures from "
            f"{', '.join(map(str, args.exclude))}, {len(set(in_pool.values()))} "
            "of them in the pool; all count as already covered"
        )
    # only the pool structures the selection may pick, plus the excluded ones
    frames = geometry_only([pool[i] for i in candidates] + excluded)
    start = time.perf_counter()
    descriptors = compute_descriptors(model, target, frames, args.batch_size)
    seconds = time.perf_counter() - start
    print(
        f"features: {len(frames)} structures through the pretrained model "
        f"({args.checkpoint.name}, target '{target}', on {device}) in {seconds:.1f} s "
        f"({len(frames) / max(seconds, 1e-9):.0f} structures/s)"
    )
    start = time.perf_counter()
    chosen = select(
        descriptors,
        pool=np.arange(len(candidates)),
        covered=np.arange(len(candidates), len(frames)),
        n=args.n,
        method=args.method,
        seed=args.seed,
    )
    picked = [int(candidates[i]) for i in chosen]
    print(
        f"selection: {args.n} of {len(candidates)} candidates with '{args.method}' "
        f"(seed {args.seed}) in {time.perf_counter() - start:.1f} s; "
        f"{_composition_summary([pool[i] for i in picked], pool)}"
    )
    write_new_file(args.output, [pool[i] for i in picked])
    print(
        f"wrote {args.output}: {args.n} structures in the order chosen (the first "
        "k are what -n k would choose), every info/arrays entry of the pool kept"
    )
    return 0


def _composition_summary(chosen, pool) -> str:
    """How many of the pool's chemical formulas the selection covers."""
    pool_formulas = Counter(atoms.get_chemical_formula() for atoms in pool)
    chosen_formulas = Counter(atoms.get_chemical_formula() for atoms in chosen)
    return (
        f"{len(chosen_formulas)} of the pool's {len(pool_formulas)} chemical "
        "formulas covered"
    )


def _elements(numbers) -> str:
    """``[7, 16]`` -> ``N, S``."""
    from ase.data import chemical_symbols

    return ", ".join(chemical_symbols[int(z)] for z in numbers)
