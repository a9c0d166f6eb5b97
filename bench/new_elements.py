"""Fine-tuning on an element the pretrained PET never saw: nitrogen, H/C/O checkpoint.

``../shared/checkpoints/pet_xtb_hco.ckpt`` is the reference xTB PET retrained without
any N-containing molecule (atomic types H, C, O). This script fine-tunes it to PBE0
on the learning-curve split (``bench/results/accuracy/splits.json``: the same
test and validation frames, the first N of seed 0's training order) and scores the
test frames with and without nitrogen separately. Rows, each a real ``mtt train``
then ``mtt eval`` in its own run folder:

- ``plugin-hco-<init>``: ``pet_transfer`` with only ``read_from`` (the plugin's
  defaults) and ``new_atomic_types_init: <init>`` for ``mean``, ``nearest`` and
  ``random``; the model is extended from H, C, O to H, C, N, O;
- ``scratch``: native PET, the checkpoint's hypers, random weights, the pre-training
  learning rate, ``--scratch-epochs``;
- ``plugin-xtb``: ``pet_transfer`` defaults from ``pet_xtb.ckpt``, which did see N.

Errors (energy MAE per atom, force MAE over components) come from the predictions
``mtt eval`` writes, computed here on the whole test split, its N-containing frames
and its N-free frames; the validation force MAE is what picks the default
initialisation. The split lines are copied from ``bench/transfer_campaign`` (read
only; that package is being refactored). Results: ``<out>/results.csv`` and
``<out>/results.md``; run folders under ``--runs``.

Usage::

    OMP_NUM_THREADS=1 python bench/new_elements.py --rows scratch,plugin-xtb
    OMP_NUM_THREADS=1 python bench/new_elements.py \\
        --rows plugin-hco-mean,plugin-hco-nearest,plugin-hco-random
"""

import argparse
import csv
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

# bench/ is on sys.path when this script runs: the learning curve's dataset
# sections and scoring
from transfer_campaign.running import dataset_section
from transfer_campaign.scoring import read_predictions
from transfer_campaign.settings import STRATEGIES_OFF


REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
CHECKPOINTS = SHARED / "checkpoints"
TARGET, ENERGY_KEY, FORCES_KEY = "energy/pbe0", "energy_pbe0", "forces_pbe0"
NITROGEN = 7
INITS = ("mean", "nearest", "random")
ROWS = [f"plugin-hco-{init}" for init in INITS] + ["scratch", "plugin-xtb"]
COLUMNS = [
    "row",
    "checkpoint",
    "N",
    "epochs",
    "lr",
    "val_force",
    "val_energy",
    "test_force",
    "test_energy",
    "testN_force",
    "testN_energy",
    "testnoN_force",
    "testnoN_energy",
    "wall_s",
    "cpu_s",
    "status",
    "error",
    "run_dir",
]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--data", type=Path, default=REPO / "bench/data/pbe0.xyz")
    parser.add_argument(
        "--splits",
        type=Path,
        default=REPO / "bench/results/accuracy/splits.json",
    )
    parser.add_argument(
        "--hco-checkpoint", type=Path, default=CHECKPOINTS / "pet_xtb_hco.ckpt"
    )
    parser.add_argument(
        "--xtb-checkpoint", type=Path, default=CHECKPOINTS / "pet_xtb.ckpt"
    )
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/new_elements")
    parser.add_argument(
        "--runs", type=Path, default=Path("/tmp/bench_runs/new_elements")
    )
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=80)
    parser.add_argument("--scratch-epochs", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    unknown = [row for row in args.rows.split(",") if row not in ROWS]
    if unknown:
        parser.error(f"--rows: unknown {unknown}; known rows: {', '.join(ROWS)}")
    return args


# ------------------------------------------------------------------------------ splits


def read_splits(args):
    """The learning curve's frames: test, validation, the first N of the seed's order.

    The data file must be the one the split was made from (same SHA-256).
    """
    import hashlib

    import ase.io

    record = json.loads(args.splits.read_text())
    digest = hashlib.sha256(args.data.read_bytes()).hexdigest()
    if digest != record["data_sha256"]:
        raise SystemExit(f"{args.data}: not the data {args.splits} was made from")
    frames = ase.io.read(args.data, ":")
    train = record["train_order"][str(args.seed)][: args.n]
    return frames, {"train": train, "val": record["val"], "test": record["test"]}


def write_split_files(frames, splits, folder: Path) -> dict:
    import ase.io

    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, indices in [
        ("train", splits["train"]),
        ("val", splits["val"]),
        ("val_test", splits["val"] + splits["test"]),
    ]:
        files[name] = folder / f"{name}.xyz"
        ase.io.write(files[name], [frames[i] for i in indices], format="extxyz")
    return files


# -------------------------------------------------------------------------------- rows


def read_checkpoint_hypers(path: Path):
    import metatomic.torch  # noqa: F401  (registers the classes the pickle names)
    import torch

    checkpoint = torch.load(path, weights_only=False, map_location="cpu")
    return (
        dict(checkpoint["model_data"]["model_hypers"]),
        float(checkpoint["train_hypers"]["learning_rate"]),
    )


def architecture(row: str, args) -> tuple:
    """(architecture section, checkpoint, epochs, lr label, target) of a row."""
    training = {"batch_size": args.batch_size, "num_workers": 0}
    if row == "scratch":
        hypers, lr = read_checkpoint_hypers(args.hco_checkpoint)
        training.update(num_epochs=args.scratch_epochs, learning_rate=lr)
        section = {"name": "pet", "model": hypers, "training": training}
        return section, "-", args.scratch_epochs, f"{lr:g}", "energy"
    training["num_epochs"] = args.epochs
    if row == "plugin-xtb":
        checkpoint = args.xtb_checkpoint
    else:
        checkpoint = args.hco_checkpoint
        training["new_atomic_types_init"] = row.removeprefix("plugin-hco-")
    training["finetune"] = {"read_from": str(checkpoint)}
    # the plugin's default when these results were made (MSE loss, no averaging)
    training.update(STRATEGIES_OFF)
    section = {"name": "pet_transfer", "training": training}
    return section, checkpoint.name, args.epochs, "default", TARGET


def mtt(args, folder: Path, log: str, *command: str):
    """``mtt <command>`` in ``folder``; (exit status, wall s, CPU s of the child)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONWARNINGS="ignore")
    mtt_path = Path(sys.executable).parent / "mtt"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    begin = time.perf_counter()
    with open(folder / log, "w") as stream:
        rc = subprocess.run(
            [str(mtt_path), *command],
            cwd=folder,
            env=env,
            stdout=stream,
            stderr=subprocess.STDOUT,
        ).returncode
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return rc, time.perf_counter() - begin, cpu


def last_error(log: Path) -> str:
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines()]
    errors = [line for line in lines if re.match(r"^[\w.]*(Error|Exception)\b", line)]
    return (errors or lines or ["(empty log)"])[-1][:300]


# ----------------------------------------------------------------------------- scoring


def mae(energies, forces, frames) -> tuple:
    """(force MAE meV/Å over components, energy MAE meV/atom)."""
    reference = np.array([atoms.info[ENERGY_KEY] for atoms in frames])
    n_atoms = np.array([len(atoms) for atoms in frames])
    force_errors = np.concatenate(
        [
            np.abs(f - atoms.arrays[FORCES_KEY]).ravel()
            for f, atoms in zip(forces, frames, strict=True)
        ]
    )
    energy = 1000 * float(np.mean(np.abs(np.asarray(energies) - reference) / n_atoms))
    return 1000 * float(force_errors.mean()), energy


def score(energies, forces, frames, splits) -> dict:
    """Validation, test, and test split by whether the molecule holds nitrogen."""
    n_val = len(splits["val"])
    by_frame = list(zip(energies, forces, strict=True))
    val = mae(*zip(*by_frame[:n_val], strict=True), [frames[i] for i in splits["val"]])
    test_frames = [frames[i] for i in splits["test"]]
    test = by_frame[n_val:]
    result = {"val_force": val[0], "val_energy": val[1]}
    groups = {
        "test": [True] * len(test_frames),
        "testN": [NITROGEN in atoms.numbers for atoms in test_frames],
        "testnoN": [NITROGEN not in atoms.numbers for atoms in test_frames],
    }
    for name, keep in groups.items():
        chosen = [pair for pair, k in zip(test, keep, strict=True) if k]
        chosen_frames = [a for a, k in zip(test_frames, keep, strict=True) if k]
        force, energy = mae(*zip(*chosen, strict=True), chosen_frames)
        result[f"{name}_force"], result[f"{name}_energy"] = force, energy
    return result


def run_row(row: str, args, frames, splits, files) -> dict:
    section, checkpoint, epochs, lr, target = architecture(row, args)
    folder = args.runs / row
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    import yaml

    options = {
        "seed": args.seed,
        "architecture": section,
        "training_set": dataset_section(files["train"], target),
        "validation_set": dataset_section(files["val"], target),
        "test_set": 0.0,
    }
    (folder / "options.yaml").write_text(yaml.safe_dump(options, sort_keys=False))
    result = {
        "row": row,
        "checkpoint": checkpoint,
        "N": args.n,
        "epochs": epochs,
        "lr": lr,
        "run_dir": str(folder),
    }
    rc, wall, cpu = mtt(args, folder, "train.log", "train", "options.yaml")
    result.update(wall_s=round(wall), cpu_s=round(cpu))
    if rc != 0:
        return {**result, "status": "failed", "error": last_error(folder / "train.log")}
    (folder / "eval.yaml").write_text(
        yaml.safe_dump(dataset_section(files["val_test"], target), sort_keys=False)
    )
    command = ["eval", "model.pt", "eval.yaml", "-o", "predictions.xyz", "-b", "8"]
    rc, _, _ = mtt(args, folder, "eval.log", *command)
    if rc != 0:
        return {**result, "status": "failed", "error": last_error(folder / "eval.log")}
    reference = [frames[i] for i in splits["val"] + splits["test"]]
    energies, forces = read_predictions(folder / "predictions.xyz", target, reference)
    return {**result, **score(energies, forces, frames, splits), "status": "ok"}


# ----------------------------------------------------------------------------- tables


def load(out: Path) -> list:
    path = out / "results.csv"
    if not path.exists():
        return []
    with open(path) as stream:
        return list(csv.DictReader(stream))


def save(out: Path, results: list, splits, frames) -> None:
    out.mkdir(parents=True, exist_ok=True)
    order = {row: i for i, row in enumerate(ROWS)}
    results = sorted(results, key=lambda r: order.get(r["row"], 99))
    with open(out / "results.csv", "w", newline="") as stream:
        writer = csv.DictWriter(stream, COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for result in results:
            writer.writerow(
                {
                    k: f"{v:.2f}" if isinstance(v, float) else v
                    for k, v in result.items()
                }
            )
    (out / "results.md").write_text(markdown(results, splits, frames))


def markdown(results: list, splits, frames) -> str:
    test = [frames[i] for i in splits["test"]]
    with_n = sum(NITROGEN in atoms.numbers for atoms in test)
    train_n = sum(NITROGEN in frames[i].numbers for i in splits["train"])
    lines = [
        "# Fine-tuning on an element the checkpoint never saw (N)",
        "",
        f"PBE0 `pbe0.xyz`, learning-curve split: {len(splits['train'])} training "
        f"frames ({train_n} with N), {len(splits['val'])} validation, {len(test)} "
        f"test ({with_n} with N). Batch 8, one thread. Test force MAE (meV/Å) and "
        "energy MAE (meV/atom); `N` = test frames of N-containing molecules, "
        "`no N` = the others; `val` = validation force MAE.",
        "",
        "| row | checkpoint | epochs | lr | val force | test force | test energy "
        "| N force | no-N force | N / no-N force | N energy | no-N energy "
        "| CPU (s) | status |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if r["status"] != "ok":
            lines.append(
                f"| {r['row']} | {r['checkpoint']} | {r['epochs']} | {r['lr']} "
                f"| | | | | | | | | {r.get('cpu_s', '')} | failed: {r['error']} |"
            )
            continue
        f = {k: float(r[k]) for k in COLUMNS[5:15]}
        lines.append(
            f"| {r['row']} | {r['checkpoint']} | {r['epochs']} | {r['lr']} "
            f"| {f['val_force']:.1f} | {f['test_force']:.1f} | {f['test_energy']:.1f} "
            f"| {f['testN_force']:.1f} | {f['testnoN_force']:.1f} "
            f"| {f['testN_force'] / f['testnoN_force']:.2f}x "
            f"| {f['testN_energy']:.1f} | {f['testnoN_energy']:.1f} "
            f"| {r['cpu_s']} | ok |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    args.out, args.runs = args.out.resolve(), args.runs.resolve()
    frames, splits = read_splits(args)
    files = write_split_files(frames, splits, args.runs / "splits")
    for row in args.rows.split(","):
        print(f"{row}: training", flush=True)
        try:
            result = run_row(row, args, frames, splits, files)
        except Exception as error:  # noqa: BLE001  (the next row still runs)
            result = {"row": row, "status": "failed", "error": repr(error)[:300]}
        results = [r for r in load(args.out) if r["row"] != row] + [result]
        save(args.out, results, splits, frames)
        shown = {k: result.get(k) for k in ("status", "test_force", "testN_force")}
        print(f"{row}: {shown} {result.get('error', '')}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
