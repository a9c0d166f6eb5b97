"""Reading a checkpoint into a JSON-ready summary, without running code from it.

Every read goes through :func:`load_checkpoint_safely` (``weights_only=True`` with a
minimal allow-list). The summary holds what a user needs before writing
``options.yaml``: targets and their heads, atomic types, cutoff, model hypers,
composition weights, parameter counts by group, versions and fine-tuning history.
"""

from pathlib import Path
from typing import Any, Dict, List

import torch

from ...checkpoints import (
    PET_ARCHITECTURES,
    CheckpointError,
    check_pretrained_checkpoint,
    is_exported_model,
    load_checkpoint_safely,
    where_is_the_checkpoint,
)


#: state-dict prefixes of the per-target heads, as PET names them
HEAD_GROUPS = (
    "backend.node_heads.",
    "backend.edge_heads.",
    "backend.node_last_layers.",
    "backend.edge_last_layers.",
)
#: the other parameter groups a transfer treats differently from the backbone
OTHER_GROUPS = {"composition": "additive_models.", "scaler": "scaler."}


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
    if is_exported_model(path):
        raise CheckpointError(
            f"'{path}' is an exported TorchScript model, not a checkpoint: inspect "
            "and --verify read .ckpt files (the one it was exported from). "
            + where_is_the_checkpoint(path)
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
    # how each target is read out of PET's per-atom predictions (recipe/readouts.py)
    readouts = checkpoint.get("pet_transfer_readouts") or {}
    for name, target in targets.items():
        target["readout"] = readouts.get(name, "sum")
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
    groups.update({name: 0 for name in head_group_names()})
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
    heads = sum(groups[name] for name in head_group_names())
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


def head_group_names() -> List[str]:
    """Short names of the head groups (``node_heads``, ...), as reports show them."""
    return [prefix.split(".")[1] for prefix in HEAD_GROUPS]
