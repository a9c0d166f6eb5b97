"""Alignment start: new energy heads begin as "pretrained model + per-element shift".

A new level of theory mostly differs from the pretrained one by per-element reference
energies (total energies of xTB and DFT differ by ~10^3 eV) and by a smaller,
smoother correction. metatrain's native fine-tuning gives a new energy target a
random head and a composition model fitted to the raw labels, so the first epochs are
spent rediscovering what the pretrained head already knows. Here, before the first
optimizer step, each new energy target:

- copies the heads and last layers of a pretrained energy head (through metatrain's
  own ``inherit_heads``),
- keeps that head's output scale (``fixed_scaling_weights``), converted into the
  unit the new target declares: the scaler multiplies the head's output, so a
  target in Hartree gets the pretrained scale (eV) times eV -> Hartree, and the
  copied head predicts in Hartree,
- gets composition weights fitted by least squares on the *residual*: the new labels
  minus the pretrained model's predictions (``atomic_baseline``), both in the
  target's unit.

Every number here is in the unit of the target's labels (metatomic's unit
conversion between the checkpoint's unit and the declared one), as metatrain's
losses, metrics and exported model are. Labels whose size disagrees with the
pretrained predictions by a unit factor (Hartree data declared ``eV``) get a warning
naming the unit they look like (:mod:`.units`).

An energy target that already exists in the checkpoint (say ``energy`` with PBE0
labels) is a trap in native metatrain, which keeps the checkpoint's composition
weights for it; its composition is refitted the same way (on the residual of its own
pretrained head), which changes nothing when the labels are at the checkpoint's
level, and moves the reference energies when they are not.

The zero-shot errors of the aligned model are logged for the training and validation
sets, and returned for the run report.
"""

import copy
import logging
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import metatensor.torch as mts
import numpy as np
import torch
from metatrain.utils.data import TargetInfo
from metatrain.utils.evaluate_model import evaluate_model
from metatrain.utils.metrics import MAEAccumulator, RMSEAccumulator
from metatrain.utils.per_atom import average_by_num_atoms

from .datasets import DatasetLike, evaluation_batches, trained_targets
from .units import (
    force_products,
    format_metrics,
    label_slope,
    to_ev,
    unit_factor,
    unit_mismatch,
)


logger = logging.getLogger(__name__)


@dataclass
class AlignedTarget:
    """How one energy target starts: from which pretrained head, with which shift."""

    target: str
    source: str
    is_new: bool
    composition: Dict[int, float] = field(default_factory=dict)
    """composition weights (target's unit per atom of each type) given to it"""
    shift: Dict[int, float] = field(default_factory=dict)
    """composition weights minus the source's: the fitted per-element shift"""
    unit: str = ""
    """the target's declared unit, of ``composition``, ``shift`` and ``zero_shot``"""
    source_unit: str = ""
    """the pretrained head's unit (the checkpoint's)"""
    unit_factor: float = 1.0
    """``source_unit`` -> ``unit``, applied to the pretrained head's output scale"""
    label_slope: Optional[float] = None
    """labels against the converted pretrained predictions (:func:`.label_slope`)"""
    zero_shot: Dict[str, Dict[str, float]] = field(default_factory=dict)
    """``{"training"|"validation": {metric name: value}}`` before any step"""


def new_targets(model) -> List[str]:
    """Energy-like targets added by this run (not in the pretrained checkpoint)."""
    return list(model.additive_models[0]._new_outputs)


def choose_sources(
    model,
    targets: Dict[str, TargetInfo],
    inherit_heads: Dict[str, str],
    alignment: Optional[bool],
) -> Dict[str, str]:
    """Pick, for each trained energy target, the pretrained head it starts from.

    :param model: the PET model after ``restart`` (old and new targets)
    :param targets: targets trained in this run
    :param inherit_heads: the user's ``finetune.inherit_heads`` mapping
    :param alignment: the ``alignment`` option (``None`` means automatic)
    :return: ``{target: source}``; a target existing in the checkpoint is its own
        source, whatever ``alignment`` says (see the module docstring)
    """
    added = set(new_targets(model))
    pretrained_energies = [
        name
        for name, info in model.dataset_info.targets.items()
        if name not in added and info.quantity == "energy"
    ]
    sources = {}
    for name, info in targets.items():
        if info.quantity != "energy":
            continue
        if name not in added:
            sources[name] = name
            continue
        if alignment is False:
            continue
        source = inherit_heads.get(name)
        if source is None:
            if "energy" in pretrained_energies:
                source = "energy"
            elif len(pretrained_energies) == 1:
                source = pretrained_energies[0]
            elif alignment:
                raise ValueError(
                    f"training.alignment is true but the checkpoint has "
                    f"{len(pretrained_energies)} energy heads "
                    f"({pretrained_energies or 'none'}): choose the one '{name}' "
                    "starts from with training.finetune.inherit_heads"
                )
            else:
                logger.info(
                    f"No single pretrained energy head to align '{name}' with "
                    f"(found {pretrained_energies}): it starts from random heads"
                )
                continue
        if source not in pretrained_energies:
            raise ValueError(
                f"'{name}' should start from the pretrained head '{source}' "
                f"(training.finetune.inherit_heads), but the checkpoint's energy "
                f"heads are {pretrained_energies}"
            )
        sources[name] = source
    return sources


@dataclass
class _Predictions:
    """Pretrained predictions for one dataset: per-structure atom counts and
    energies, and the errors of the gradients (forces, virials), which the
    per-element shift does not change, accumulated batch by batch. Nothing of
    the size of the data (systems, neighbor lists, forces) is kept: a
    disk-backed dataset is read one batch at a time."""

    counts: np.ndarray  # (n_structures, n_types)
    labels: np.ndarray  # (n_structures,) total energies
    predicted: np.ndarray  # (n_structures,) total energies
    rmse: RMSEAccumulator
    mae: MAEAccumulator
    force_products: np.ndarray = field(default_factory=lambda: np.zeros(3))
    """:func:`.units.force_products` summed over the batches"""


def _predict(
    model,
    source: str,
    target: str,
    target_info: TargetInfo,
    datasets: List[DatasetLike],
    batch_size: int,
    dtype: torch.dtype,
    per_structure_targets: List[str],
    factor: float = 1.0,
) -> _Predictions:
    """Run the pretrained ``source`` head (with its gradients) on the labels of
    ``target``, as ``mtt eval`` would: raw labels, full model prediction, times
    ``factor`` (the source's unit into the target's)."""
    counts, labels, predicted = [], [], []
    rmse, mae = RMSEAccumulator(), MAEAccumulator()
    products = np.zeros(3)
    for systems, targets, extra_data in evaluation_batches(
        model, datasets, batch_size, dtype, [target]
    ):
        prediction = evaluate_model(
            model, systems, {source: target_info}, is_training=False
        )[source]
        prediction = mts.multiply(mts.detach(prediction), factor)
        products += force_products(targets[target], prediction)
        counts.append(type_counts(systems, model.atomic_types))
        labels.append(targets[target].block().values.detach().cpu().double())
        predicted.append(prediction.block().values.detach().cpu().double())
        # the energies' errors are recomputed with the shift; these are for the
        # gradients, which it does not change
        averaged = average_by_num_atoms(
            {target: prediction}, systems, per_structure_targets
        )
        label = average_by_num_atoms(
            {target: targets[target]}, systems, per_structure_targets
        )
        rmse.update(averaged, label, extra_data)
        mae.update(averaged, label, extra_data)
    if not counts:
        empty = np.zeros(0)
        n_types = len(model.atomic_types)
        return _Predictions(np.zeros((0, n_types)), empty, empty, rmse, mae)
    return _Predictions(
        np.concatenate(counts),
        torch.cat(labels).reshape(-1).numpy(),
        torch.cat(predicted).reshape(-1).numpy(),
        rmse,
        mae,
        products,
    )


def type_counts(systems, atomic_types: List[int]) -> np.ndarray:
    """(structures, types) atom counts of a batch, counted where the systems are:
    one copy to the host per batch, not one per structure."""
    known = torch.tensor(atomic_types, device=systems[0].types.device)
    rows = [(system.types.reshape(-1, 1) == known).sum(dim=0) for system in systems]
    return torch.stack(rows).cpu().numpy().astype(np.float64)


def _fit_shift(predictions: _Predictions) -> np.ndarray:
    """Per-element shift minimizing ``|labels - predicted - counts @ shift|^2``.

    Elements absent from the data get no shift (minimum-norm solution)."""
    residual = predictions.labels - predictions.predicted
    shift, *_ = np.linalg.lstsq(predictions.counts, residual, rcond=None)
    return shift


def _zero_shot_metrics(
    predictions: _Predictions,
    shift: np.ndarray,
    target: str,
    per_structure_targets: List[str],
) -> Dict[str, float]:
    """Errors of "pretrained + shift" against the labels, with metatrain's metric
    names and conventions (energies per atom, as in the training log)."""
    if len(predictions.labels) == 0:
        return {}
    errors = predictions.labels - predictions.predicted - predictions.counts @ shift
    if target not in per_structure_targets:
        errors = errors / predictions.counts.sum(axis=1)
    rmse = copy.deepcopy(predictions.rmse)
    mae = copy.deepcopy(predictions.mae)
    # the accumulators' (sum, count) of the energies, with the shift applied
    rmse.information[target] = (float((errors**2).sum()), len(errors))
    mae.information[target] = (float(np.abs(errors).sum()), len(errors))
    not_per_atom = ["positions_gradients"] + per_structure_targets
    metrics = rmse.finalize(not_per_atom=not_per_atom)
    metrics.update(mae.finalize(not_per_atom=not_per_atom))
    return metrics


def _composition_weights(model, target: str) -> Dict[int, float]:
    weights = model.additive_models[0].model.weights[target].block().values
    return {
        int(t): float(w)
        for t, w in zip(model.atomic_types, weights.reshape(-1).tolist(), strict=True)
    }


def _set_composition_weights(model, target: str, weights: Dict[int, float]) -> None:
    composition = model.additive_models[0]
    tensor_map = composition.model.weights[target]
    values = tensor_map.block().values
    values[:] = torch.tensor(
        [weights[t] for t in model.atomic_types],
        dtype=values.dtype,
        device=values.device,
    ).reshape(values.shape)
    # the buffer is what checkpoints store; keep it in sync, as metatrain's fit does
    composition.register_buffer(
        f"{target}_composition_buffer",
        mts.save_buffer(mts.make_contiguous(tensor_map.to("cpu", torch.float64))).to(
            composition.dummy_buffer.device
        ),
    )


def set_existing_compositions(model, results: List[AlignedTarget]) -> None:
    """Give ``model`` the aligned composition of the targets it already had.

    :func:`align` sets them itself; a rank that received ``align``'s results from
    rank 0 of a multi-process run calls this instead (setting them twice is
    harmless). New targets need nothing: their composition is in the hypers.
    """
    for result in results:
        if not result.is_new:
            _set_composition_weights(model, result.target, result.composition)


def _scale(model, target: str) -> float:
    return float(model.scaler.model.scales[target].block().values.reshape(-1)[0])


def align(
    model,
    hypers: dict,
    train_datasets: List[DatasetLike],
    val_datasets: List[DatasetLike],
    dtype: torch.dtype,
) -> tuple[dict, List[AlignedTarget]]:
    """Prepare the aligned start for every trained energy target.

    :param model: the PET model after ``restart``, before training
    :param hypers: the trainer hypers (not modified)
    :param train_datasets: training datasets of this run
    :param val_datasets: validation datasets of this run
    :param dtype: the training dtype
    :return: the trainer hypers to train with (``inherit_heads``,
        ``atomic_baseline`` and ``fixed_scaling_weights`` filled in) and what was
        done for each target
    """
    hypers = copy.deepcopy(hypers)
    finetune = hypers["finetune"]
    targets = trained_targets(model, train_datasets)
    sources = choose_sources(
        model, targets, finetune.get("inherit_heads", {}), hypers["alignment"]
    )
    if not sources:
        return hypers, []
    if isinstance(hypers["atomic_baseline"], str):
        logger.info(
            "training.atomic_baseline is a checkpoint: composition weights are "
            "taken from it, no alignment of the energy references"
        )
        return hypers, []

    was_training = model.training
    model.eval()
    model.to(dtype=dtype)
    results = []
    try:
        for target, source in sources.items():
            if target in hypers["atomic_baseline"]:
                logger.info(
                    f"training.atomic_baseline sets the composition of '{target}': "
                    "kept as given, no alignment for it"
                )
                continue
            info = targets[target]
            # the pretrained head predicts in the checkpoint's unit, the labels
            # are in the declared one
            factor = unit_factor(model.dataset_info.targets[source], info)
            batch_size = hypers["batch_size"]
            per_structure = hypers["per_structure_targets"]
            train, val = (
                _predict(
                    model,
                    source,
                    target,
                    info,
                    datasets,
                    batch_size,
                    dtype,
                    per_structure,
                    factor,
                )
                for datasets in (train_datasets, val_datasets)
            )
            shift = _fit_shift(train)
            source_weights = _composition_weights(model, source)
            composition = {
                t: factor * source_weights[t] + float(s)
                for t, s in zip(model.atomic_types, shift, strict=True)
            }
            result = AlignedTarget(
                target=target,
                source=source,
                is_new=target != source,
                unit=info.unit,
                source_unit=model.dataset_info.targets[source].unit,
                unit_factor=factor,
                composition=composition,
                shift={
                    t: float(s) for t, s in zip(model.atomic_types, shift, strict=True)
                },
                zero_shot={
                    split: _zero_shot_metrics(
                        predictions, shift, target, hypers["per_structure_targets"]
                    )
                    for split, predictions in [("training", train), ("validation", val)]
                },
                label_slope=label_slope(
                    train.force_products, train.counts, train.labels, train.predicted
                ),
            )
            results.append(result)
            if result.is_new:
                # metatrain's composition trainer takes these as fixed weights
                hypers["atomic_baseline"][target] = composition
                finetune.setdefault("inherit_heads", {})[target] = source
                if hypers["scale_targets"] and not isinstance(
                    hypers["fixed_scaling_weights"], str
                ):
                    # the scaler multiplies the copied head's output: in the
                    # target's unit
                    hypers["fixed_scaling_weights"].setdefault(
                        target, factor * _scale(model, source)
                    )
            else:
                # metatrain only fits new targets: set the existing one directly
                _set_composition_weights(model, target, composition)
            _log(result, train, model.dataset_info.length_unit)
    finally:
        model.train(was_training)
    return hypers, results


def _log(result: AlignedTarget, train: _Predictions, length_unit: str) -> None:
    shift = np.array(list(result.shift.values()))
    per_atom = train.counts @ shift / train.counts.sum(axis=1)
    mean_shift = float(np.mean(np.abs(per_atom)))
    unit = result.unit or "(no unit)"
    converted = ""
    if result.unit_factor != 1.0:
        converted = (
            f"; the pretrained head's {result.source_unit} converted to "
            f"{result.unit} (x{result.unit_factor:.6g})"
        )
    if result.is_new:
        logger.info(
            f"Alignment: '{result.target}' starts from the pretrained "
            f"'{result.source}' head plus a per-element shift (mean |shift| "
            f"{mean_shift:.4g} {unit}/atom{converted})"
        )
    else:
        message = (
            f"'{result.target}' exists in the checkpoint: its composition weights are "
            f"refitted on the residual of its pretrained head (mean |shift| "
            f"{mean_shift:.4g} {unit}/atom)"
        )
        if mean_shift * to_ev(result.unit) > 0.05:
            message += (
                "; such a shift means these labels are NOT at the checkpoint's level "
                "of theory. A new name (e.g. 'energy/<level>' or 'mtt::energy_<level>')"
                " keeps the pretrained head valid next to the new one."
            )
            logger.warning(message)
        else:
            logger.info(message)
    likely = unit_mismatch(result.label_slope, result.unit)
    if likely is not None:
        logger.warning(
            f"The labels of '{result.target}' look like {likely}, not the declared "
            f"{result.unit}: they are {result.label_slope:.4g} times what the "
            f"pretrained '{result.source}' head predicts once converted to "
            f"{result.unit} (about 1 when the unit is right). Check `unit:` of "
            f"'{result.target}' in the options (and the forces' unit: "
            f"{result.unit}/{length_unit} is assumed)"
        )
    for split, metrics in result.zero_shot.items():
        if metrics:
            logger.info(
                f"Zero-shot {split} errors: "
                f"{format_metrics(metrics, result.unit, length_unit)}"
            )
