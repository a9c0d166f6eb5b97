"""``mtt-transfer md``: is an exported model stable in molecular dynamics?

Test errors say how close a model is to its labels where there are labels; MD goes
where there are none. This check runs short NVT simulations of given molecules at
given temperatures with an exported model (all of them at once, :mod:`.dynamics`),
then a short NVE continuation, and reports per molecule and temperature the bonds
lost or formed against the starting topology and the atoms that left (each lasting
>= 150 fs), the temperature reached, the largest force and the NVE energy drift
(:mod:`.check`). Writes ``summary.md`` and ``results.csv`` into ``--out``.

    mtt-transfer md model.pt frames.xyz --variant pbe0 --temperatures 1000 1500
"""

import argparse
import csv
import sys
from pathlib import Path

from .check import CheckResult, Settings, run_check


class MDCheckError(ValueError):
    """The check cannot run as asked."""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "md",
        help="MD stability check of an exported model on many molecules",
        description="Short Langevin NVT runs (all structures at once), then NVE, "
        "with an exported model: bonds lost or formed and atoms leaving (lasting "
        ">= --min-change-fs), temperature reached, largest force, NVE energy drift, "
        "per structure and temperature. Molecules only (no periodic cells).",
    )
    parser.add_argument(
        "model", metavar="MODEL", type=Path, help="exported model (.pt)"
    )
    parser.add_argument(
        "structures",
        metavar="STRUCTURES",
        type=Path,
        help="starting geometries (ASE-readable, e.g. extxyz)",
    )
    parser.add_argument(
        "--variant",
        metavar="NAME",
        help="energy variant to run, as ASE's variants={'energy': NAME} (the output "
        "energy/NAME); default: 'energy', else the model's only energy output",
    )
    parser.add_argument(
        "--temperatures",
        type=float,
        nargs="+",
        default=[1000.0, 1500.0],
        metavar="K",
        help="thermostat temperatures (default: 1000 1500)",
    )
    parser.add_argument("--time-fs", type=float, default=500.0, help="NVT length (500)")
    parser.add_argument("--timestep-fs", type=float, default=0.5, help="(0.5)")
    parser.add_argument(
        "--friction", type=float, default=0.01, help="Langevin friction, 1/fs (0.01)"
    )
    parser.add_argument(
        "--nve-fs", type=float, default=100.0, help="NVE continuation length (100)"
    )
    parser.add_argument(
        "--min-change-fs",
        type=float,
        default=150.0,
        help="how long a bond change or a lone atom must last to count (150)",
    )
    parser.add_argument(
        "--one-per",
        default="mol",
        metavar="KEY",
        help="take the first structure of each value of atoms.info[KEY] (default "
        "'mol'); 'none' or a key the file lacks: every structure",
    )
    parser.add_argument("--seed", type=int, default=0, help="velocities and noise (0)")
    parser.add_argument(
        "--out", type=Path, default=Path("md-check"), help="output folder (md-check)"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        result = check(args)
    except MDCheckError as error:
        print(f"mtt-transfer md: {error}", file=sys.stderr)
        return 1
    print(table(result))
    print(f"wrote {args.out / 'summary.md'} and {args.out / 'results.csv'}")
    return 0


def check(args: argparse.Namespace) -> CheckResult:
    for path, what in [(args.model, "MODEL"), (args.structures, "STRUCTURES")]:
        if not path.is_file():
            raise MDCheckError(f"{what} '{path}' does not exist")
    if any(t <= 0 for t in args.temperatures):
        raise MDCheckError("--temperatures must be > 0 K")
    if args.time_fs <= 0 or args.timestep_fs <= 0 or args.nve_fs < 0:
        raise MDCheckError("--time-fs and --timestep-fs must be > 0, --nve-fs >= 0")
    summary, table_csv = args.out / "summary.md", args.out / "results.csv"
    for path in (summary, table_csv):
        if path.exists():
            raise MDCheckError(
                f"'{path}' exists: give another --out, or move it away (it is never "
                "overwritten)"
            )
    frames, names = read_structures(args.structures, args.one_per)
    output = energy_output(args.model, args.variant)
    settings = Settings(
        temperatures=list(args.temperatures),
        time_fs=args.time_fs,
        timestep_fs=args.timestep_fs,
        friction=args.friction,
        nve_fs=args.nve_fs,
        min_change_fs=args.min_change_fs,
        seed=args.seed,
    )
    result = run_check(str(args.model), output, frames, names, settings)
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(result, table_csv)
    summary.write_text(markdown(result))
    return result


def read_structures(path: Path, one_per: str):
    import ase.io

    try:
        frames = ase.io.read(path, ":")
    except Exception as error:
        raise MDCheckError(f"STRUCTURES '{path}' cannot be read: {error}") from error
    if not frames:
        raise MDCheckError(f"STRUCTURES '{path}' holds no structure")
    periodic = [i for i, atoms in enumerate(frames) if atoms.pbc.any()]
    if periodic:
        raise MDCheckError(
            f"STRUCTURES '{path}': structure {periodic[0]} is periodic; this check "
            "runs molecules only"
        )
    if one_per != "none" and all(one_per in atoms.info for atoms in frames):
        chosen = {}
        for atoms in frames:
            chosen.setdefault(str(atoms.info[one_per]), atoms)
        return list(chosen.values()), list(chosen)
    names = [f"{atoms.get_chemical_formula()}#{i}" for i, atoms in enumerate(frames)]
    return frames, names


def energy_output(model: Path, variant) -> str:
    """The output ASE would run: ``energy/<variant>``, else ``energy``, else the
    model's only energy output."""
    from metatomic.torch import load_atomistic_model

    outputs = load_atomistic_model(str(model)).capabilities().outputs
    energies = [n for n in outputs if n == "energy" or n.startswith("energy/")]
    if variant is not None:
        name = f"energy/{variant}"
        if name not in outputs:
            raise MDCheckError(
                f"--variant {variant}: the model has no output '{name}' (its energy "
                f"outputs: {', '.join(energies) or 'none'})"
            )
        return name
    if "energy" in outputs:
        return "energy"
    if len(energies) == 1:
        return energies[0]
    raise MDCheckError(
        f"MODEL '{model}' has no 'energy' output; choose one with --variant (its "
        f"energy outputs: {', '.join(energies) or 'none'})"
    )


def _changes(row) -> str:
    if row.exploded_fs is not None:
        return f"exploded at {row.exploded_fs:.0f} fs"
    parts = []
    for label, items in [
        ("lost", row.lost),
        ("formed", row.formed),
        ("left", row.left),
    ]:
        if items:
            parts.append(f"{label} {', '.join(items)}")
    return "; ".join(parts) or "intact"


def table(result: CheckResult) -> str:
    temperatures = result.settings.temperatures
    lines = [
        f"{result.model} ({result.output}): intact "
        + ", ".join(f"{result.intact(t)} at {t:g} K" for t in temperatures)
        + f" ({result.wall_s:.0f} s)"
    ]
    for row in result.structures:
        if not row.intact:
            lines.append(f"  {row.name} at {row.temperature:g} K: {_changes(row)}")
    return "\n".join(lines)


def markdown(result: CheckResult) -> str:
    s = result.settings
    head = [
        "# MD stability check",
        "",
        f"Model `{result.model}`, output `{result.output}`; {len(result.structures)} "
        f"runs ({len(result.structures) // len(s.temperatures)} structures x "
        f"{len(s.temperatures)} temperatures), Langevin NVT (BAOAB, friction "
        f"{s.friction:g}/fs) for {s.time_fs:g} fs at {s.timestep_fs:g} fs steps, then "
        f"{s.nve_fs:g} fs NVE; seed {s.seed}; {result.wall_s:.0f} s.",
        "",
        "Changes of the starting topology count when they last >= "
        f"{s.min_change_fs:g} fs (bond: closer than 1.3 x the sum of covalent radii; "
        "an atom left: no neighbour within 3 Å). T reached: mean over the second "
        "half of the NVT part. Drift: slope of the NVE total energy.",
        "",
        "| T (K) | intact |",
        "|---|---|",
        *[f"| {t:g} | {result.intact(t)} |" for t in s.temperatures],
        "",
        "| structure | atoms | T (K) | T reached (K) | max force (eV/Å) | NVE drift "
        "(meV/atom/ps) | NVE max deviation (meV/atom) | topology |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rows = [
        f"| {r.name} | {r.n_atoms} | {r.temperature:g} | {r.reached:.0f} | "
        f"{r.max_force:.2f} | {r.drift:.3g} | {r.deviation:.3g} | {_changes(r)} |"
        for r in result.structures
    ]
    return "\n".join(head + rows) + "\n"


COLUMNS = (
    "structure n_atoms temperature_K reached_K max_force_eV_A nve_drift_meV_atom_ps "
    "nve_max_deviation_meV_atom bonds_lost bonds_formed atoms_left exploded_fs intact"
).split()


def write_csv(result: CheckResult, path: Path) -> None:
    with open(path, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(COLUMNS)
        for r in result.structures:
            writer.writerow(
                [
                    r.name,
                    r.n_atoms,
                    r.temperature,
                    f"{r.reached:.1f}",
                    f"{r.max_force:.4f}",
                    f"{r.drift:.4g}",
                    f"{r.deviation:.4g}",
                    " ".join(r.lost),
                    " ".join(r.formed),
                    " ".join(r.left),
                    "" if r.exploded_fs is None else r.exploded_fs,
                    r.intact,
                ]
            )
