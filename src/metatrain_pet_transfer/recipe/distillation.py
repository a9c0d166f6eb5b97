"""Keep the pretrained energy heads valid while the backbone moves.

With ``full`` or ``lora``, metatrain drops every pretrained head the run has no labels
for: the backbone changes under them, so they would predict nonsense. With
``training.keep_pretrained_heads``, those energy heads stay in the model and are
trained on what the *pretrained* model (the one in ``finetune.read_from``, loaded
untouched) predicts for the run's own frames, computed once before the first step
("learning without forgetting"). So:

- the exported model still serves the old level of theory next to the new one;
- the validation errors of the kept heads (energies and forces against the
  pretrained model's), logged every epoch like any target's, measure what the
  transfer forgot: the old level's drift;
- the backbone is tied to what it knew, which regularises a transfer from few labels.

By default the kept heads train on the pretrained *energies* only
(:class:`EnergiesOnlyTraining`): a force label costs a second backward pass through
the force computation of every step (1.47x the time per epoch on the PBE0
benchmark, against 1.11x for energies only), an energy
label costs one head. ``kept_heads_on_forces`` trains on the forces too.

Only energy heads are kept (their labels are predictions with forces); a head with a
stress/virial gradient is kept only when every structure of the run is periodic.
"""

import logging
from dataclasses import dataclass, field
from typing import Dict, List

import metatensor.torch as mts
import torch

# the sample class of metatrain's datasets: it takes names such as "mtt::energy_x"
from metatensor.learn.data._namedtuple import namedtuple
from metatensor.torch import Labels
from metatrain.utils.data import TargetInfo
from metatrain.utils.evaluate_model import evaluate_model
from metatrain.utils.io import model_from_checkpoint

from ..checkpoints import load_checkpoint_safely
from ..parallel.rank_zero import on_rank_zero
from .datasets import DatasetLike, evaluation_batches, systems_of
from .replay import ReplayDraws, check_replay_options, replay_subset
from .strategies.loop_events import Strategy


logger = logging.getLogger(__name__)

#: finetuning methods that change the backbone (metatrain drops stale heads there)
BACKBONE_METHODS = ("full", "lora")


def heads_to_keep(model, method: str, datasets: List[DatasetLike]) -> List[str]:
    """Pretrained energy heads that this run would drop and that can be kept."""
    if method not in BACKBONE_METHODS:
        return []  # `heads` leaves the backbone, hence every old head, untouched
    stale = list(getattr(model, "_stale_finetune_targets", None) or [])
    keep = []
    for name in stale:
        info = model.dataset_info.targets.get(name)
        if info is None or info.quantity != "energy":
            continue
        if "strain" in info.gradients and not _all_periodic(datasets):
            logger.warning(
                f"training.keep_pretrained_heads: '{name}' has stress/virial outputs "
                "but some structures of this run are not periodic; it is dropped, "
                "as metatrain does"
            )
            continue
        keep.append(name)
    return keep


def _all_periodic(datasets: List[DatasetLike]) -> bool:
    return all(bool(system.pbc.all()) for system in systems_of(datasets))


def load_pretrained(read_from: str, dtype: torch.dtype, device: torch.device):
    """The model of ``finetune.read_from`` as metatrain's fine-tuning loads it,
    before any change, ready to predict."""
    model = model_from_checkpoint(load_checkpoint_safely(read_from), "finetune")
    model.to(device=device, dtype=dtype)
    for additive_model in model.additive_models:
        additive_model.to(dtype=torch.float64)  # as PET's trainer does
    model.scaler.to(dtype=torch.float64)
    return model.eval()


def pretrained_predictions(
    pretrained,
    targets: Dict[str, TargetInfo],
    datasets: List[DatasetLike],
    batch_size: int,
    dtype: torch.dtype,
) -> List[Dict[str, List[mts.TensorMap]]]:
    """The pretrained model's predictions for ``targets``, one float64 CPU
    TensorMap per structure, per dataset (picklable: a multi-process run computes
    them on rank 0 and sends them to the other ranks)."""
    result = []
    for dataset in datasets:
        predictions: Dict[str, List[mts.TensorMap]] = {name: [] for name in targets}
        if len(dataset) == 0:
            result.append(predictions)
            continue
        # only the systems: the loader must not collate the run's own targets
        systems_only = _Fields(dataset, ["system"])
        offset = 0
        for systems, _, _ in evaluation_batches(
            pretrained, [systems_only], batch_size, dtype, []
        ):
            outputs = evaluate_model(pretrained, systems, targets, is_training=False)
            for name in targets:
                predictions[name].extend(
                    _per_structure(mts.detach(outputs[name]), len(systems), offset)
                )
            offset += len(systems)
        result.append(predictions)
    return result


def with_labels(
    datasets: List[DatasetLike], predictions: List[Dict[str, List[mts.TensorMap]]]
) -> List[DatasetLike]:
    """Views of ``datasets`` whose samples also hold ``predictions`` as labels
    (datasets without structures are returned as they are)."""
    return [
        _WithLabels(dataset, labels) if len(dataset) > 0 else dataset
        for dataset, labels in zip(datasets, predictions, strict=True)
    ]


class _Fields(torch.utils.data.Dataset):
    """Some fields of ``dataset``'s samples, read from it on demand."""

    def __init__(self, dataset: DatasetLike, fields: List[str]):
        self.dataset = dataset
        self.fields = fields
        self._sample = namedtuple("Sample", fields)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        sample = self.dataset[index]._asdict()
        return self._sample(*(sample[field] for field in self.fields))


class _WithLabels(torch.utils.data.Dataset):
    """``dataset`` with per-structure labels added to its samples.

    The structures are read from ``dataset`` on demand, as metatrain reads them:
    a disk-backed dataset (``DiskDataset``) stays on disk; only the labels (one
    small TensorMap per structure) are held in memory.
    """

    def __init__(self, dataset: DatasetLike, labels: Dict[str, List[mts.TensorMap]]):
        self.dataset = dataset
        self.labels = labels
        fields = list(dataset[0]._asdict()) if len(dataset) > 0 else []
        self._sample = namedtuple("Sample", fields + list(labels))

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        sample = self.dataset[index]._asdict()
        extra = [self.labels[name][index] for name in self.labels]
        return self._sample(*sample.values(), *extra)

    def get_num_atoms(self, index: int) -> int:
        """Atom count of a structure (for ``max_atoms_per_batch``)."""
        return len(self.dataset[index]._asdict()["system"])


def _teacher_labels(
    read_from: str,
    kept: List[str],
    splits: List[List[DatasetLike]],
    with_forces: List[bool],
    batch_size: int,
    dtype: torch.dtype,
    device: torch.device,
) -> List[List[Dict[str, List[mts.TensorMap]]]]:
    """The pretrained model's predictions for each split; with their gradients
    (forces, stress) where ``with_forces`` says so, energies only elsewhere."""
    pretrained = load_pretrained(read_from, dtype, device)
    full = {name: pretrained.dataset_info.targets[name] for name in kept}
    energies = {name: energies_only(info) for name, info in full.items()}
    return [
        pretrained_predictions(
            pretrained, full if forces else energies, datasets, batch_size, dtype
        )
        for datasets, forces in zip(splits, with_forces, strict=True)
    ]


def energies_only(info: TargetInfo) -> TargetInfo:
    """``info`` without its gradients: an energy trained and predicted without
    forces or stress."""
    return TargetInfo(
        layout=mts.remove_gradients(info.layout),
        quantity=info.quantity,
        unit=info.unit,
        description=info.description,
    )


class EnergiesOnlyTraining(Strategy):
    """The kept heads train on energies, and are validated on forces too.

    PET's loop computes the gradients (forces, stress) of each energy whose
    ``TargetInfo`` in ``model.dataset_info.targets`` has them, for training and for
    validation alike, and builds its loss from those infos once, before the first
    epoch. Within this block the kept heads' infos are energies-only: no force
    computation and no force loss for them in the training steps. For each
    validation pass their full infos are put back, so the validation errors logged
    every epoch hold the old level's force drift too (not in the validation loss:
    the loss was built energies-only). Leaving the block puts the full infos back
    for good: checkpoints and the exported model keep them.
    """

    def __init__(self, model, kept: List[str]):
        self.targets = model.dataset_info.targets  # PET reads this very dict
        self.full = {name: self.targets[name] for name in kept}
        self.energies = {name: energies_only(info) for name, info in self.full.items()}

    def __enter__(self) -> "EnergiesOnlyTraining":
        self.targets.update(self.energies)
        return self

    def __exit__(self, *exception) -> None:
        self.targets.update(self.full)

    def training_epoch_starts(self, epoch: int) -> None:
        self.targets.update(self.energies)

    def validation_starts(self, epoch: int) -> None:
        self.targets.update(self.full)


def _per_structure(
    tensor_map: mts.TensorMap, count: int, offset: int
) -> List[mts.TensorMap]:
    """Split a batch prediction into one float64 CPU TensorMap per structure, with
    the structure's index in its dataset as ``system`` (as metatrain's readers do)."""
    selections = [
        Labels(["system"], torch.tensor([[i]], device="cpu")) for i in range(count)
    ]
    parts = mts.split(tensor_map.to("cpu", torch.float64), "samples", selections)
    result = []
    for index, part in enumerate(parts):
        blocks = []
        for block in part.blocks():
            new = mts.TensorBlock(
                values=block.values,
                samples=Labels(
                    block.samples.names,
                    _renumber_system(block.samples, offset + index),
                ),
                components=block.components,
                properties=block.properties,
            )
            for parameter, gradient in block.gradients():
                new.add_gradient(parameter, gradient.copy())
            blocks.append(new)
        result.append(mts.TensorMap(part.keys, blocks))
    return result


def _renumber_system(samples: Labels, system: int) -> torch.Tensor:
    values = samples.values.clone()
    values[:, samples.names.index("system")] = system
    return values


def refuse_scale_fit_with_kept_heads(model, hypers: dict) -> None:
    """Stop before training where metatrain's scale fit would meet the kept heads.

    PET fits the output scale of each new target (``scale_targets``) on the training
    labels, unless every new target has a fixed one (the alignment gives them the
    pretrained head's). That fit reads every label of the batches, the kept heads'
    too, and fails on them with a ``KeyError`` (they are not new targets). Measured
    with ``alignment: false``; also the case of a new target the alignment does not
    cover (not an energy).
    """
    fixed = hypers.get("fixed_scaling_weights") or {}
    if not hypers.get("scale_targets", True) or isinstance(fixed, str):
        return
    unfixed = [name for name in model.scaler.new_outputs if name not in fixed]
    if unfixed:
        raise ValueError(
            "training.keep_pretrained_heads: the output scale of "
            f"{', '.join(repr(n) for n in unfixed)} would be fitted on the training "
            "labels (training.scale_targets), which metatrain cannot do next to a "
            "kept pretrained head. Use the alignment (training.alignment: null or "
            "true: new energy targets start with the pretrained head's scale), set "
            "training.scale_targets: false, or give training.fixed_scaling_weights "
            f"for {', '.join(repr(n) for n in unfixed)}"
        )


def stop_dropping(model, kept: List[str]) -> None:
    """metatrain drops the heads of ``model._stale_finetune_targets`` when the
    training starts: ``kept`` are taken off that list."""
    model._stale_finetune_targets = [
        name for name in model._stale_finetune_targets if name not in kept
    ]


def keep_pretrained_level(model, kept: List[str]) -> None:
    """``lora``: keep the pretrained heads ``kept`` untouched, served by the backbone
    without its adapters (:mod:`.pretrained_level`): the old level exactly, with no
    labels and no training for it."""
    stop_dropping(model, kept)
    model.pretrained_level = kept
    for name in kept:
        logger.info(
            f"Keeping the pretrained head '{name}' exactly: with lora it is served "
            "by the pretrained backbone without the adapters (the pretrained "
            "model's own predictions, untrained); the new targets use the adapted "
            "backbone"
        )


@dataclass
class KeptHeads:
    """What :func:`keep_pretrained_heads` gives the trainer."""

    train: List[DatasetLike]
    """the training datasets, with the kept heads' labels (teacher labels added,
    or the replay set appended)"""
    val: List[DatasetLike]
    """the validation datasets, with the kept heads' teacher labels"""
    kept: List[str] = field(default_factory=list)
    """the heads kept and trained"""
    energies_only: List[str] = field(default_factory=list)
    """the kept heads whose training labels are energies only
    (:class:`EnergiesOnlyTraining`)"""
    strategies: List[Strategy] = field(default_factory=list)
    """events of the loop the kept heads need (the replay's draws)"""


def keep_pretrained_heads(
    model,
    hypers: dict,
    train_datasets: List[DatasetLike],
    val_datasets: List[DatasetLike],
    dtype: torch.dtype,
    fresh_start: bool = True,
) -> KeptHeads:
    """Keep the pretrained energy heads this run would drop, with labels.

    ``lora`` keeps them exactly (:func:`keep_pretrained_level`); ``full`` trains
    them on the pretrained model's predictions for the run's frames, or with
    ``training.replay`` on real old-level labels (:mod:`.replay`). On a fresh
    start, a run whose scale fit would meet the kept heads stops here, before the
    pretrained model's pass (:func:`refuse_scale_fit_with_kept_heads`).
    """
    method = hypers["finetune"]["method"]
    replay = check_replay_options(hypers)
    kept = heads_to_keep(model, method, train_datasets + val_datasets)
    if not kept:
        return KeptHeads(train_datasets, val_datasets)
    if method == "lora":
        # exact: served by the backbone without its adapters, never trained
        keep_pretrained_level(model, kept)
        return KeptHeads(train_datasets, val_datasets)
    if fresh_start:  # a restart loads its fitted scales: no scale fit to meet
        refuse_scale_fit_with_kept_heads(model, hypers)
    strategies: List[Strategy] = []
    n_train = sum(map(len, train_datasets))
    if replay is not None:
        subset, infos = replay_subset(
            replay, model, kept, n_train, hypers["batch_size"], torch.initial_seed()
        )
        # every kept head has replay labels (read_replay checks it)
        on_forces = {name: bool(infos[name].gradients) for name in kept}
        strategies.append(ReplayDraws(subset))
    else:
        forces = hypers.get("kept_heads_on_forces", False)
        on_forces = {name: forces for name in kept}
    device = next(model.parameters()).device
    # computed once (on rank 0 of a multi-process run), the same labels everywhere;
    # validation always with forces: their errors are the old level's drift
    splits = [val_datasets] if replay is not None else [train_datasets, val_datasets]
    labels = on_rank_zero(
        _teacher_labels,
        hypers["finetune"]["read_from"],
        kept,
        splits,
        [True] if replay is not None else [all(on_forces.values()), True],
        hypers["batch_size"],
        dtype,
        device,
    )
    val = with_labels(val_datasets, labels[-1])
    if replay is not None:
        train = list(train_datasets) + [subset]
    else:
        train = with_labels(train_datasets, labels[0])
    stop_dropping(model, kept)
    for name in kept:
        what = "energies and forces" if on_forces[name] else "energies"
        source = (
            f"the {what} of {subset.size} replay structures per epoch"
            if replay is not None
            else f"the pretrained model's own {what} for the {n_train} training "
            "structures"
        )
        logger.info(
            f"Keeping the pretrained head '{name}' valid: it is trained on {source}; "
            "its validation errors (energies and forces against the pretrained "
            "model's) are the old level's drift"
        )
    energies_only = [name for name in kept if not on_forces[name]]
    return KeptHeads(train, val, kept, energies_only, strategies)
