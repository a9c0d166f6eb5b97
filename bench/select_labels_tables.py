"""The tables of ``select_labels.py``: its results CSV, the learning curve's random
draws beside it, and the markdown table with the 50-selected vs 100-random verdict.

Kept apart from the runs so that ``select_labels.py --report`` and the runs share one
reading of the CSV.
"""

import csv
import os
import statistics
from pathlib import Path
from typing import Dict, List


REPO = Path(__file__).resolve().parents[1]
METHODS = ("mix", "fps", "uncertainty")
COLUMNS = (
    "method N seed train_seed sigma01_frames rattled_frames molecules "
    "test_energy_mae_meV_atom test_force_mae_meV_A test_force_mae_md_meV_A "
    "test_force_mae_rattled_meV_A select_s train_s status error"
).split()


LEARNING_CURVE = REPO / "bench" / "results" / "accuracy" / "results.csv"
#: the learning curve's row trained as the selections here are (the plugin's
#: default before the training strategies: MSE loss, no weight averaging)
LC_ROW = "plugin-v1"
#: the name under which the learning curve's runs appear in the table
LC_RANDOM = "random (learning curve)"


def learning_curve_random(bench, epochs: int) -> List[dict]:
    """The learning curve's ``plugin-v1`` runs: the same configuration, split,
    random orders and seeds as ``random:N`` here, already measured (their per-frame
    predictions are not kept, so no MD/rattled split)."""
    records = []
    for r in load(LEARNING_CURVE):
        if (
            r["row"] == LC_ROW
            and r["status"] == "ok"
            and r["epochs"] == str(epochs)
            and r["N"] in ("25", "50", "100")
        ):
            indices = bench.orders[r["seed"]][: int(r["N"])]
            records.append(
                {
                    "method": LC_RANDOM,
                    "N": r["N"],
                    "seed": r["seed"],
                    "train_seed": r["seed"],
                    **bench.describe(indices),
                    "test_energy_mae_meV_atom": r["test_energy_mae_meV_atom"],
                    "test_force_mae_meV_A": r["test_force_mae_meV_A"],
                    "test_force_mae_md_meV_A": "",
                    "test_force_mae_rattled_meV_A": "",
                    "status": "ok",
                }
            )
    return records


def load(path: Path) -> List[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


def save(path: Path, results: List[dict]) -> None:
    order = {m: i for i, m in enumerate(("random", LC_RANDOM) + METHODS)}
    results.sort(key=lambda r: (int(r["N"]), order[r["method"]], int(r["seed"])))
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "w", newline="") as stream:
        writer = csv.DictWriter(stream, COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for record in results:
            writer.writerow(
                {
                    k: f"{v:.2f}" if isinstance(v, float) else v
                    for k, v in record.items()
                }
            )
    os.replace(temporary, path)


def spread(values: List[float], digits: int = 1) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    low, mid, high = min(values), statistics.median(values), max(values)
    return f"{mid:.{digits}f} [{low:.{digits}f}-{high:.{digits}f}]"


def markdown(results: List[dict], epochs: int, bench) -> str:
    """results.md: per (method, N), the test errors over draws / seeds."""
    groups: Dict[tuple, List[dict]] = {}
    for r in results + learning_curve_random(bench, epochs):
        if r["status"] == "ok":
            groups.setdefault((int(r["N"]), r["method"]), []).append(r)
    lines = [
        "# Which frames to label: `mtt-transfer select` vs random (PBE0)",
        "",
        "Split: `bench/results/accuracy/splits.json` (89 test, 36 validation "
        "frames; pool of 231). Training: `pet_transfer` as its default was before "
        "the training strategies (`method: full`, no learning rate, MSE loss, no "
        f"weight averaging), batch 8, {epochs} epochs, from `pet_xtb.ckpt`; scored "
        "with `mtt eval` on the 89 test frames (79 MD, 10 rattled). `random`: the "
        "learning curve's random orders (round-robin over molecules), one draw and "
        "training seed per run; `random (learning curve)`: the same training on the "
        f"same orders, made by `bench/learning_curve.py` (row `{LC_ROW}`, "
        "`bench/results/accuracy/results.csv`); selected rows: "
        "`mtt-transfer select` on the pool without labels, `mtt train` seed 0. "
        "Median [min-max] over runs.",
        "",
        "| method | N | runs | σ=0.1 Å frames | rattled frames | molecules | "
        "test energy MAE (meV/atom) | test force MAE (meV/Å) | MD frames | "
        "rattled frames |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    rank = {m: i for i, m in enumerate(("random", LC_RANDOM) + METHODS)}
    for (n, method), rows in sorted(
        groups.items(), key=lambda kv: (kv[0][0], rank[kv[0][1]])
    ):
        cells = [
            spread([float(r[c]) for r in rows if r[c] != ""], 1 if "mae" in c else 0)
            for c in (
                "sigma01_frames",
                "rattled_frames",
                "molecules",
                "test_energy_mae_meV_atom",
                "test_force_mae_meV_A",
                "test_force_mae_md_meV_A",
                "test_force_mae_rattled_meV_A",
            )
        ]
        lines.append(f"| {method} | {n} | {len(rows)} | " + " | ".join(cells) + " |")
    headline = [
        (method, groups.get((50, method)))
        for method in METHODS
        if groups.get((50, method))
    ]
    baseline = groups.get((100, "random")) or groups.get((100, LC_RANDOM))
    if headline and baseline:
        base = statistics.median(float(r["test_force_mae_meV_A"]) for r in baseline)
        base_e = statistics.median(
            float(r["test_energy_mae_meV_atom"]) for r in baseline
        )
        lines += [
            "",
            f"Target: 50 selected frames at least as good as 100 random "
            f"(median force MAE {base:.1f} meV/Å, energy {base_e:.1f} meV/atom):",
            "",
        ]
        for method, rows in headline:
            force = statistics.median(float(r["test_force_mae_meV_A"]) for r in rows)
            energy = statistics.median(
                float(r["test_energy_mae_meV_atom"]) for r in rows
            )
            verdict = "met" if force <= base else f"missed by {force - base:.1f} meV/Å"
            lines.append(
                f"- {method}:50 force {force:.1f} meV/Å ({force / base:.2f}x of "
                f"random:100), energy {energy:.1f} meV/atom: {verdict}"
            )
    return "\n".join(lines) + "\n"
