"""Doing the runs: ``mtt train``, ``mtt eval`` subprocesses, scoring their predictions.

Part of ``bench/learning_curve.py`` (running side). Each trained row is an
``options.yaml`` in a fresh run folder, ``mtt train`` and ``mtt eval`` as a user
runs them; the errors are computed here from the predictions ``mtt eval`` writes
(and cross-checked against what it prints). ``zero-shot`` evaluates the pretrained
model once and fits per-element energy shifts. ``run_campaign`` does the runs not
yet in ``results.csv``, merging each result under a file lock.
"""

import contextlib
import fcntl
import json
import os
import re
import resource
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np

from .planning import planned_runs
from .settings import ENERGY_KEY, FORCES_KEY, ROWS, Run, Settings
from .splits import (
    Campaign,
    prepare,
    sha256,
    write_frames_if_changed,
)
from .tables import load_results, report, result_key


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
