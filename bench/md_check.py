"""The MD stability check (``mtt-transfer md``) of the keep campaign's models.

``bench/campaigns/keep.yaml`` trains, at N = 100 and seed 0, the models compared
here: the plugin's default, native ``full`` (lr 3e-4), the plugin's ``lora`` keeping
the old level, ``full`` + replay (ratios 0.5 and 0.25); plus the pretrained model
itself (its own xTB level). Each runs ``mtt-transfer md`` on the first test-split
frame of each of the 26 molecules at 1000 K and 1500 K (500 fs Langevin, then
100 fs NVE), one after the other (``--jobs`` at a time), and the table of intact
molecules, NVE drift, largest forces and temperatures reached is written to
``--out/results.md``.

    python bench/md_check.py --runs /tmp/bench_runs/keep --out bench/results/md
"""

import argparse
import csv
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


#: (row, folder under the campaign's runs, output variant)
MODELS = [
    ("pretrained (xTB level)", "zero-shot/*/pretrained.pt", None),
    ("plugin default", "plugin-default/N100_s0_lrdefault_e80/model.pt", "pbe0"),
    (
        "native full (lr 3e-4)",
        "native-full-lr3e-4/N100_s0_lrdefault_e80/model.pt",
        "pbe0",
    ),
    ("plugin lora + keep", "plugin-lora-keep/N100_s0_lrdefault_e80/model.pt", "pbe0"),
    (
        "plugin full + replay 0.5",
        "plugin-replay-0.5/N100_s0_lrdefault_e80/model.pt",
        "pbe0",
    ),
    (
        "plugin full + replay 0.25",
        "plugin-replay-0.25/N100_s0_lrdefault_e80/model.pt",
        "pbe0",
    ),
]


def run_one(runs: Path, out: Path, row: str, pattern: str, variant, args) -> Path:
    (model,) = sorted(runs.glob(pattern)) or [None]
    if model is None:
        raise SystemExit(f"no model for '{row}': {runs / pattern}")
    folder = out / row.split(" (")[0].replace(" ", "-").replace("+", "plus")
    if (folder / "results.csv").exists():
        return folder
    command = [
        str(Path(sys.executable).parent / "mtt-transfer"),
        "md",
        str(model),
        str(runs / "splits" / "test.xyz"),
        "--temperatures",
        *args.temperatures,
        "--time-fs",
        str(args.time_fs),
        "--out",
        str(folder),
    ]
    if variant:
        command += ["--variant", variant]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONWARNINGS="ignore")
    started = time.time()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{row}: {done.stderr[-2000:]}")
    print(
        f"{row}: {done.stdout.strip().splitlines()[0]} ({time.time() - started:.0f} s)"
    )
    return folder


def summarise(row: str, folder: Path, temperatures) -> str:
    with open(folder / "results.csv") as stream:
        records = list(csv.DictReader(stream))
    cells = []
    for t in temperatures:
        at = [r for r in records if float(r["temperature_K"]) == float(t)]
        intact = sum(r["intact"] == "True" for r in at)
        drift = statistics.median(abs(float(r["nve_drift_meV_atom_ps"])) for r in at)
        force = statistics.median(float(r["max_force_eV_A"]) for r in at)
        reached = statistics.median(float(r["reached_K"]) for r in at)
        broken = [r["structure"] for r in at if r["intact"] != "True"]
        cells.append(
            f"{intact}/{len(at)} | {drift:.2g} | {force:.1f} | {reached:.0f} | "
            f"{', '.join(broken) or '-'}"
        )
    return f"| {row} | " + " | ".join(cells) + " |"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=Path, default=Path("/tmp/bench_runs/keep"))
    parser.add_argument("--out", type=Path, default=Path("bench/results/md"))
    parser.add_argument("--temperatures", nargs="+", default=["1000", "1500"])
    parser.add_argument("--time-fs", type=float, default=500.0)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(args.jobs) as pool:
        folders = list(
            pool.map(lambda m: run_one(args.runs, args.out, *m, args=args), MODELS)
        )
    header = " | ".join(
        f"{t} K intact | NVE drift | max force | T reached | not intact"
        for t in args.temperatures
    )
    lines = [
        "# MD stability check of the keep campaign's models",
        "",
        f"Written by `python bench/md_check.py --runs {args.runs} --out {args.out}`. "
        "`mtt-transfer md` on the first test-split frame of each molecule "
        f"(`pbe0.xyz`, N = 100, seed 0 models of `bench/campaigns/keep.yaml`): "
        f"Langevin {args.time_fs:g} fs at 0.5 fs (friction 0.01/fs), then 100 fs "
        "NVE. Intact: no bond lost or formed and no atom gone for >= 150 fs. "
        "NVE drift: median |slope| (meV/atom/ps); max force: median over molecules "
        "of the largest force met (eV/Å); T reached: median (K). Each model's own "
        "summary.md is in its folder.",
        "",
        f"| model | {header} |",
        "|---|" + "---|" * (5 * len(args.temperatures)),
        *[
            summarise(model[0], folder, args.temperatures)
            for model, folder in zip(MODELS, folders, strict=True)
        ],
    ]
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[-len(MODELS) - 2 :]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
