"""The data side of a campaign: splits, their record, the split files.

Part of ``bench/learning_curve.py`` (planning side). Test and validation splits
stratified by molecule and nested, seeded training orders (``make_splits``); the
record in ``<out>/splits.json`` that keeps one output folder to one campaign
(``check_or_write_record``); and ``prepare``, which reads the data and the checkpoint
and writes the shared split files into a ``Campaign``, the object every run reads.
"""

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

from .settings import Pretrained, Settings, read_pretrained


# ------------------------------------------------------------------------------ splits


def quotas(counts: Dict[str, int], fraction: float) -> Dict[str, int]:
    """Per-molecule sizes of a stratified split of ``round(fraction * total)`` frames.

    Largest-remainder rounding; then, if the split is big enough, every molecule with
    two frames or more gets at least one (taken from the biggest shares), so each
    molecule appears in the split and keeps a frame for the others.
    """
    total = round(fraction * sum(counts.values()))
    exact = {mol: fraction * count for mol, count in counts.items()}
    sizes = {mol: int(math.floor(value)) for mol, value in exact.items()}
    by_remainder = sorted(counts, key=lambda mol: exact[mol] - sizes[mol], reverse=True)
    for mol in by_remainder[: max(0, total - sum(sizes.values()))]:
        sizes[mol] += 1
    if total >= len(counts):
        for mol in [m for m, count in counts.items() if count >= 2 and sizes[m] == 0]:
            donor = max(sizes, key=lambda m: sizes[m])
            if sizes[donor] > 1:
                sizes[donor] -= 1
                sizes[mol] = 1
    return sizes


def stratified_take(by_mol: Dict[str, List[int]], fraction: float, total: int):
    """Take ``fraction`` of ``total`` frames from the front of each molecule's list."""
    counts = {mol: len(frames) for mol, frames in by_mol.items()}
    sizes = quotas(counts, fraction * total / max(1, sum(counts.values())))
    taken = sorted(i for mol, frames in by_mol.items() for i in frames[: sizes[mol]])
    rest = {mol: frames[sizes[mol] :] for mol, frames in by_mol.items()}
    return taken, rest


def group_by_molecule(mols: Sequence[str], rng) -> Dict[str, List[int]]:
    """Frame indices per molecule, each list shuffled by ``rng``."""
    by_mol: Dict[str, List[int]] = {}
    for index, mol in enumerate(mols):
        by_mol.setdefault(mol, []).append(index)
    return {
        mol: list(rng.permutation(frames)) for mol, frames in sorted(by_mol.items())
    }


def make_splits(mols: Sequence[str], settings: Settings) -> dict:
    """Fixed test/validation splits and, per seed, the order training frames enter.

    The training set of size N for a seed is the first N indices of its order: the
    subsets are nested, and round-robin over molecules (a random molecule order per
    round) so that N=25 already holds 25 different molecules.
    """
    rng = np.random.default_rng(settings.split_seed)
    by_mol = group_by_molecule(mols, rng)
    total = len(mols)
    test, rest = stratified_take(by_mol, settings.test_fraction, total)
    val, pool = stratified_take(rest, settings.val_fraction, total)

    orders = {}
    for seed in settings.seeds:
        rng = np.random.default_rng([settings.split_seed, seed])
        queues = {mol: list(rng.permutation(frames)) for mol, frames in pool.items()}
        order: List[int] = []
        while any(queues.values()):
            for mol in rng.permutation(sorted(m for m, q in queues.items() if q)):
                order.append(int(queues[mol].pop(0)))
        orders[str(seed)] = order
    return {
        "test": [int(i) for i in test],
        "val": [int(i) for i in val],
        "train_order": orders,
        "pool_size": sum(len(frames) for frames in pool.values()),
    }


def resolve_n(value: str, pool_size: int) -> int:
    """``--n`` entries: an integer, or ``all`` for the whole training pool."""
    n = pool_size if value == "all" else int(value)
    if not 0 < n <= pool_size:
        raise SystemExit(f"--n {value}: the training pool has {pool_size} frames")
    return n


# ------------------------------------------------------------------ campaign metadata


def campaign_record(settings: Settings, frames, splits: dict) -> dict:
    """What must not change between runs collected in one output folder."""
    mols = [atoms.info.get("mol", "?") for atoms in frames]
    return {
        # the spec's file name: a folder of another campaign (or of none: written
        # before campaign specs) is never resumed into
        "campaign": settings.spec.name if settings.spec else None,
        "data": str(settings.data),
        "data_sha256": sha256(settings.data),
        "checkpoint": str(settings.checkpoint),
        "checkpoint_sha256": sha256(settings.checkpoint),
        "n_frames": len(frames),
        "split_seed": settings.split_seed,
        "test_fraction": settings.test_fraction,
        "val_fraction": settings.val_fraction,
        "batch_size": settings.batch_size,
        "note": "training set of size N for a seed = first N of train_order[seed]",
        "molecules_in_test": len({mols[i] for i in splits["test"]}),
        "molecules": len(set(mols)),
        **splits,
    }


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_or_write_record(path: Path, record: dict) -> None:
    """Refuse to resume into a folder whose splits or checkpoint differ.

    Seeds may be added: their training orders are appended to the record.
    """
    if path.exists():
        old = json.loads(path.read_text())
        # files are compared by content (sha256), not by the path they were read from
        paths = ("train_order", "note", "data", "checkpoint")
        fixed = [k for k in record if k not in paths]
        changed = [k for k in fixed if old.get(k) != record[k]]
        clash = [
            s
            for s, o in record["train_order"].items()
            if s in old["train_order"] and old["train_order"][s] != o
        ]
        if changed or clash:
            raise SystemExit(
                f"{path} was written for another campaign (differs in "
                f"{changed + ['train_order ' + s for s in clash]}): use another --out"
            )
        record = {**old, "train_order": {**old["train_order"], **record["train_order"]}}
    # one key a line, each list on its line: readable, and small diffs
    lines = [
        f" {json.dumps(key)}: {json.dumps(value)}" for key, value in record.items()
    ]
    write_atomically(path, "{\n" + ",\n".join(lines) + "\n}\n")


def write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


# ------------------------------------------------------------------------- the campaign


@dataclass
class Campaign:
    """The data, its splits and the pretrained model, shared by all runs."""

    settings: Settings
    frames: list
    splits: dict
    pretrained: Pretrained
    files: Dict[str, Path]  # the "val", "test" and "val_test" split files

    def training_indices(self, n: int, seed: int) -> List[int]:
        return self.splits["train_order"][str(seed)][:n]

    def subset(self, indices) -> list:
        return [self.frames[i] for i in indices]

    @property
    def val_test(self) -> list:
        return self.subset(self.splits["val"] + self.splits["test"])


def prepare(settings: Settings) -> tuple:
    """Read the data, make and record the splits, write the shared split files."""
    import ase.io

    frames = ase.io.read(settings.data, ":")
    splits = make_splits([a.info.get("mol", "?") for a in frames], settings)
    record = campaign_record(settings, frames, splits)
    settings.out.mkdir(parents=True, exist_ok=True)
    check_or_write_record(settings.out / "splits.json", record)
    files = write_split_files(settings.runs / "splits", frames, splits)
    campaign = Campaign(
        settings, frames, splits, read_pretrained(settings.checkpoint), files
    )
    return campaign, json.loads((settings.out / "splits.json").read_text())


def write_split_files(folder: Path, frames, splits: dict) -> Dict[str, Path]:
    """The validation, validation + test and test frames as extended xyz files in
    ``folder``: the ``files`` of a ``Campaign``."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, indices in [
        ("val", splits["val"]),
        ("val_test", splits["val"] + splits["test"]),
        ("test", splits["test"]),
    ]:
        files[name] = folder / f"{name}.xyz"
        write_frames_if_changed(files[name], [frames[i] for i in indices])
    return files


def write_frames_if_changed(path: Path, frames) -> None:
    """Another harness process or thread may be reading ``path``: replace it
    atomically, and only if its content would change."""
    import threading

    import ase.io

    # one temporary file per process and thread: runs of one wave write at once
    writer = f"{os.getpid()}-{threading.get_ident()}"
    temporary = path.with_name(f".{path.name}.{writer}.tmp")
    ase.io.write(temporary, frames, format="extxyz")
    if path.exists() and path.read_bytes() == temporary.read_bytes():
        temporary.unlink()
    else:
        os.replace(temporary, path)
