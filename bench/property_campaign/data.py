"""The property campaign's data: another campaign's splits, read and checked.

Part of ``bench/properties.py``. The properties are labels of the same frames as the
energy campaign's data (``pbe0_props.xyz`` is ``pbe0.xyz`` with more keys), so the
property campaign never makes splits: it reads the energy campaign's ``splits.json``
(test, validation, each seed's training order), checks that the file those splits
were made on is the one recorded there (SHA-256) and holds the same frames (atoms,
positions, molecule) in the same order as the property data, and records the splits
in its own ``<out>/splits.json`` (with the energy campaign's record checks: a folder
written with other data, checkpoint or splits is refused). Property and energy
numbers are then measured on the same test frames, with the same training sets.
"""

import json
from pathlib import Path
from typing import Dict, Tuple

import numpy as np
from transfer_campaign.settings import REPO, read_pretrained
from transfer_campaign.splits import (
    Campaign,
    check_or_write_record,
    sha256,
    write_split_files,
)

from .spec import PropertySettings
from .targets import PROPERTIES, check_labels


def same_frames(frames, others, path: Path, other_path: Path) -> None:
    """``frames`` are ``others`` (atoms, positions, molecule tag), in the same order."""
    if len(frames) != len(others):
        raise SystemExit(
            f"{path} has {len(frames)} frames, {other_path} {len(others)}: the "
            "splits of one cannot be used for the other"
        )
    for index, (atoms, other) in enumerate(zip(frames, others, strict=True)):
        if (
            len(atoms) != len(other)
            or not np.array_equal(atoms.numbers, other.numbers)
            or not np.allclose(atoms.positions, other.positions, atol=1e-8)
            or atoms.info.get("mol") != other.info.get("mol")
        ):
            raise SystemExit(
                f"{path}: frame {index} is not frame {index} of {other_path}: the "
                "splits made on one cannot be used for the other"
            )


def read_splits(settings: PropertySettings, frames) -> dict:
    """The splits of ``splits.from``, checked against the data they were made on."""
    record = json.loads(settings.splits_from.read_text())
    data = settings.splits_data
    if not data.is_file():
        raise SystemExit(f"{settings.base.spec}: splits.data: {data}: no such file")
    if sha256(data) != record.get("data_sha256"):
        raise SystemExit(
            f"{settings.splits_from} was not made on {data} (SHA-256 differs)"
        )
    import ase.io

    same_frames(frames, ase.io.read(data, ":"), settings.base.data, data)
    return {
        "test": record["test"],
        "val": record["val"],
        "train_order": {
            str(seed): record["train_order"][str(seed)] for seed in settings.base.seeds
        },
        "pool_size": record["pool_size"],
    }


def _shown(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def prepare(settings: PropertySettings) -> Tuple[Dict[str, Campaign], dict]:
    """Read the data and the splits, record them, write the shared split files.

    :return: a ``Campaign`` per property (its settings, the frames, the splits, the
        pretrained checkpoint, the split files) and the record of ``splits.json``
    """
    import ase.io

    base = settings.base
    frames = ase.io.read(base.data, ":")
    for name in settings.properties:
        check_labels(frames, PROPERTIES[name], base.data)
    splits = read_splits(settings, frames)
    record = {
        "campaign": base.spec.name if base.spec else None,
        "data": str(base.data),
        "data_sha256": sha256(base.data),
        "checkpoint": str(base.checkpoint),
        "checkpoint_sha256": sha256(base.checkpoint),
        "splits_from": _shown(settings.splits_from),
        "n_frames": len(frames),
        "batch_size": base.batch_size,
        "note": "training set of size N for a seed = first N of train_order[seed]",
        **splits,
    }
    base.out.mkdir(parents=True, exist_ok=True)
    check_or_write_record(base.out / "splits.json", record)
    files = write_split_files(base.runs / "splits", frames, splits)
    pretrained = read_pretrained(base.checkpoint)
    for name in settings.properties:  # each property's training files (train_file)
        (settings.settings_for(name).runs / "splits").mkdir(parents=True, exist_ok=True)
    campaigns = {
        name: Campaign(settings.settings_for(name), frames, splits, pretrained, files)
        for name in settings.properties
    }
    return campaigns, json.loads((base.out / "splits.json").read_text())
