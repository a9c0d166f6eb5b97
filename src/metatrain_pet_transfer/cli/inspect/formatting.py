"""The human-readable ``inspect`` report, ending with a minimal ``options.yaml``."""

import json
from pathlib import Path
from typing import Any, Dict, Optional

from .describe import head_group_names


def format_summary(summary: Dict[str, Any]) -> str:
    """The human-readable report of ``inspect``, ending with an options snippet."""
    versions = summary["checkpoint_versions"]
    architecture = summary["architecture_name"]
    if not summary["is_pet"]:
        architecture += "  (not PET: pet_transfer cannot start from it)"
    lines = [
        _row("checkpoint", summary["path"]),
        _row("architecture", architecture),
        _row("metatrain", f"{summary['metatrain_version']} (installed)"),
    ]
    for kind in ("model", "trainer"):
        entry = versions[kind]
        lines.append(
            _row(
                f"{kind} ckpt version",
                f"{entry['version']} (installed PET: {entry['installed']}; "
                f"{entry['status']})",
            )
        )
    if summary["metadata"].get("name"):
        lines.append(_row("model name", summary["metadata"]["name"]))
    length_unit = summary["length_unit"]
    lines += [
        _row(
            "epoch",
            f"{summary['epoch']} (best epoch {summary['best_epoch']}, "
            f"best metric {_fmt(summary['best_metric'])})",
        ),
        "",
        _row("length unit", length_unit or "(none)"),
        _row("cutoff", f"{summary['cutoff']} {length_unit}".strip()),
        _row(
            "atomic types",
            ", ".join(
                f"{e['symbol']} ({e['number']})" for e in summary["atomic_types"]
            ),
        ),
        "",
        "targets (heads):",
    ]
    for name, target in summary["targets"].items():
        gradients = ", ".join(target["gradients"]) or "none"
        kind = "per-atom" if target["per_atom"] else f"per-{target['sample_kind']}"
        lines.append(
            f"  {name}: quantity={target['quantity'] or '(none)'}, "
            f"unit={target['unit'] or '(none)'}, gradients={gradients}, {kind}, "
            f"{target['head_parameters']} head parameters"
            + (f", readout {target['readout']}" if target.get("readout") else "")
        )
    lines += ["", "composition weights:"]
    if not summary["composition_weights"]:
        lines.append("  (no energy target)")
    for name, composition in summary["composition_weights"].items():
        if "error" in composition:
            lines.append(f"  {name}: not shown ({composition['error']})")
            continue
        weights = ", ".join(
            f"{symbol}={_fmt(value)}"
            for symbol, value in composition["weights"].items()
        )
        lines.append(f"  {name} [{composition['unit']}]: {weights}")

    parameters = summary["parameters"]
    groups = parameters["groups"]
    heads = ", ".join(f"{name} {groups[name]}" for name in head_group_names())
    lines += [
        "",
        _row(
            "parameters",
            f"{parameters['total']} fitted values in {parameters['tensors']} tensors",
        ),
        _row("  backbone", groups["backbone"]),
        _row("  heads", f"{parameters['heads_total']} ({heads})"),
        _row("  composition", groups["composition"]),
        _row("  scaler", groups["scaler"]),
        "",
        "finetune:",
        _row("  finetune_config", summary["finetune"]["finetune_config"] or "none"),
        _row("  train_hypers", summary["finetune"]["train_hypers"]),
        "",
        "model hypers (leave architecture.model out, or repeat these exactly):",
    ]
    lines += [f"  {key}: {value}" for key, value in summary["model_hypers"].items()]
    lines += ["", "minimal options.yaml:", "", options_snippet(summary)]
    return "\n".join(lines)


def _row(label: str, value: Any) -> str:
    return f"{label + ':':<22}{value}"


def options_snippet(summary: Dict[str, Any]) -> str:
    """A minimal ``options.yaml`` starting a transfer from this checkpoint."""
    energy = next(
        (
            (name, target)
            for name, target in summary["targets"].items()
            if target["quantity"] == "energy"
        ),
        None,
    )
    name, target = energy if energy else ("energy", {"unit": "eV", "gradients": []})
    read_from = json.dumps(str(Path(summary["path"]).resolve()))
    lines = [
        "architecture:",
        "  name: pet_transfer",
        "  training:",
        "    finetune:",
        "      method: full  # or heads, lora",
        f"      read_from: {read_from}",
        "training_set:",
        "  systems:",
        "    read_from: dataset.xyz  # your structures and labels",
        f"    length_unit: {summary['length_unit'] or 'angstrom'}",
        "  targets:",
        "    # a new name gets new heads and a new composition model, e.g.",
        "    # mtt::energy_<level> or energy/<level>, in any unit; reusing a",
        f"    # checkpoint target name ({', '.join(summary['targets']) or name}) "
        "keeps its heads",
        "    # and unit, and refits its composition weights on the residual of its",
        "    # pretrained head",
        "    mtt::energy_pbe0:",
        "      quantity: energy",
        "      key: energy_pbe0  # atoms.info key",
        f"      unit: {target['unit'] or 'eV'}",
    ]
    if "positions" in target["gradients"]:
        lines += ["      forces:", "        key: forces_pbe0  # atoms.arrays key"]
    if "strain" in target["gradients"]:
        lines += ["      stress:", "        key: stress_pbe0"]
    lines += ["validation_set: 0.1", "test_set: 0.1"]
    return "\n".join(lines)


def _fmt(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.6g}"
