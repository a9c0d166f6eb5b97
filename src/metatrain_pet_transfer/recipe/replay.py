"""Replay: the kept heads of a ``full`` transfer train on real old-level labels.

With ``keep_pretrained_heads`` and ``finetune.method: full`` the backbone moves, so
the kept heads must be trained to stay valid. ``training.replay`` names frames with
labels of the old level (e.g. the pre-training set), written as a ``training_set``
section of ``options.yaml`` plus a ``ratio``; as in MACE's multi-head fine-tuning,
these frames are mixed into training as a second training set whose batches hold
the kept heads' labels only. Each epoch draws a new random subset of them,
``ratio`` times the number of training structures of the new level (at least one
batch), so the cost per epoch is set by ``ratio`` and not by the size of the file,
and a long run sees much of it. The draw depends only on the run's seed and the
epoch: a ``--restart`` and every process of a multi-process run draw the same.

The run's own frames get no old-level label (no teacher pass); the kept heads'
validation errors against the pretrained model's predictions (the old level's
drift) are logged every epoch as without replay.
"""

import logging
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch
from metatrain.utils.data import TargetInfo, get_dataset
from metatrain.utils.omegaconf import expand_dataset_config
from omegaconf import OmegaConf

from .datasets import DatasetLike, systems_of
from .strategies.loop_events import Strategy


logger = logging.getLogger(__name__)

OPTION = "training.replay"

#: replay structures per training structure and epoch, when ``ratio`` is left out:
#: the largest ratio measured on the PBE0 benchmark that keeps the new level within
#: 1.03x and the time per epoch within 1.3x of the run without keeping
#: (docs/transfer.md "Keeping the old level")
DEFAULT_RATIO = 0.25

#: the keys of ``training.replay`` besides a dataset section's
REPLAY_KEYS = ("ratio",)


class ReplayError(ValueError):
    """``training.replay`` cannot be used as written."""


def replay_ratio(options: dict) -> float:
    ratio = options.get("ratio", DEFAULT_RATIO)
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or ratio <= 0:
        raise ReplayError(f"{OPTION}.ratio must be a number > 0, got {ratio!r}")
    return float(ratio)


def check_replay_options(hypers: dict) -> Optional[dict]:
    """``training.replay`` if given, after the checks that need no data: the
    option it needs (``keep_pretrained_heads``), the method it serves (``full``)
    and its ratio. Runs before any training step."""
    options = hypers.get("replay")
    if options is None:
        return None
    if not isinstance(options, dict):
        raise ReplayError(
            f"{OPTION} must be a dataset section (systems, targets) with an optional "
            f"ratio, got {options!r}"
        )
    if not hypers.get("keep_pretrained_heads", False):
        raise ReplayError(
            f"{OPTION} trains the kept pretrained heads: set "
            "training.keep_pretrained_heads: true, or remove training.replay"
        )
    method = hypers["finetune"]["method"]
    if method != "full":
        raise ReplayError(
            f"{OPTION} is for finetune.method: full; with '{method}' the kept heads "
            "are the pretrained model exactly and need no labels: remove "
            "training.replay"
        )
    if hypers.get("kept_heads_on_forces", False):
        raise ReplayError(
            "training.kept_heads_on_forces sets the labels of the teacher pass, which "
            f"{OPTION} replaces: remove it and declare forces in "
            f"{OPTION}.targets instead"
        )
    for key in ("systems", "targets"):
        if key not in options:
            raise ReplayError(
                f"{OPTION}.{key} is missing: give the frames and their old-level "
                "labels as in a training_set section, e.g. "
                "{systems: pretrain.xyz, targets: {energy: {key: energy_xtb, "
                "forces: {key: forces_xtb}}}}"
            )
    replay_ratio(options)
    return options


def read_replay(
    options: dict, model, kept: List[str]
) -> "tuple[DatasetLike, Dict[str, TargetInfo]]":
    """The replay frames, read with metatrain's readers, checked against the kept
    heads: every target must be one of them, in its unit, with no gradient the
    pretrained head lacks."""
    section = {key: value for key, value in options.items() if key not in REPLAY_KEYS}
    try:
        (expanded,) = expand_dataset_config(OmegaConf.create(section))
    except Exception as error:  # metatrain's own message, with the option named
        raise ReplayError(f"{OPTION}: {error}") from error
    path = expanded["systems"]["read_from"]
    if not Path(path).exists():
        raise ReplayError(f"{OPTION}.systems: file '{path}' does not exist")
    try:
        dataset, infos, _ = get_dataset(expanded)
    except Exception as error:
        raise ReplayError(f"{OPTION} ('{path}'): {error}") from error
    for name, info in infos.items():
        where = f"{OPTION}.targets.{name}"
        if name not in kept:
            raise ReplayError(
                f"{where}: not a pretrained head this run keeps (kept: "
                + ", ".join(repr(k) for k in kept)
                + "); replay labels the old level"
            )
        head = model.dataset_info.targets[name]
        if info.unit != head.unit:
            raise ReplayError(
                f"{where}: unit '{info.unit}' but the pretrained head '{name}' is "
                f"in '{head.unit}'"
            )
        extra = set(info.gradients) - set(head.gradients)
        if extra:
            raise ReplayError(
                f"{where}: gradients {sorted(extra)} that the pretrained head lacks"
            )
    missing = [name for name in kept if name not in infos]
    if missing:
        raise ReplayError(
            f"{OPTION}.targets: no labels for the kept head(s) "
            + ", ".join(repr(name) for name in missing)
            + "; replay must label every head it keeps"
        )
    if len(dataset) == 0:
        raise ReplayError(f"{OPTION}: '{path}' holds no structure")
    _check_replay_labels(dataset, expanded, model)
    known = set(int(t) for t in model.atomic_types)
    unknown = set()
    for system in systems_of([dataset]):
        unknown.update(set(system.types.tolist()) - known)
    if unknown:
        raise ReplayError(
            f"{OPTION} ('{path}'): atomic types {sorted(unknown)} that the pretrained "
            "model does not know; replay frames must be of the old level's elements"
        )
    return dataset, infos


def _check_replay_labels(dataset, expanded, model) -> None:
    """The label checks every training set gets (NaN or infinite labels, ...),
    with ``training.replay`` named as the section at fault."""
    from ..checks.labels import check_labels
    from ..checks.run_inputs import DatasetSection

    section = DatasetSection(
        option=OPTION,
        options=OmegaConf.to_container(expanded, resolve=True),
        datasets={"training": [dataset]},
    )
    problems = check_labels(section, model)
    if problems:
        raise ReplayError("\n".join(problems))


class ReplaySubset(torch.utils.data.Dataset):
    """A random subset of the replay frames, drawn anew at each epoch
    (:meth:`draw`); its length does not change, so PET's loaders and samplers,
    built once, stay valid. The DataLoader's worker processes are forked at the
    start of every epoch, after the draw, and see it."""

    def __init__(self, dataset: DatasetLike, size: int, seed: int):
        self.dataset = dataset
        self.size = size
        self.seed = seed
        self.indices = self._indices(0)

    def _indices(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch])
        return rng.choice(len(self.dataset), size=self.size, replace=False)

    def draw(self, epoch: int) -> None:
        self.indices = self._indices(epoch)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int):
        return self.dataset[int(self.indices[index])]

    def get_num_atoms(self, index: int) -> int:
        """Atom count of a structure (for ``max_atoms_per_batch``)."""
        return len(self[index]._asdict()["system"])


class ReplayDraws(Strategy):
    """Draws the replay subset at the start of each training epoch."""

    def __init__(self, subset: ReplaySubset):
        self.subset = subset

    def training_epoch_starts(self, epoch: int) -> None:
        self.subset.draw(epoch)


def replay_subset(
    options: dict,
    model,
    kept: List[str],
    n_train: int,
    batch_size: int,
    seed: int,
) -> "tuple[ReplaySubset, Dict[str, TargetInfo]]":
    """The replay set of this run: ``ratio * n_train`` frames per epoch (at least
    one batch, at most the whole file)."""
    dataset, infos = read_replay(options, model, kept)
    ratio = replay_ratio(options)
    size = min(len(dataset), max(batch_size, int(round(ratio * n_train))))
    labels = ", ".join(
        f"'{name}'" + (" with forces" if info.gradients else " (energies only)")
        for name, info in infos.items()
    )
    logger.info(
        f"Replay: each epoch {size} of the {len(dataset)} structures of "
        f"{OPTION} "
        f"({OPTION}.ratio {ratio:g} x {n_train} training structures) train the kept "
        f"heads {labels}"
    )
    return ReplaySubset(dataset, size, seed), infos
