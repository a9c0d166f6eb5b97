"""Transfer from GFN2-xTB to PBE0: ``pet_transfer`` side by side with native metatrain.

Every trained row goes through the path a user takes: an ``options.yaml`` written into
a run folder, ``mtt train`` and ``mtt eval`` as subprocesses. The errors are computed
here from the predictions ``mtt eval`` writes, so every row is scored by the same code
on the same frames, whatever the architecture logs.

- Splits are fixed and seeded: a test and a validation split stratified by molecule,
  and nested training subsets (the N=25 set is inside the N=50 set) drawn round-robin
  over molecules, so that small sets still cover as many molecules as possible.
- Rows that search the learning rate are scored on the validation split; the test
  error is reported for the selected learning rate only (all runs stay in the CSV).
- ``zero-shot`` trains nothing: the pretrained model plus a per-element energy shift
  fitted on the N training frames.
- Resumable: runs already in ``<out>/results.csv`` with status ``ok`` are skipped.

Usage (see bench/README.md)::

    python bench/learning_curve.py --rows zero-shot,native-full --n 100 --seeds 0 \\
        --out bench/results/pbe0_n100 --runs /tmp/bench_runs/pbe0_n100
    python bench/learning_curve.py --tiny --data tests/data/pbe0_small.xyz \\
        --checkpoint some.ckpt --out /tmp/smoke --rows native-full,zero-shot
"""

import argparse
import contextlib
import csv
import fcntl
import hashlib
import json
import math
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np


REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
#: a byte-identical copy of ../shared/data/pbe0.xyz (bench/data/README.md)
DEFAULT_DATA = REPO / "bench" / "data" / "pbe0.xyz"
DEFAULT_CHECKPOINT = SHARED / "checkpoints" / "pet_xtb.ckpt"

#: the new level, declared as a variant of ``energy`` so exported models work in ASE
NEW_TARGET = "energy/pbe0"
ENERGY_KEY, FORCES_KEY = "energy_pbe0", "forces_pbe0"


# ---------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Settings:
    """One campaign: what to run and where to put it."""

    data: Path
    checkpoint: Path
    out: Path
    runs: Path
    rows: Sequence[str]
    ns: Sequence[str]
    seeds: Sequence[int]
    epochs: int
    scratch_epochs: int
    half_epochs_from: Optional[int]
    lrs: Sequence[float]
    lr_from: Optional[int]
    scratch_lr: Optional[float]
    batch_size: int
    test_fraction: float
    val_fraction: float
    split_seed: int
    threads: int
    mtt: Path


@dataclass(frozen=True)
class Pretrained:
    """What the rows need to know about the pretrained checkpoint."""

    path: Path
    target: str  # its energy target, the source of ``inherit_heads``
    model_hypers: dict  # for the scratch row: the same network, untrained
    learning_rate: float  # its pre-training learning rate, the scratch default


@dataclass(frozen=True)
class Run:
    """One ``mtt train`` (or one zero-shot fit): a row at one N, seed and lr."""

    row: str
    n: int
    seed: int
    lr: Optional[float]  # None: the architecture's default learning rate
    epochs: int
    trains: bool = True  # False for zero-shot: no learning rate at all

    @property
    def lr_label(self) -> str:
        if not self.trains:
            return "-"
        return "default" if self.lr is None else f"{self.lr:g}"

    @property
    def key(self) -> tuple:
        return (self.row, str(self.n), str(self.seed), self.lr_label, str(self.epochs))

    @property
    def folder_name(self) -> str:
        return f"N{self.n}_s{self.seed}_lr{self.lr_label}_e{self.epochs}"


# -------------------------------------------------------------------------------- rows
# A row's architecture is a function of (run, pretrained, batch size) returning the
# `architecture:` section of options.yaml. Add a row by adding an entry to ROWS.

HEADS_CONFIG = {
    "head_modules": ["node_heads", "edge_heads"],
    "last_layer_modules": ["node_last_layers", "edge_last_layers"],
}
LORA_CONFIG = {"rank": 4, "alpha": 8}  # metatrain's own defaults for LoRA


def _training(run: Run, batch_size: int) -> dict:
    """The trainer options every row shares: the same batches and epoch budget.

    ``num_workers: 0`` keeps each training on one process (the machine is shared).
    """
    training = {"batch_size": batch_size, "num_epochs": run.epochs, "num_workers": 0}
    if run.lr is not None:
        training["learning_rate"] = run.lr
    return training


def finetuned(name: str, method: str, inherit: bool = False, **options) -> Callable:
    """A row fine-tuning the pretrained checkpoint with metatrain's ``method``.

    ``inherit`` starts the new ``energy/pbe0`` heads as copies of the pretrained
    energy heads; ``options`` go into ``architecture.training`` (plugin options).
    """

    def architecture(run: Run, pretrained: Pretrained, batch_size: int) -> dict:
        finetune = {"method": method, "read_from": str(pretrained.path)}
        if method == "heads":
            finetune["config"] = HEADS_CONFIG
        if method == "lora":
            finetune["config"] = LORA_CONFIG
        if inherit:
            finetune["inherit_heads"] = {NEW_TARGET: pretrained.target}
        training = {**_training(run, batch_size), **options, "finetune": finetune}
        return {"name": name, "training": training}

    return architecture


def plugin_defaults(run: Run, pretrained: Pretrained, batch_size: int) -> dict:
    """``pet_transfer`` as the minimal options.yaml uses it: only ``read_from``."""
    training = {
        **_training(run, batch_size),
        "finetune": {"read_from": str(pretrained.path)},
    }
    return {"name": "pet_transfer", "training": training}


def scratch(run: Run, pretrained: Pretrained, batch_size: int) -> dict:
    """Native PET with the pretrained network's hypers, from random weights."""
    return {
        "name": "pet",
        "model": pretrained.model_hypers,
        "training": _training(run, batch_size),
    }


@dataclass(frozen=True)
class Row:
    """A benchmark row: how it trains, what it predicts, which learning rates it gets.

    - ``architecture``: the function writing the ``architecture:`` section; ``None``
      for zero-shot, which trains nothing.
    - ``lr``: ``"search"`` runs every ``--lrs`` value (selected on validation),
      ``"scratch"`` the scratch learning rate, ``"default"`` none at all (the
      architecture's default).
    - ``budget``: ``"finetune"`` (``--epochs``) or ``"scratch"`` (``--scratch-epochs``).
    """

    architecture: Optional[Callable]
    target: str = NEW_TARGET
    lr: str = "search"
    budget: str = "finetune"


ROWS: Dict[str, Row] = {
    "zero-shot": Row(None, target="energy", lr="default"),
    "scratch": Row(scratch, target="energy", lr="scratch", budget="scratch"),
    "native-full": Row(finetuned("pet", "full")),
    "native-heads": Row(finetuned("pet", "heads", inherit=True)),
    "plugin-full": Row(finetuned("pet_transfer", "full", alignment=False)),
    "plugin-full-align": Row(finetuned("pet_transfer", "full", alignment=True)),
    "plugin-heads": Row(finetuned("pet_transfer", "heads", inherit=True)),
    "plugin-lora": Row(finetuned("pet_transfer", "lora", inherit=True)),
    "plugin-keep": Row(
        finetuned("pet_transfer", "full", alignment=True, keep_pretrained_heads=True)
    ),
    "native-lora": Row(finetuned("pet", "lora", inherit=True)),
    "plugin-default": Row(plugin_defaults, lr="default"),
}


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


# ---------------------------------------------------------------------- mtt, in a shell


@dataclass(frozen=True)
class Finished:
    """How an ``mtt`` command ended: exit status, wall and CPU seconds.

    CPU seconds (the command's user + system time) stay comparable when other
    jobs share the machine; wall seconds do not.
    """

    rc: int
    wall_s: float
    cpu_s: float


def mtt(settings: Settings, folder: Path, log: str, *args: str) -> Finished:
    """Run ``mtt <args>`` in ``folder`` as a user would, output to ``folder/log``.

    One thread (``--threads``) and no Python warnings in the logs.
    """
    env = dict(os.environ, OMP_NUM_THREADS=str(settings.threads))
    env["PYTHONWARNINGS"] = "ignore"
    begin, cpu_before = time.perf_counter(), children_cpu_seconds()
    with open(folder / log, "w") as stream:
        command = [str(settings.mtt), *args]
        result = subprocess.run(
            command, cwd=folder, env=env, stdout=stream, stderr=subprocess.STDOUT
        )
    return Finished(
        result.returncode,
        time.perf_counter() - begin,
        children_cpu_seconds() - cpu_before,
    )


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def error_line(log: Path) -> str:
    """The line of a failed ``mtt`` log that says what went wrong.

    metatrain's option validation prints the offending option and an explanation;
    anything else ends with a Python exception line.
    """
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines()]
    lines = [line for line in lines if line and "warn" not in line.lower()]
    for i, line in enumerate(lines):
        if line.startswith("---- [Error"):
            detail = lines[i + 1] if i + 1 < len(lines) else ""
            return f"{line.removeprefix('---- ')} {detail}"
    exceptions = [
        line for line in lines if re.match(r"^[\w.]*(Error|Exception)\b", line)
    ]
    return (exceptions or lines or ["(empty log)"])[-1][:300]


def dataset_section(path: Path, target: str) -> dict:
    """An options.yaml dataset section reading PBE0 energies and forces."""
    return {
        "systems": {"read_from": str(path), "length_unit": "angstrom"},
        "targets": {
            target: {
                "quantity": "energy",
                "key": ENERGY_KEY,
                "unit": "eV",
                "forces": {"key": FORCES_KEY},
                "stress": False,
            }
        },
    }


def write_yaml(path: Path, content: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(content, sort_keys=False))
    return path


def mtt_eval(
    model: Path, frames_file: Path, target: str, folder: Path, settings: Settings
):
    """``mtt eval`` of ``model`` on ``frames_file``, predictions to predictions.xyz."""
    write_yaml(folder / "eval.yaml", dataset_section(frames_file, target))
    options = ["-o", "predictions.xyz", "-b", "8", "--no-warm-up"]
    finished = mtt(
        settings, folder, "eval.log", "eval", str(model), "eval.yaml", *options
    )
    return folder / "predictions.xyz", finished


# ----------------------------------------------------------------------------- metrics


def read_predictions(path: Path, target: str, reference):
    """Energies (eV) and forces (eV/Å) that ``mtt eval`` wrote, frame by frame.

    ``mtt eval`` stores ``<target>_positions_gradients`` (dE/dr), so forces are its
    negative. The geometries are checked against ``reference`` so a reordering can
    never pair the wrong labels.
    """
    import ase.io

    predicted = ase.io.read(path, ":")
    if len(predicted) != len(reference):
        raise ValueError(f"{path}: {len(predicted)} frames, expected {len(reference)}")
    energies, forces = [], []
    for atoms, ref in zip(predicted, reference, strict=True):
        if not np.allclose(atoms.positions, ref.positions, atol=1e-5):
            raise ValueError(f"{path}: frames are not in the order of the eval set")
        energies.append(float(_info_or_calc(atoms, target)))
        gradient = np.asarray(atoms.info[f"{target}_positions_gradients"], dtype=float)
        forces.append(-gradient.reshape(-1, 3))
    return np.array(energies), forces


def _info_or_calc(atoms, key: str):
    """ASE's extxyz reader moves a plain ``energy`` into a calculator."""
    if key in atoms.info:
        return atoms.info[key]
    return atoms.calc.results[key]


def errors(energies, forces, frames) -> Dict[str, float]:
    """Energy MAE per atom (meV/atom) and force MAE over components (meV/Å).

    The same definitions as metatrain's "MAE (per atom)" and gradient MAE.
    """
    reference = np.array([atoms.info[ENERGY_KEY] for atoms in frames])
    n_atoms = np.array([len(atoms) for atoms in frames])
    force_errors = np.concatenate(
        [
            np.abs(f - atoms.arrays[FORCES_KEY]).ravel()
            for f, atoms in zip(forces, frames, strict=True)
        ]
    )
    return {
        "energy": 1000 * float(np.mean(np.abs(energies - reference) / n_atoms)),
        "force": 1000 * float(force_errors.mean()),
    }


def logged_errors(log: Path) -> Optional[Dict[str, float]]:
    """The MAEs ``mtt eval`` printed, to cross-check our own computation."""
    text = log.read_text(errors="replace")
    energy = re.findall(r"MAE \(per atom\): ([0-9.eE+-]+) meV", text)
    force = re.findall(r"positions_gradients MAE: ([0-9.eE+-]+) meV/A", text)
    if not (energy and force):
        return None
    return {"energy": float(energy[-1]), "force": float(force[-1])}


def composition(frames, elements: Sequence[int]) -> np.ndarray:
    """Number of atoms of each element, one row per frame."""
    return np.array(
        [[np.sum(atoms.numbers == z) for z in elements] for atoms in frames],
        dtype=float,
    )


def fit_element_shifts(frames, residuals: np.ndarray, elements: Sequence[int]):
    """Least-squares per-element energies (eV) explaining ``residuals`` (eV/frame).

    Composition models do the same; with few frames the minimum-norm solution keeps
    the shifts of elements the data cannot tell apart finite.
    """
    shifts, *_ = np.linalg.lstsq(composition(frames, elements), residuals, rcond=None)
    return shifts


# ---------------------------------------------------------------------------- the runs


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


def train_file(campaign: Campaign, n: int, seed: int) -> Path:
    """The training frames of (N, seed) as extended xyz."""
    path = campaign.settings.runs / "splits" / f"train_N{n}_s{seed}.xyz"
    write_frames_if_changed(path, campaign.subset(campaign.training_indices(n, seed)))
    return path


def split_metrics(energies, forces, campaign: Campaign) -> Dict[str, float]:
    """Validation and test errors from predictions on the val+test file."""
    n_val = len(campaign.splits["val"])
    val = errors(
        energies[:n_val], forces[:n_val], campaign.subset(campaign.splits["val"])
    )
    test = errors(
        energies[n_val:], forces[n_val:], campaign.subset(campaign.splits["test"])
    )
    return {
        "val_energy_mae_meV_atom": val["energy"],
        "val_force_mae_meV_A": val["force"],
        "test_energy_mae_meV_atom": test["energy"],
        "test_force_mae_meV_A": test["force"],
    }


def train_and_evaluate(run: Run, campaign: Campaign) -> dict:
    """``mtt train`` in a fresh run folder, then ``mtt eval`` on validation + test."""
    settings, row = campaign.settings, ROWS[run.row]
    folder = settings.runs / run.row / run.folder_name
    shutil.rmtree(folder, ignore_errors=True)  # a run interrupted earlier
    folder.mkdir(parents=True)
    options = {
        "seed": run.seed,
        "architecture": row.architecture(run, campaign.pretrained, settings.batch_size),
        "training_set": dataset_section(
            train_file(campaign, run.n, run.seed), row.target
        ),
        "validation_set": dataset_section(campaign.files["val"], row.target),
        "test_set": 0.0,  # the test split is evaluated below, by `mtt eval`
    }
    write_yaml(folder / "options.yaml", options)
    trained = mtt(
        settings, folder, "train.log", "train", "options.yaml", "-o", "model.pt"
    )
    result = {"run_dir": str(folder), "wall_s": trained.wall_s, "cpu_s": trained.cpu_s}
    if trained.rc != 0:
        return {**result, "status": "failed", "error": error_line(folder / "train.log")}

    predictions, evaluated = mtt_eval(
        folder / "model.pt", campaign.files["val_test"], row.target, folder, settings
    )
    result["eval_s"] = evaluated.wall_s
    if evaluated.rc != 0:
        return {**result, "status": "failed", "error": error_line(folder / "eval.log")}
    energies, forces = read_predictions(predictions, row.target, campaign.val_test)
    result.update(split_metrics(energies, forces, campaign))
    result.update(
        status="ok", error=cross_check(energies, forces, campaign, folder / "eval.log")
    )
    return result


def cross_check(energies, forces, campaign: Campaign, log: Path) -> str:
    """An empty string when our MAEs on val+test agree with what mtt eval printed."""
    ours = errors(energies, forces, campaign.val_test)
    theirs = logged_errors(log)
    if theirs is None:
        return ""
    off = [k for k in ours if abs(ours[k] - theirs[k]) > 0.01 * theirs[k] + 0.5]
    return f"warning: MAE differs from mtt eval's log ({off})" if off else ""


def pretrained_predictions(campaign: Campaign):
    """The pretrained model's energies and forces on every frame, computed once.

    Exported with ``mtt export`` and evaluated with ``mtt eval`` on the whole data
    file; cached under ``<runs>/zero-shot/pretrained-<checkpoint hash>``.
    """
    settings = campaign.settings
    digest = sha256(settings.checkpoint)[:12]
    folder = settings.runs / "zero-shot" / f"pretrained-{digest}"
    done = folder / "timing.json"
    if not (done.exists() and "cpu_s" in done.read_text()):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        checkpoint = str(settings.checkpoint)
        exported = mtt(
            settings, folder, "export.log", "export", checkpoint, "-o", "pretrained.pt"
        )
        if exported.rc != 0:
            raise RuntimeError(f"mtt export: {error_line(folder / 'export.log')}")
        target = campaign.pretrained.target
        model = folder / "pretrained.pt"
        _, evaluated = mtt_eval(model, settings.data, target, folder, settings)
        if evaluated.rc != 0:
            raise RuntimeError(f"mtt eval: {error_line(folder / 'eval.log')}")
        timing = {
            "wall_s": exported.wall_s + evaluated.wall_s,
            "cpu_s": exported.cpu_s + evaluated.cpu_s,
        }
        done.write_text(json.dumps(timing))
    timing = json.loads(done.read_text())
    energies, forces = read_predictions(
        folder / "predictions.xyz", campaign.pretrained.target, campaign.frames
    )
    return energies, forces, timing, folder


def zero_shot(run: Run, campaign: Campaign) -> dict:
    """The pretrained model plus per-element shifts fitted on the N training frames."""
    try:
        energies, forces, timing, folder = pretrained_predictions(campaign)
    except RuntimeError as error:
        return {"status": "failed", "error": str(error), "wall_s": float("nan")}
    train = campaign.training_indices(run.n, run.seed)
    elements = sorted({int(z) for atoms in campaign.frames for z in atoms.numbers})
    reference = np.array([atoms.info[ENERGY_KEY] for atoms in campaign.frames])
    shifts = fit_element_shifts(
        campaign.subset(train), (reference - energies)[train], elements
    )
    shifted = energies + composition(campaign.frames, elements) @ shifts
    order = campaign.splits["val"] + campaign.splits["test"]
    result = split_metrics(shifted[order], [forces[i] for i in order], campaign)
    return {**result, **timing, "status": "ok", "error": "", "run_dir": str(folder)}


def planned_runs(campaign: Campaign) -> List[Run]:
    """Every run of the campaign, in the order they are done: by seed, N, row."""
    settings = campaign.settings
    runs = []
    for seed in settings.seeds:
        for value in settings.ns:
            n = resolve_n(value, campaign.splits["pool_size"])
            for name in settings.rows:
                runs.extend(runs_of_row(name, n, seed, settings, campaign.pretrained))
    return runs


def epoch_budget(row: "Row", n: int, settings: Settings) -> int:
    """The row's epochs at N: halved from ``--half-epochs-from`` on (every row alike),
    so that big training sets cost about as many steps as N=100 does."""
    epochs = settings.scratch_epochs if row.budget == "scratch" else settings.epochs
    if settings.half_epochs_from is not None and n >= settings.half_epochs_from:
        epochs = max(1, epochs // 2)
    return epochs


def searched_lr(name: str, settings: Settings) -> Optional[float]:
    """The learning rate selected for ``name`` at N = ``--lr-from`` (most frequent
    over seeds), read from the campaign's CSV; ``None`` if that search is not done."""
    chosen = [
        r["lr"]
        for r in load_results(settings.out / "results.csv")
        if r["row"] == name
        and r["N"] == str(settings.lr_from)
        and r["selected"] == "yes"
    ]
    if not chosen:
        return None
    return float(max(sorted(set(chosen)), key=chosen.count))


def runs_of_row(name, n, seed, settings: Settings, pretrained: Pretrained) -> List[Run]:
    """A row's runs at one (N, seed): one per learning rate, or a single one.

    With ``--lr-from N0``, search rows run the whole ``--lrs`` grid at N0 only, and
    at every other N the learning rate selected at N0 (so N0 must be done first).
    """
    row = ROWS[name]
    if row.architecture is None:
        return [Run(name, n, seed, None, 0, trains=False)]
    epochs = epoch_budget(row, n, settings)
    if row.lr == "search":
        if settings.lr_from is not None and n != settings.lr_from:
            lr = searched_lr(name, settings)
            if lr is None:
                raise SystemExit(
                    f"--lr-from {settings.lr_from}: row {name} has no selected "
                    f"learning rate at N={settings.lr_from} in "
                    f"{settings.out / 'results.csv'}; run that N first"
                )
            return [Run(name, n, seed, lr, epochs)]
        return [Run(name, n, seed, lr, epochs) for lr in settings.lrs]
    if row.lr == "scratch":
        lr = settings.scratch_lr or pretrained.learning_rate
        return [Run(name, n, seed, lr, epochs)]
    return [Run(name, n, seed, None, epochs)]


# ----------------------------------------------------------------------------- results

COLUMNS = (
    "row N seed lr epochs val_energy_mae_meV_atom val_force_mae_meV_A "
    "test_energy_mae_meV_atom test_force_mae_meV_A wall_s cpu_s eval_s status selected "
    "error run_dir"
).split()


def load_results(path: Path) -> List[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


def result_key(record: dict) -> tuple:
    return (record["row"], record["N"], record["seed"], record["lr"], record["epochs"])


def mark_selected(results: List[dict]) -> None:
    """Per (row, N, seed, epochs): the successful run with the lowest validation
    force MAE (energy MAE breaks ties) is the one whose test error is reported."""
    groups: Dict[tuple, List[dict]] = {}
    for record in results:
        record["selected"] = ""
        if record["status"] == "ok":
            key = (record["row"], record["N"], record["seed"], record["epochs"])
            groups.setdefault(key, []).append(record)
    for group in groups.values():
        best = min(
            group,
            key=lambda r: (
                float(r["val_force_mae_meV_A"]),
                float(r["val_energy_mae_meV_atom"]),
            ),
        )
        best["selected"] = "yes"


def save_results(path: Path, results: List[dict]) -> None:
    """Rewrite the CSV after every run, so a killed campaign loses only one run."""
    mark_selected(results)
    order = {name: i for i, name in enumerate(ROWS)}
    results.sort(
        key=lambda r: (order.get(r["row"], 99), int(r["N"]), int(r["seed"]), r["lr"])
    )
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "w", newline="") as stream:
        writer = csv.DictWriter(stream, COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for record in results:
            writer.writerow({k: _format(k, record.get(k, "")) for k in COLUMNS})
    os.replace(temporary, path)


def _format(column: str, value):
    """Errors to 0.01 meV, seconds to 0.1 s, whether fresh floats or read back."""
    decimals = 2 if "mae" in column else 1 if column.endswith("_s") else None
    if decimals is None or value in ("", None):
        return value
    return f"{float(value):.{decimals}f}"


def spread(values: List[float]) -> str:
    """Median, with the min-max range when there are several seeds."""
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.median(values):.1f} [{min(values):.1f}-{max(values):.1f}]"


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


def markdown(results: List[dict], record: dict) -> str:
    """results.md: per row and N, the test errors at the selected learning rate."""
    head = [
        "# PBE0 transfer benchmark",
        "",
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
    return "\n".join(head + lines + ratios(results)) + "\n"


#: the comparisons the project's targets are stated in (force MAE ratios)
RATIOS = [("scratch", "plugin-default"), ("native-full", "plugin-default")]


def ratios(results: List[dict]) -> List[str]:
    """Per N: how many times lower the plugin default's test force MAE is than
    scratch's and native full fine-tuning's (median over seeds of each row)."""
    medians = {
        (line["row"], line["N"]): statistics.median(
            float(r["test_force_mae_meV_A"]) for r in line["chosen"]
        )
        for line in summary(results)
        if line["chosen"]
    }
    ns = sorted({n for (_, n) in medians})
    rows = [
        f"| {n} | "
        + " | ".join(
            f"{medians[(a, n)] / medians[(b, n)]:.2f}x"
            if (a, n) in medians and (b, n) in medians
            else "-"
            for a, b in RATIOS
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
        "| N | " + " | ".join(f"{a} / {b}" for a, b in RATIOS) + " |",
        "|---|" + "---|" * len(RATIOS),
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullFormatter

    figure, axes = plt.subplots(figsize=(8.4, 4.8))
    for rank, name in enumerate(ROWS):
        points = sorted(
            (line["N"], [float(r["test_force_mae_meV_A"]) for r in line["chosen"]])
            for line in summary(results)
            if line["row"] == name and line["chosen"]
        )
        if not points:
            continue
        # a small shift along N per row, so rows with equal errors stay visible
        ns = [n * 1.015 ** (rank - len(ROWS) / 2) for n, _ in points]
        mid = np.array([statistics.median(v) for _, v in points])
        low = mid - np.array([min(v) for _, v in points])
        high = np.array([max(v) for _, v in points]) - mid
        axes.errorbar(ns, mid, yerr=[low, high], marker="o", capsize=3, label=name)
    if gap is not None:
        axes.axhline(
            gap,
            color="grey",
            linestyle="--",
            label=f"GFN2-xTB labels vs PBE0 ({gap:.0f})",
        )
    axes.set_xscale("log")
    axes.set_yscale("log")
    all_ns = sorted({int(r["N"]) for r in results}) or [1]
    axes.set_xlim(min(all_ns) / 1.5, max(all_ns) * 1.5)  # the shifts stay small
    axes.xaxis.set_major_locator(FixedLocator(all_ns))
    # the largest N (`all`) on a second line: it sits close to N=200
    axes.xaxis.set_major_formatter(
        lambda value, _: f"\n{value:g}" if value == max(all_ns) else f"{value:g}"
    )
    axes.xaxis.set_minor_formatter(NullFormatter())
    axes.yaxis.set_major_formatter(lambda value, _: f"{value:g}")
    axes.yaxis.set_minor_formatter(lambda value, _: f"{value:g}")
    axes.set_xlabel("training frames N")
    axes.set_ylabel("test force MAE (meV/Å)")
    axes.set_title("xTB → PBE0 transfer (median over seeds, min-max bars)")
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def report(results: List[dict], record: dict, campaign: Campaign) -> None:
    out = campaign.settings.out
    save_results(out / "results.csv", results)
    write_atomically(out / "results.md", markdown(results, record))
    plot(results, out / "results.png", level_gap(campaign))


# -------------------------------------------------------------------------------- main


def read_pretrained(path: Path) -> Pretrained:
    """The checkpoint's energy target, network hypers and pre-training lr."""
    import metatomic.torch  # noqa: F401  (registers the classes the pickle names)
    import torch

    checkpoint = torch.load(path, weights_only=False, map_location="cpu")
    targets = checkpoint["model_data"]["dataset_info"].targets
    energy = [name for name, info in targets.items() if info.quantity == "energy"]
    if not energy:
        raise SystemExit(
            f"{path}: the checkpoint has no energy target ({list(targets)})"
        )
    return Pretrained(
        path=path,
        target=energy[0],
        model_hypers=dict(checkpoint["model_data"]["model_hypers"]),
        learning_rate=float(checkpoint["train_hypers"]["learning_rate"]),
    )


def prepare(settings: Settings) -> tuple:
    """Read the data, make and record the splits, write the shared split files."""
    import ase.io

    frames = ase.io.read(settings.data, ":")
    splits = make_splits([a.info.get("mol", "?") for a in frames], settings)
    record = campaign_record(settings, frames, splits)
    settings.out.mkdir(parents=True, exist_ok=True)
    check_or_write_record(settings.out / "splits.json", record)
    (settings.runs / "splits").mkdir(parents=True, exist_ok=True)
    files = {}
    for name, indices in [
        ("val", splits["val"]),
        ("val_test", splits["val"] + splits["test"]),
        ("test", splits["test"]),
    ]:
        files[name] = settings.runs / "splits" / f"{name}.xyz"
        write_frames_if_changed(files[name], [frames[i] for i in indices])
    campaign = Campaign(
        settings, frames, splits, read_pretrained(settings.checkpoint), files
    )
    return campaign, json.loads((settings.out / "splits.json").read_text())


def write_frames_if_changed(path: Path, frames) -> None:
    """Another harness process may be reading ``path``: replace it atomically, and
    only if its content would change."""
    import ase.io

    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    ase.io.write(temporary, frames, format="extxyz")
    if path.exists() and path.read_bytes() == temporary.read_bytes():
        temporary.unlink()
    else:
        os.replace(temporary, path)


def attempt(run: Run, campaign: Campaign) -> dict:
    """One run; whatever goes wrong is recorded as a failed run, not a crash."""
    train = zero_shot if ROWS[run.row].architecture is None else train_and_evaluate
    try:
        return train(run, campaign)
    except Exception as error:  # noqa: BLE001  (a campaign outlives one bad run)
        return {
            "status": "failed",
            "error": f"{type(error).__name__}: {error}",
            "wall_s": float("nan"),
        }


def run_campaign(settings: Settings, plan_only: bool = False) -> int:
    """Do the runs not yet in ``<out>/results.csv``, reporting after each one."""
    campaign, record = prepare(settings)
    results = load_results(settings.out / "results.csv")
    done = {result_key(r) for r in results if r["status"] == "ok"}
    todo = [run for run in planned_runs(campaign) if run.key not in done]
    print(f"{len(todo)} runs to do, {len(done)} already in {settings.out}", flush=True)
    for run in todo:
        print(
            f"  {run.row:18s} N={run.n:<4d} seed={run.seed} lr={run.lr_label:8s} "
            f"epochs={run.epochs}",
            flush=True,
        )
    if plan_only:
        return 0
    for number, run in enumerate(todo, 1):
        outcome = attempt(run, campaign)
        record_run = {
            "row": run.row,
            "N": str(run.n),
            "seed": str(run.seed),
            "lr": run.lr_label,
            "epochs": str(run.epochs),
            **outcome,
        }
        with campaign_lock(settings.out):  # another process may share the folder
            results = load_results(settings.out / "results.csv")
            results = [r for r in results if result_key(r) != result_key(record_run)]
            results.append(record_run)
            report(results, record, campaign)
        print(
            f"[{number}/{len(todo)}] {run.row} N={run.n} seed={run.seed} "
            f"lr={run.lr_label}: {outcome['status']} "
            f"test force {outcome.get('test_force_mae_meV_A', float('nan')):.1f} meV/Å,"
            f" energy {outcome.get('test_energy_mae_meV_atom', float('nan')):.1f} "
            f"meV/atom, {outcome['wall_s']:.0f} s {outcome.get('error', '')}",
            flush=True,
        )
    with campaign_lock(settings.out):
        report(load_results(settings.out / "results.csv"), record, campaign)
    return 0


@contextlib.contextmanager
def campaign_lock(out: Path):
    """Several harness processes may fill one campaign (one per core): each result
    is merged into the CSV on disk under this lock, never from a stale copy."""
    with open(out / ".results.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def parse_args(argv=None) -> tuple:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=DEFAULT_DATA,
        help="extended xyz with energy_pbe0/forces_pbe0 and a `mol` tag",
    )
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=DEFAULT_CHECKPOINT,
        help="the pretrained PET checkpoint (.ckpt)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO / "bench" / "results" / "pbe0",
        help="small results: CSV, markdown, PNG, splits.json",
    )
    parser.add_argument(
        "--runs",
        type=Path,
        default=None,
        help="heavy run folders (default /tmp/bench_runs/<out name>)",
    )
    parser.add_argument(
        "--rows",
        default=",".join(ROWS),
        help=f"comma-separated, from: {', '.join(ROWS)}",
    )
    parser.add_argument(
        "--n",
        default="25,50,100,200,all",
        help="training set sizes; `all` is the whole training pool",
    )
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--epochs", type=int, default=80, help="fine-tuning rows")
    parser.add_argument("--scratch-epochs", type=int, default=200)
    parser.add_argument(
        "--half-epochs-from",
        type=int,
        default=None,
        help="halve every row's epochs for N at or above this size",
    )
    parser.add_argument(
        "--lrs",
        default="1e-4,3e-4,1e-3",
        help="learning rates searched by the fine-tuning rows",
    )
    parser.add_argument(
        "--lr-from",
        type=int,
        default=None,
        help="search --lrs at this N only; other N reuse each row's selected lr",
    )
    parser.add_argument(
        "--scratch-lr",
        type=float,
        default=None,
        help="default: the checkpoint's pre-training learning rate",
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--test-fraction", type=float, default=0.25)
    parser.add_argument("--val-fraction", type=float, default=0.10)
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS")
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="smoke test: 2 epochs, N=10, one lr, tiny splits",
    )
    parser.add_argument(
        "--plan", action="store_true", help="list the runs still to do, and stop"
    )
    args = parser.parse_args(argv)

    unknown = [r for r in args.rows.split(",") if r not in ROWS]
    if unknown:
        parser.error(f"--rows: unknown {unknown}; known rows: {', '.join(ROWS)}")
    out = args.out.resolve()
    settings = Settings(
        data=args.data.resolve(),
        checkpoint=args.checkpoint.resolve(),
        out=out,
        runs=(args.runs or Path("/tmp/bench_runs") / out.name).resolve(),
        rows=args.rows.split(","),
        ns=args.n.split(","),
        seeds=[int(s) for s in args.seeds.split(",")],
        epochs=args.epochs,
        scratch_epochs=args.scratch_epochs,
        half_epochs_from=args.half_epochs_from,
        lrs=[float(lr) for lr in args.lrs.split(",")],
        lr_from=args.lr_from,
        scratch_lr=args.scratch_lr,
        batch_size=args.batch_size,
        test_fraction=args.test_fraction,
        val_fraction=args.val_fraction,
        split_seed=args.split_seed,
        threads=args.threads,
        mtt=Path(sys.executable).parent / "mtt",
    )
    if args.tiny:
        settings = tiny(settings)
    return settings, args.plan


def tiny(settings: Settings) -> Settings:
    """Smoke-test sizes: a few frames per split, 2 epochs, one learning rate."""
    import ase.io

    n_frames = len(ase.io.read(settings.data, ":"))
    return replace(
        settings,
        ns=["10"],
        epochs=2,
        scratch_epochs=2,
        lrs=[1e-3],
        test_fraction=min(settings.test_fraction, 8 / n_frames),
        val_fraction=min(settings.val_fraction, 4 / n_frames),
    )


def main(argv=None) -> int:
    settings, plan_only = parse_args(argv)
    for path in (settings.data, settings.checkpoint):
        if not path.is_file():
            raise SystemExit(f"{path}: no such file")
    return run_campaign(settings, plan_only)


if __name__ == "__main__":
    sys.exit(main())
