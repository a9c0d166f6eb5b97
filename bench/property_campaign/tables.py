"""The property campaign's results: ``results.csv``, ``results.md``, plots.

Part of ``bench/properties.py``. One CSV line per run (the property is a column);
per property and (row, N, seed, epochs) the run with the lowest validation MAE is
selected (the energy campaign's ``mark_selected``); the markdown has, per property,
the selected runs' test errors as median [min-max] over seeds, and the ratios the
issue's targets are stated in; ``<property>.png`` is the test MAE against N, one
line per row (the energy campaign's plot).
"""

import statistics
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
from transfer_campaign.settings import REPO
from transfer_campaign.splits import write_atomically
from transfer_campaign.tables import (
    mark_selected,
    plot_mae,
    seconds,
    spread,
    summary,
    write_csv,
)

from .spec import ROW_NAMES, SELECTION
from .targets import PROPERTIES, Property


COLUMNS = (
    "property row N seed lr epochs val_mae test_mae test_norm_mae "
    "test_rotation_error test_charge_sum test_element_mean_mae wall_s cpu_s eval_s "
    "status selected error run_dir"
).split()
#: the errors of a property's selected run, in its unit
ERRORS = [c for c in COLUMNS if c.startswith(("val_", "test_"))]


def of_property(results: List[dict], name: str) -> List[dict]:
    return [r for r in results if r["property"] == name]


def save_results(path: Path, results: List[dict]) -> None:
    """Rewrite the CSV after every run, so a killed campaign loses only one run."""
    mark_selected(results, SELECTION, ("property", "row", "N", "seed", "epochs"))
    properties = list(PROPERTIES)
    results.sort(
        key=lambda r: (
            properties.index(r["property"]) if r["property"] in PROPERTIES else 99,
            ROW_NAMES.index(r["row"]) if r["row"] in ROW_NAMES else 99,
            int(r["N"]),
            int(r["seed"]),
            r["lr"],
        )
    )
    write_csv(path, results, COLUMNS, _format)


def _format(column: str, value):
    """Errors to 4 significant digits, seconds to 0.1 s."""
    if value in ("", None):
        return value
    if column in ERRORS:
        return f"{float(value):.4g}"
    return f"{float(value):.1f}" if column.endswith("_s") else value


def _values(records: List[dict], column: str) -> List[float]:
    return [float(r[column]) for r in records if r.get(column) not in ("", None)]


def property_table(results: List[dict], prop: Property) -> List[str]:
    """Per row and N, the selected runs' test errors (median [min-max] over seeds)."""
    if not results:
        return ["No results yet."]
    unit = prop.shown
    extra = []
    if prop.vector:
        extra = [f"\\|μ\\| MAE ({unit})", f"error under rotation ({unit}; % of MAE)"]
    if prop.per_atom:
        extra = [f"\\|Σq\\| per molecule ({unit})", f"per-element mean MAE ({unit})"]
    header = ["row", "N", "epochs", "lr", "seeds", f"test MAE ({unit})", *extra]
    lines = [
        "| " + " | ".join([*header, "CPU (s)"]) + " |",
        "|" + "---|" * (len(header) + 1),
    ]
    for line in summary(results):
        chosen = line["chosen"]
        if not chosen:
            error = line["failed"][0]["error"] if line["failed"] else "no result"
            cells = [line["row"], str(line["N"]), line["epochs"], "", ""]
            cells += [f"failed: {error.replace('|', '/')}"] + [""] * (len(extra) + 1)
            lines.append("| " + " | ".join(cells) + " |")
            continue
        mae = _values(chosen, "test_mae")
        cells = [
            line["row"],
            str(line["N"]),
            line["epochs"],
            ", ".join(sorted({r["lr"] for r in chosen})),
            str(len(chosen)),
            spread(mae, ".3g"),
        ]
        if prop.vector:
            cells.append(_spread(chosen, "test_norm_mae"))
            rotation = _values(chosen, "test_rotation_error")
            share = [100 * r / m for r, m in zip(rotation, mae, strict=False)]
            cells.append(
                f"{spread(rotation, '.2g')}; {spread(share, '.2g')} %"
                if rotation
                else ""
            )
        if prop.per_atom:
            cells.append(_spread(chosen, "test_charge_sum"))
            cells.append(_spread(chosen, "test_element_mean_mae"))
        cells.append(seconds(chosen, line["all"], "cpu_s"))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _spread(records: List[dict], column: str) -> str:
    values = _values(records, column)
    return spread(values, ".3g") if values else ""


#: the comparisons the issue's targets are stated in (test MAE ratios)
RATIOS = [
    ("scratch", "plugin-default"),
    ("best native", "plugin-default"),
    ("mean", "plugin-default"),
]


def ratio_table(results: List[dict]) -> List[str]:
    """Per N: the test MAE of scratch, of the best native method (full or heads:
    the lower median) and of the mean over the plugin default's (medians over
    seeds). Empty until the plugin default has results."""
    medians = {
        (line["row"], line["N"]): statistics.median(_values(line["chosen"], "test_mae"))
        for line in summary(results)
        if line["chosen"]
    }
    ns = sorted({n for (row, n) in medians if row == "plugin-default"})
    if not ns:
        return []
    for n in ns:
        natives = [
            medians[(row, n)]
            for row in ("native-full", "native-heads")
            if (row, n) in medians
        ]
        if natives:
            medians[("best native", n)] = min(natives)

    def cell(a, b, n):
        if (a, n) in medians and (b, n) in medians:
            return f"{medians[(a, n)] / medians[(b, n)]:.2f}x"
        return "-"

    return [
        "",
        "Test MAE ratios (median over seeds of each row; above 1: the plugin's "
        "default is better):",
        "",
        "| N | " + " | ".join(f"{a} / {b}" for a, b in RATIOS) + " |",
        "|---|" + "---|" * len(RATIOS),
        *[
            f"| {n} | " + " | ".join(cell(a, b, n) for a, b in RATIOS) + " |"
            for n in ns
        ],
    ]


def xtb_reference(campaign, prop: Property) -> Optional[float]:
    """MAE of the GFN2-xTB labels against the PBE0 ones on the test split, if any."""
    test = campaign.subset(campaign.splits["test"])
    if prop.xtb_key is None:
        return None
    where = [a.arrays if prop.per_atom else a.info for a in test]
    if not all(prop.xtb_key in w for w in where):
        return None
    xtb, pbe0 = prop.labels(test, prop.xtb_key), prop.labels(test)
    deviations = [np.abs(a - b) for a, b in zip(xtb, pbe0, strict=True)]
    return float(np.mean(np.concatenate(deviations)))


def markdown(
    results: List[dict],
    record: dict,
    campaigns: Dict[str, object],
    command: str,
    notes: Sequence[str] = (),
) -> str:
    """results.md: per property, the table of selected runs and the ratios."""
    lines = [
        "# New properties from an xTB-pretrained PET",
        "",
        f"Written by `{command}` (do not edit by hand).",
        "",
        f"Data `{Path(record['data']).name}` ({record['n_frames']} frames; the splits "
        f"of `{record['splits_from']}`: test {len(record['test'])}, validation "
        f"{len(record['val'])} frames), checkpoint `{Path(record['checkpoint']).name}`"
        f", batch size {record['batch_size']}; each property trained alone. Test "
        "errors at the learning rate selected on the validation MAE of the property; "
        "median over seeds [min-max]. MAE over components (dipole: its three; "
        "charges: per atom). CPU: seconds of `mtt train` for the selected run, in "
        "brackets summed over the row's learning rates. Error under rotation: the "
        "exported model's mean |μ(Rx) - Rμ(x)| over test molecules and random "
        "rotations, and as a percentage of its test MAE.",
    ]
    for name, campaign in campaigns.items():
        prop = PROPERTIES[name]
        mine = of_property(results, name)
        lines += ["", f"## {name} (`{prop.target}`, {prop.shown})", ""]
        reference = xtb_reference(campaign, prop)
        if reference is not None:
            lines += [
                f"The GFN2-xTB labels ({prop.xtb_key}) differ from the PBE0 ones by "
                f"{reference:.3g} {prop.shown} on the test split (MAE; the grey line "
                f"of `{name}.png`).",
                "",
            ]
        lines += property_table(mine, prop) + ratio_table(mine)
    if notes:
        lines += ["", "Notes:", "", *[f"- {note}" for note in notes]]
    return "\n".join(lines) + "\n"


def plot(results: List[dict], campaign, name: str, path: Path) -> None:
    """Test MAE vs N of one property, one line per row."""
    prop = PROPERTIES[name]
    reference = xtb_reference(campaign, prop)
    plot_mae(
        of_property(results, name),
        path,
        column="test_mae",
        ylabel=f"test {name} MAE ({prop.shown})",
        title=f"{name}: xTB-pretrained PET → PBE0 (median over seeds, min-max bars)",
        reference=None
        if reference is None
        else (reference, f"GFN2-xTB {name} vs PBE0 ({reference:.2g})"),
        rows=ROW_NAMES,
        lower_last=False,
    )


def command_line(settings) -> str:
    """The command that writes this results folder, paths relative to the repo."""

    def shown(path: Path) -> str:
        return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)

    return (
        f"python bench/properties.py --campaign {shown(settings.spec)} "
        f"--out {shown(settings.out)}"
    )


def report(results, record, campaigns, notes: Sequence[str] = ()) -> None:
    """Write ``results.csv``, ``results.md`` and a plot per property with results."""
    settings = next(iter(campaigns.values())).settings
    out = settings.out
    save_results(out / "results.csv", results)
    text = markdown(results, record, campaigns, command_line(settings), notes)
    write_atomically(out / "results.md", text)
    for name, campaign in campaigns.items():
        if any(r["status"] == "ok" for r in of_property(results, name)):
            plot(results, campaign, name, out / f"{name}.png")
