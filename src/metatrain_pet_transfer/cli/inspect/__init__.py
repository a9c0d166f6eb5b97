"""``mtt-transfer inspect``: what a checkpoint holds, before writing ``options.yaml``.

A user starting a transfer needs to know the target names, units and gradients the
checkpoint was trained on, its atomic types (PET cannot learn new ones), its cutoff
and hypers (``architecture.model`` must match them or be left out) and whether the
installed metatrain can read it. All of this is in the checkpoint, but reading it
by hand means unpickling a file that may come from a stranger.

Everything here reads the file through :func:`load_checkpoint_safely`
(``weights_only=True`` with a minimal allow-list), so inspecting a file never runs
code from it. ``--verify`` answers only "is this file safe and usable?", with an
exit code a script can test.
"""

import argparse
import json
import sys
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from ...checkpoints import (
    PET_ARCHITECTURES,
    CheckpointError,
    check_pretrained_checkpoint,
    load_checkpoint_safely,
)


#: exit codes of ``inspect``: usable / refused by ``--verify`` / unreadable
EXIT_OK, EXIT_REFUSED, EXIT_UNREADABLE = 0, 1, 2

#: state-dict prefixes of the per-target heads, as PET names them
HEAD_GROUPS = (
    "backend.node_heads.",
    "backend.edge_heads.",
    "backend.node_last_layers.",
    "backend.edge_last_layers.",
)
#: the other parameter groups a transfer treats differently from the backbone
OTHER_GROUPS = {"composition": "additive_models.", "scaler": "scaler."}


def register(subparsers) -> None:
    """Add the ``inspect`` subcommand to the ``mtt-transfer`` parser."""
    parser = subparsers.add_parser(
        "inspect",
        help="show what a checkpoint holds, or --verify that it is safe to use",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("checkpoint", help="path to a metatrain .ckpt file")
    parser.add_argument(
        "--json", action="store_true", help="print the information as JSON"
    )
    parser.add_argument(
        "--verify",
        action="store_true",
        help="only check that the file loads safely and is a PET checkpoint the "
        "installed metatrain can read (exit code 0 if so, 1 if not)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``mtt-transfer inspect``; returns the exit code."""
    if args.verify:
        try:
            message = verify_checkpoint(args.checkpoint)
        except CheckpointError as error:
            print(f"REFUSED: {_one_line(error)}", file=sys.stderr)
            return EXIT_REFUSED
        print(f"OK: {message}")
        return EXIT_OK

    try:
        summary = describe_checkpoint(args.checkpoint)
    except CheckpointError as error:
        print(f"mtt-transfer inspect: {_one_line(error)}", file=sys.stderr)
        return EXIT_UNREADABLE
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        print(format_summary(summary))
    return EXIT_OK


def verify_checkpoint(path) -> str:
    """Check that ``path`` is safe to load and usable as a PET starting point.

    :return: a one-line description of the checkpoint
    :raises CheckpointError: naming the path and the reason
    """
    _refuse_exported_model(path)
    checkpoint = check_pretrained_checkpoint(path)
    _check_layout(checkpoint, path)
    versions = _versions(checkpoint)
    return (
        f"'{path}' loads safely (torch.load weights_only=True) and is a "
        f"'{checkpoint['architecture_name']}' checkpoint (model v"
        f"{versions['model']['version']}, trainer v{versions['trainer']['version']}) "
        f"that metatrain {versions['metatrain']} can read"
    )


def describe_checkpoint(path) -> Dict[str, Any]:
    """Everything ``inspect`` reports about ``path``, as JSON-ready data.

    :raises CheckpointError: if the file cannot be loaded safely, or is not laid
        out like a metatrain checkpoint
    """
    _refuse_exported_model(path)
    checkpoint = load_checkpoint_safely(path)
    _check_layout(checkpoint, path)
    try:
        return _describe(checkpoint, Path(path))
    except (AttributeError, KeyError, TypeError, ValueError) as error:
        raise CheckpointError(
            f"checkpoint '{path}' has an unexpected layout ({type(error).__name__}: "
            f"{error})"
        ) from None


def _refuse_exported_model(path) -> None:
    # an exported model (`mtt export`) is a TorchScript archive: it carries compiled
    # code and is not a checkpoint, so say that rather than "unsafe objects"
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return  # load_checkpoint_safely explains what is wrong with the file
    if any(name.endswith("/constants.pkl") for name in names):
        raise CheckpointError(
            f"'{path}' is an exported TorchScript model, not a checkpoint: inspect "
            "and --verify read .ckpt files (the one it was exported from)"
        )


def _check_layout(checkpoint: Dict[str, Any], path) -> None:
    # the keys read below; a file missing one is not something metatrain can load
    model_data = checkpoint.get("model_data")
    if not isinstance(model_data, dict):
        raise CheckpointError(f"checkpoint '{path}' has no 'model_data' dictionary")
    for key in ("model_hypers", "dataset_info"):
        if key not in model_data:
            raise CheckpointError(f"checkpoint '{path}' has no 'model_data.{key}'")
    if not any(
        isinstance(checkpoint.get(key), dict)
        for key in ("best_model_state_dict", "model_state_dict")
    ):
        raise CheckpointError(
            f"checkpoint '{path}' has neither 'best_model_state_dict' nor "
            "'model_state_dict'"
        )


def _describe(checkpoint: Dict[str, Any], path: Path) -> Dict[str, Any]:
    dataset_info = checkpoint["model_data"]["dataset_info"]
    hypers = checkpoint["model_data"]["model_hypers"]
    state_dict = _state_dict(checkpoint)
    targets = {
        name: _describe_target(info, state_dict, name)
        for name, info in dataset_info.targets.items()
    }
    versions = _versions(checkpoint)
    return {
        "path": str(path),
        "architecture_name": checkpoint["architecture_name"],
        "is_pet": checkpoint["architecture_name"] in PET_ARCHITECTURES,
        "checkpoint_versions": versions,
        "metatrain_version": versions["metatrain"],
        "metadata": _metadata(checkpoint.get("metadata")),
        "length_unit": dataset_info.length_unit,
        "atomic_types": [_element(z) for z in dataset_info.atomic_types],
        "cutoff": hypers.get("cutoff"),
        "model_hypers": hypers,
        "targets": targets,
        "epoch": checkpoint.get("epoch"),
        "best_epoch": checkpoint.get("best_epoch"),
        "best_metric": checkpoint.get("best_metric"),
        "finetune": _finetune(checkpoint),
        "parameters": count_parameters(state_dict),
        "composition_weights": {
            name: composition_weights(state_dict, name, target["unit"])
            for name, target in targets.items()
            if target["quantity"] == "energy"
        },
    }


def _state_dict(checkpoint: Dict[str, Any]) -> Dict[str, Any]:
    # the weights finetuning and export start from (pet/model.py load_checkpoint)
    state_dict = checkpoint.get("best_model_state_dict")
    if not isinstance(state_dict, dict):
        state_dict = checkpoint["model_state_dict"]
    return state_dict


def _versions(checkpoint: Dict[str, Any]) -> Dict[str, Any]:
    from metatrain import __version__ as metatrain_version
    from metatrain.pet import PET, Trainer

    versions: Dict[str, Any] = {"metatrain": metatrain_version}
    for kind, supported in [
        ("model", PET.__checkpoint_version__),
        ("trainer", Trainer.__checkpoint_version__),
    ]:
        version = checkpoint.get(f"{kind}_ckpt_version")
        if version is None:
            status = "absent"
        elif version == supported:
            status = "current"
        elif version < supported:
            status = "older: the installed metatrain upgrades it when loading"
        else:
            status = "too new: upgrade metatrain"
        versions[kind] = {"version": version, "installed": supported, "status": status}
    return versions


def _metadata(metadata) -> Dict[str, Any]:
    # metatomic's ModelMetadata is a TorchScript object; plain data only
    if metadata is None:
        return {}
    fields = {}
    for name in ("name", "description", "authors", "references"):
        try:
            fields[name] = getattr(metadata, name)
        except (AttributeError, RuntimeError):
            continue
    return fields


def _element(number: int) -> Dict[str, Any]:
    from ase.data import chemical_symbols

    number = int(number)
    symbol = chemical_symbols[number] if 0 < number < len(chemical_symbols) else "?"
    return {"number": number, "symbol": symbol}


def _describe_target(info, state_dict: Dict[str, Any], name: str) -> Dict[str, Any]:
    sample_kind = info.sample_kind
    return {
        "quantity": info.quantity,
        "unit": info.unit,
        "description": info.description,
        # forces are gradients wrt "positions", stress/virial wrt "strain"
        "gradients": list(info.gradients),
        "per_atom": sample_kind == "atom",
        "sample_kind": sample_kind,
        "head_parameters": sum(
            _numel(value)
            for key, value in state_dict.items()
            if any(key.startswith(f"{group}{name}.") for group in HEAD_GROUPS)
        ),
    }


def _finetune(checkpoint: Dict[str, Any]) -> Dict[str, Any]:
    # finetune_config: the strategy applied to these weights (empty if none);
    # train_hypers.finetune: how the run that wrote the file was configured
    config = None
    for key in ("model_state_dict", "best_model_state_dict"):
        state_dict = checkpoint.get(key)
        if isinstance(state_dict, dict) and "finetune_config" in state_dict:
            config = state_dict["finetune_config"]
            break
    train_hypers = checkpoint.get("train_hypers")
    hypers = train_hypers.get("finetune") if isinstance(train_hypers, dict) else None
    return {"finetune_config": config, "train_hypers": hypers}


def _numel(value) -> int:
    """Number of fitted values in a state-dict entry.

    Floating-point tensors count fully. Integer tensors are index tables
    (``species_to_species_index``, ``type_to_index``) and do not count; ``uint8``
    tensors are serialized metatensor buffers (composition weights, scales) and
    count the values they hold. ``dummy_buffer`` only tracks device and dtype.
    """
    if not isinstance(value, torch.Tensor):
        return 0
    if value.is_floating_point() or value.is_complex():
        return value.numel()
    if value.dtype == torch.uint8:
        tensor_map = _load_buffer(value)
        if tensor_map is not None:
            return sum(block.values.numel() for block in tensor_map.blocks())
    return 0


def count_parameters(state_dict: Dict[str, Any]) -> Dict[str, Any]:
    """Fitted values per group of the state dict (see :func:`_numel`).

    Groups: ``backbone`` (everything not listed below), the four head groups
    (``backend.node_heads`` ...), ``composition`` (``additive_models.*``) and
    ``scaler`` (``scaler.*``).
    """
    groups = {"backbone": 0}
    groups.update({name: 0 for name in _head_group_names()})
    groups.update({name: 0 for name in OTHER_GROUPS})
    tensors = 0
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor) or key.endswith("dummy_buffer"):
            continue
        tensors += 1
        group = next(
            (prefix.split(".")[1] for prefix in HEAD_GROUPS if key.startswith(prefix)),
            None,
        ) or next(
            (name for name, prefix in OTHER_GROUPS.items() if key.startswith(prefix)),
            "backbone",
        )
        groups[group] += _numel(value)
    heads = sum(groups[name] for name in _head_group_names())
    return {
        "total": sum(groups.values()),
        "heads_total": heads,
        "groups": groups,
        "tensors": tensors,
    }


def _load_buffer(value: torch.Tensor):
    # metatensor's own binary format, parsed by compiled code: no pickle involved
    import metatensor.torch as mts

    try:
        return mts.load_buffer(value.cpu())
    except Exception:
        return None


def composition_weights(
    state_dict: Dict[str, Any], target: str, unit: str
) -> Dict[str, Any]:
    """Per-element energy offsets of the composition model for ``target``.

    They live in a serialized metatensor buffer
    ``additive_models.<i>.<target>_composition_buffer``; a buffer that does not
    decode is reported, not guessed.
    """
    suffix = f".{target}_composition_buffer"
    key = next(
        (
            key
            for key in state_dict
            if key.startswith("additive_models.") and key.endswith(suffix)
        ),
        None,
    )
    if key is None:
        return {"error": "no composition buffer for this target"}
    tensor_map = _load_buffer(state_dict[key])
    if tensor_map is None or len(tensor_map) != 1:
        return {"error": f"could not decode '{key}' as a single-block TensorMap"}
    block = tensor_map.block()
    if "center_type" not in block.samples.names or block.values.shape[1:] != (1,):
        return {"error": f"'{key}' is not laid out as one weight per atomic type"}
    types = block.samples.column("center_type").tolist()
    weights = block.values.reshape(-1).tolist()
    return {
        "unit": f"{unit} per atom" if unit else "",
        "buffer": key,
        "weights": {
            _element(z)["symbol"]: weight
            for z, weight in zip(types, weights, strict=True)
        },
    }


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
    heads = ", ".join(f"{name} {groups[name]}" for name in _head_group_names())
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


def _head_group_names() -> List[str]:
    return [prefix.split(".")[1] for prefix in HEAD_GROUPS]


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
        "    # mtt::energy_<level> or energy/<level>; reusing a checkpoint target",
        f"    # name ({', '.join(summary['targets']) or name}) keeps its heads and "
        "composition weights",
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


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())


__all__: List[str] = [
    "composition_weights",
    "count_parameters",
    "describe_checkpoint",
    "format_summary",
    "options_snippet",
    "register",
    "run",
    "verify_checkpoint",
]
