"""The campaign's results: ``results.csv``, ``results.md`` and ``results.png``.

Part of ``bench/learning_curve.py`` (tabulating side). Loads and saves the CSV (one
line per run, rewritten after every run), marks per (row, N, seed, epochs) the run
selected on the validation force MAE, aggregates the selected runs over seeds into
the markdown table with its force MAE ratios, and plots test force MAE versus N;
``report`` writes all three.
"""

import csv
import os
import statistics
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .settings import FORCES_KEY, REPO, ROWS
from .splits import Campaign, write_atomically


# ----------------------------------------------------------------------------- results

COLUMNS = (
    "row N seed lr epochs val_energy_mae_meV_atom val_force_mae_meV_A "
    "test_energy_mae_meV_atom test_force_mae_meV_A wall_s cpu_s eval_s status selected "
    "error run_dir old_energy_drift_meV_atom old_force_drift_meV_A "
    "old_energy_mae_meV_atom old_force_mae_meV_A"
).split()


def load_results(path: Path) -> List[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


def result_key(record: dict) -> tuple:
    return (record["row"], record["N"], record["seed"], record["lr"], record["epochs"])


#: what a run is selected on: validation force MAE, energy MAE breaking ties
SELECTION = ("val_force_mae_meV_A", "val_energy_mae_meV_atom")
#: the runs one is selected among (they differ in learning rate only)
SELECTION_GROUP = ("row", "N", "seed", "epochs")


def mark_selected(
    results: List[dict],
    columns: Sequence[str] = SELECTION,
    group: Sequence[str] = SELECTION_GROUP,
) -> None:
    """Per (row, N, seed, epochs): the successful run with the lowest validation
    error (``columns`` in order) is the one whose test error is reported."""
    groups: Dict[tuple, List[dict]] = {}
    for record in results:
        record["selected"] = ""
        if record["status"] == "ok":
            key = tuple(record[name] for name in group)
            groups.setdefault(key, []).append(record)
    for runs in groups.values():
        best = min(runs, key=lambda r: tuple(float(r[c]) for c in columns))
        best["selected"] = "yes"


def save_results(path: Path, results: List[dict]) -> None:
    """Rewrite the CSV after every run, so a killed campaign loses only one run."""
    mark_selected(results)
    order = {name: i for i, name in enumerate(ROWS)}
    results.sort(
        key=lambda r: (order.get(r["row"], 99), int(r["N"]), int(r["seed"]), r["lr"])
    )
    write_csv(path, results, COLUMNS, _format)


def write_csv(path: Path, results: List[dict], columns: Sequence[str], form) -> None:
    """``results`` as CSV (``form(column, value)`` formats each cell), replacing
    ``path`` atomically."""
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "w", newline="") as stream:
        writer = csv.DictWriter(stream, columns, extrasaction="ignore")
        writer.writeheader()
        for record in results:
            writer.writerow({k: form(k, record.get(k, "")) for k in columns})
    os.replace(temporary, path)


def _format(column: str, value):
    """Errors to 0.01 meV, seconds to 0.1 s, whether fresh floats or read back."""
    decimals = 2 if "mae" in column else 1 if column.endswith("_s") else None
    if decimals is None or value in ("", None):
        return value
    return f"{float(value):.{decimals}f}"


def spread(values: List[float], form: str = ".1f") -> str:
    """Median, with the min-max range when there are several seeds."""
    if len(values) == 1:
        return f"{values[0]:{form}}"
    return (
        f"{statistics.median(values):{form}} "
        f"[{min(values):{form}}-{max(values):{form}}]"
    )


def summary(results: List[dict]) -> List[dict]:
    """One line per (row, N, epochs): the selected runs, aggregated over seeds."""
    groups: Dict[tuple, List[dict]] = {}
    for record in results:
        groups.setdefault(
            (record["row"], int(record["N"]), record["epochs"]), []
        ).append(record)
    lines = []
    for (row, n, epochs), records in groups.items():
        chosen = [r for r in records if r["selected"] == "yes"]
        failed = [r for r in records if r["status"] != "ok"]
        lines.append(
            {
                "row": row,
                "N": n,
                "epochs": epochs,
                "chosen": chosen,
                "all": records,
                "failed": failed,
            }
        )
    return lines


def markdown(
    results: List[dict], record: dict, command: str = "", notes: Sequence[str] = ()
) -> str:
    """results.md: per row and N, the test errors at the selected learning rate."""
    head = [
        "# PBE0 transfer benchmark",
        "",
        *([f"Written by `{command}` (do not edit by hand).", ""] if command else []),
        f"Data `{Path(record['data']).name}` ({record['n_frames']} frames; test "
        f"{len(record['test'])}, validation {len(record['val'])} frames, stratified by "
        f"molecule), checkpoint `{Path(record['checkpoint']).name}`, batch size "
        f"{record['batch_size']}. Test errors at the learning rate selected on the "
        "validation force MAE; median over seeds [min-max]. Wall and CPU: seconds of "
        "`mtt train` for the selected run, in brackets summed over the row's "
        "learning rates (zero-shot: `mtt export` + `mtt eval` of the pretrained "
        "model). CPU time stays comparable when other jobs share the machine.",
        "",
        "| row | N | epochs | lr | seeds | test energy MAE (meV/atom) | "
        "test force MAE (meV/Å) | wall (s) | CPU (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    lines = []
    for line in summary(results):
        chosen = line["chosen"]
        if not chosen:
            error = line["failed"][0]["error"] if line["failed"] else "no result"
            lines.append(
                f"| {line['row']} | {line['N']} | {line['epochs']} | | | "
                f"failed: {error.replace('|', '/')} | | | |"
            )
            continue
        lrs = ", ".join(sorted({r["lr"] or "-" for r in chosen}))
        energy = spread([float(r["test_energy_mae_meV_atom"]) for r in chosen])
        force = spread([float(r["test_force_mae_meV_A"]) for r in chosen])
        wall = seconds(chosen, line["all"], "wall_s")
        cpu = seconds(chosen, line["all"], "cpu_s")
        lines.append(
            f"| {line['row']} | {line['N']} | {line['epochs']} | {lrs} | "
            f"{len(chosen)} | {energy} | {force} | {wall} | {cpu} |"
        )
    remarks = ["", "Notes:", "", *[f"- {note}" for note in notes]] if notes else []
    return "\n".join(head + lines + ratios(results) + drifts(results) + remarks) + "\n"


def _column(records: List[dict], column: str) -> str:
    """Median [min-max] of ``column``; "-" where a record lacks it (written before
    the column existed)."""
    if not all(r.get(column) for r in records):
        return "-"
    return spread([float(r[column]) for r in records])


def drifts(results: List[dict]) -> List[str]:
    """Rows that keep the pretrained heads: how far their old level moved from the
    untouched pretrained model, and its error against the old level's labels (xTB),
    on the test frames; the pretrained model itself (zero-shot) for reference."""
    kept, pretrained = [], []
    for line in summary(results):
        chosen = [
            r
            for r in line["chosen"]
            if r.get("old_force_mae_meV_A") or r.get("old_force_drift_meV_A")
        ]
        if not chosen:
            continue
        xtb_energy = _column(chosen, "old_energy_mae_meV_atom")
        xtb_force = _column(chosen, "old_force_mae_meV_A")
        if line["row"] == "zero-shot":  # the same model at every N
            pretrained = [
                f"| pretrained | - | - | 0 | 0 | {xtb_energy} | {xtb_force} |"
            ]
            continue
        energy = _column(chosen, "old_energy_drift_meV_atom")
        force = _column(chosen, "old_force_drift_meV_A")
        kept.append(
            f"| {line['row']} | {line['N']} | {len(chosen)} | {energy} | {force} | "
            f"{xtb_energy} | {xtb_force} |"
        )
    if not kept:
        return []
    return [
        "",
        "Old level kept (`keep_pretrained_heads`): the exported model's pretrained-"
        "level output on the test frames, against the untouched pretrained model "
        "(drift) and against the xTB labels; MAE, median over seeds [min-max]:",
        "",
        "| row | N | seeds | energy drift (meV/atom) | force drift (meV/Å) | "
        "xTB energy MAE (meV/atom) | xTB force MAE (meV/Å) |",
        "|---|---|---|---|---|---|---|",
        *pretrained,
        *kept,
    ]


#: the comparisons the project's targets are stated in (force MAE ratios)
RATIOS = [
    ("scratch", "plugin-default"),
    ("native-full", "plugin-default"),
    ("native-heads", "plugin-default"),
    ("zero-shot", "plugin-default"),
]


def ratios(results: List[dict]) -> List[str]:
    """Per N: how many times lower the plugin default's test force MAE is than
    scratch's, native fine-tuning's (full, heads) and the zero-shot model's (median
    over seeds of each row)."""
    medians = {
        (line["row"], line["N"]): statistics.median(
            float(r["test_force_mae_meV_A"]) for r in line["chosen"]
        )
        for line in summary(results)
        if line["chosen"]
    }
    ns = sorted({n for (_, n) in medians})
    # only the comparisons this campaign has rows for
    pairs = [
        (a, b)
        for a, b in RATIOS
        if any((a, n) in medians and (b, n) in medians for n in ns)
    ]
    if not pairs:
        return []
    rows = [
        f"| {n} | "
        + " | ".join(
            f"{medians[(a, n)] / medians[(b, n)]:.2f}x"
            if (a, n) in medians and (b, n) in medians
            else "-"
            for a, b in pairs
        )
        + " |"
        for n in ns
    ]
    if not any(cell != "-" for row in rows for cell in row.split(" | ")[1:-1]):
        return []
    return [
        "",
        "Test force MAE ratios (median over seeds of each row):",
        "",
        "| N | " + " | ".join(f"{a} / {b}" for a, b in pairs) + " |",
        "|---|" + "---|" * len(pairs),
        *rows,
    ]


def seconds(chosen: List[dict], everything: List[dict], column: str) -> str:
    """Median seconds of the selected runs, and per seed the sum over all runs."""
    if any(not r.get(column) for r in everything):
        return "-"  # not recorded (CSV written before the column existed)
    median = statistics.median(float(r[column]) for r in chosen)
    if len(everything) == len(chosen):
        return f"{median:.0f}"
    total = sum(float(r[column]) for r in everything) / len(chosen)
    return f"{median:.0f} ({total:.0f})"


def level_gap(campaign: Campaign) -> Optional[float]:
    """Force MAE (meV/Å) of the xTB labels against PBE0 on the test split, if any."""
    test = campaign.subset(campaign.splits["test"])
    if not all("forces_xtb" in atoms.arrays for atoms in test):
        return None
    diff = np.concatenate(
        [(a.arrays["forces_xtb"] - a.arrays[FORCES_KEY]).ravel() for a in test]
    )
    return 1000 * float(np.abs(diff).mean())


def plot(results: List[dict], path: Path, gap: Optional[float]) -> None:
    """Log-log force MAE vs N, one line per row (median over seeds, min-max bars)."""
    plot_mae(
        results,
        path,
        column="test_force_mae_meV_A",
        ylabel="test force MAE (meV/Å)",
        title="xTB → PBE0 transfer (median over seeds, min-max bars)",
        reference=None
        if gap is None
        else (gap, f"GFN2-xTB labels vs PBE0 ({gap:.0f})"),
    )


def plot_mae(
    results: List[dict],
    path: Path,
    column: str,
    ylabel: str,
    title: str,
    reference: Optional[Tuple[float, str]] = None,
    rows: Sequence[str] = tuple(ROWS),
    lower_last: bool = True,
) -> None:
    """Log-log ``column`` vs N, one line per row of ``rows`` (median over seeds,
    min-max bars), and a grey dashed ``reference`` line (value, label);
    ``lower_last`` puts the largest N's label on a second line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullFormatter

    figure, axes = plt.subplots(figsize=(8.4, 4.8))
    lines = summary(results)
    plotted = {line["row"] for line in lines if line["chosen"]}
    shown = [name for name in rows if name in plotted]
    # one colour per row shown (tab20 has 20; the default cycle repeats after 10),
    # a marker and line style per family: native rows dashed, the others solid
    colours = plt.get_cmap("tab20" if len(shown) > 10 else "tab10")
    markers = "osD^vP*Xhp<>"
    for rank, name in enumerate(rows):
        points = sorted(
            (line["N"], [float(r[column]) for r in line["chosen"]])
            for line in lines
            if line["row"] == name and line["chosen"]
        )
        if not points:
            continue
        index = shown.index(name)
        style = {
            "color": colours(index % colours.N),
            "marker": markers[index % len(markers)],
            "linestyle": "--" if name.startswith("native") else "-",
        }
        # a small shift along N per row, so rows with equal errors stay visible
        ns = [n * 1.015 ** (rank - len(rows) / 2) for n, _ in points]
        mid = np.array([statistics.median(v) for _, v in points])
        low = mid - np.array([min(v) for _, v in points])
        high = np.array([max(v) for _, v in points]) - mid
        axes.errorbar(ns, mid, yerr=[low, high], capsize=3, label=name, **style)
    if reference is not None:
        axes.axhline(reference[0], color="grey", linestyle="--", label=reference[1])
    axes.set_xscale("log")
    axes.set_yscale("log")
    all_ns = sorted({int(r["N"]) for r in results}) or [1]
    axes.set_xlim(min(all_ns) / 1.5, max(all_ns) * 1.5)  # the shifts stay small
    axes.xaxis.set_major_locator(FixedLocator(all_ns))
    # the largest N (`all`) on a second line: it sits close to N=200
    axes.xaxis.set_major_formatter(
        lambda value, _: (
            f"\n{value:g}" if lower_last and value == max(all_ns) else f"{value:g}"
        )
    )
    axes.xaxis.set_minor_formatter(NullFormatter())
    axes.yaxis.set_major_formatter(lambda value, _: f"{value:g}")
    axes.yaxis.set_minor_formatter(lambda value, _: f"{value:g}")
    axes.set_xlabel("training frames N")
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def command_line(campaign: Campaign) -> str:
    """The command that writes this results folder, paths relative to the repo."""
    settings = campaign.settings

    def shown(path: Path) -> str:
        return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)

    spec = shown(settings.spec) if settings.spec else "?"
    return (
        f"python bench/learning_curve.py --campaign {spec} --out {shown(settings.out)}"
    )


def report(
    results: List[dict], record: dict, campaign: Campaign, notes: Sequence[str] = ()
) -> None:
    out = campaign.settings.out
    save_results(out / "results.csv", results)
    gap = level_gap(campaign)
    if gap is not None:
        notes = [
            *notes,
            f"The xTB labels differ from the PBE0 ones by {gap:.1f} meV/Å on the test "
            "split (force MAE): the level gap (grey dashed line of `results.png`).",
        ]
    text = markdown(results, record, command_line(campaign), notes)
    write_atomically(out / "results.md", text)
    plot(results, out / "results.png", gap)
