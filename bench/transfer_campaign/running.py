"""Doing the runs: ``mtt train``, ``mtt eval`` subprocesses, scored and cross-checked.

Part of ``bench/learning_curve.py`` (running side). Each trained row is an
``options.yaml`` in a fresh run folder, ``mtt train`` and ``mtt eval`` as a user
runs them; the errors are computed (``scoring``) from the predictions ``mtt eval``
writes and must agree with those it prints. ``zero-shot`` evaluates the pretrained
model once and fits per-element energy shifts. Whatever goes wrong in a run is
recorded as a failed run (:func:`attempt`); :mod:`.campaign` does the runs.
"""

import copy
import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .scoring import (
    composition,
    cross_check,
    deviations,
    fit_element_shifts,
    read_predictions,
    split_metrics,
)
from .settings import (
    ENERGY_KEY,
    FORCES_KEY,
    REPLAY_DATA,
    REPLAY_FRAMES,
    ROWS,
    Run,
    Settings,
)
from .splits import Campaign, sha256, write_frames_if_changed


class CampaignStopped(SystemExit):
    """A run failed or its scores disagree with ``mtt eval``: nothing more runs."""


# ---------------------------------------------------------------------- mtt, in a shell


@dataclass(frozen=True)
class Finished:
    """How an ``mtt`` command ended: exit status, wall and CPU seconds.

    CPU seconds (the command's own user + system time, from its rusage) stay
    comparable when other jobs share the machine; wall seconds do not.
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
    begin = time.perf_counter()
    with open(folder / log, "w") as stream:
        process = subprocess.Popen(
            [str(settings.mtt), *args],
            cwd=folder,
            env=env,
            stdout=stream,
            stderr=subprocess.STDOUT,
        )
        # this child's own rusage: right even with several runs at once
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    return Finished(
        process.returncode,
        time.perf_counter() - begin,
        usage.ru_utime + usage.ru_stime,
    )


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
    model: Path,
    frames_file: Path,
    target: str,
    folder: Path,
    settings: Settings,
    section: Optional[Callable] = None,
):
    """``mtt eval`` of ``model`` on ``frames_file``, predictions to predictions.xyz.

    ``section(path)`` writes the dataset section (default: PBE0 energies and forces
    as ``target``)."""
    section = section or (lambda path: dataset_section(path, target))
    write_yaml(folder / "eval.yaml", section(frames_file))
    options = ["-o", "predictions.xyz", "-b", "8", "--no-warm-up"]
    finished = mtt(
        settings, folder, "eval.log", "eval", str(model), "eval.yaml", *options
    )
    return folder / "predictions.xyz", finished


# ---------------------------------------------------------------------------- the runs


def train_file(campaign: Campaign, n: int, seed: int) -> Path:
    """The training frames of (N, seed) as extended xyz."""
    path = campaign.settings.runs / "splits" / f"train_N{n}_s{seed}.xyz"
    write_frames_if_changed(path, campaign.subset(campaign.training_indices(n, seed)))
    return path


def replay_file(campaign: Campaign) -> Path:
    """The replay rows' old-level frames: ``REPLAY_DATA`` without the geometries of
    the validation and test splits (``pretrain_index``), so that no run trains on
    a frame it is scored on, at either level."""
    import ase.io

    path = campaign.settings.runs / "splits" / "replay_xtb.xyz"
    held_out = {
        int(campaign.frames[i].info["pretrain_index"])
        for i in campaign.splits["val"] + campaign.splits["test"]
    }
    frames = ase.io.read(REPLAY_DATA, ":")
    write_frames_if_changed(
        path, [atoms for i, atoms in enumerate(frames) if i not in held_out]
    )
    return path


def run_folder(run: Run, campaign: Campaign) -> Path:
    """Where a run writes (zero-shot: the cached pretrained evaluation)."""
    settings = campaign.settings
    if ROWS[run.row].architecture is None:
        digest = sha256(settings.checkpoint)[:12]
        return settings.runs / "zero-shot" / f"pretrained-{digest}"
    return settings.runs / run.row / run.folder_name


def train(run: Run, campaign: Campaign, folder: Path, section: Callable) -> tuple:
    """``mtt train`` of ``run`` in a fresh ``folder``, its training and validation
    sets written by ``section(path)`` (an options.yaml dataset section).

    :return: the options written, and the result so far (run folder, wall and CPU
        seconds; ``status`` and ``error`` when the training failed)
    """
    settings = campaign.settings
    row = settings.table[run.row]
    shutil.rmtree(folder, ignore_errors=True)  # a run interrupted earlier
    folder.mkdir(parents=True)
    options = {
        "seed": run.seed,
        "architecture": row.architecture(run, campaign.pretrained, settings.batch_size),
        "training_set": section(train_file(campaign, run.n, run.seed)),
        "validation_set": section(campaign.files["val"]),
        "test_set": 0.0,  # the test split is evaluated after, by `mtt eval`
    }
    training = options["architecture"]["training"]
    if training.get("replay", {}).get("systems", {}).get("read_from") == REPLAY_FRAMES:
        training["replay"] = copy.deepcopy(training["replay"])  # the row's own stays
        training["replay"]["systems"]["read_from"] = str(replay_file(campaign))
    write_yaml(folder / "options.yaml", options)
    trained = mtt(
        settings, folder, "train.log", "train", "options.yaml", "-o", "model.pt"
    )
    result = {"run_dir": str(folder), "wall_s": trained.wall_s, "cpu_s": trained.cpu_s}
    if trained.rc != 0:
        failed = {"status": "failed", "error": error_line(folder / "train.log")}
        result.update(failed)
    return options, result


def train_and_evaluate(run: Run, campaign: Campaign) -> dict:
    """``mtt train`` in a fresh run folder, then ``mtt eval`` on validation + test."""
    settings, row = campaign.settings, ROWS[run.row]
    folder = run_folder(run, campaign)
    options, result = train(
        run, campaign, folder, lambda path: dataset_section(path, row.target)
    )
    if "status" in result:
        return result

    predictions, evaluated = mtt_eval(
        folder / "model.pt", campaign.files["val_test"], row.target, folder, settings
    )
    result["eval_s"] = evaluated.wall_s
    if evaluated.rc != 0:
        return {**result, "status": "failed", "error": error_line(folder / "eval.log")}
    energies, forces = read_predictions(predictions, row.target, campaign.val_test)
    result.update(split_metrics(energies, forces, campaign))
    cross_check(energies, forces, campaign.val_test, folder / "eval.log")
    if options["architecture"]["training"].get("keep_pretrained_heads"):
        result.update(old_level_drift(folder, campaign))
    return {**result, "status": "ok", "error": ""}


def old_level_drift(folder: Path, campaign: Campaign) -> dict:
    """A run that keeps the pretrained heads: what its old level (the kept head)
    predicts for the test frames, against the untouched pretrained model (MAEs,
    meV/atom and meV/Å), from ``mtt eval`` of the exported model."""
    settings, target = campaign.settings, campaign.pretrained.target
    test = campaign.splits["test"]
    old = folder / "old_level"
    old.mkdir()
    predictions, evaluated = mtt_eval(
        folder / "model.pt", campaign.files["test"], target, old, settings
    )
    if evaluated.rc != 0:
        raise RuntimeError(f"mtt eval of '{target}': {error_line(old / 'eval.log')}")
    energies, forces = read_predictions(predictions, target, campaign.subset(test))
    reference_energies, reference_forces, _, _ = pretrained_predictions(campaign)
    frames = campaign.subset(test)
    drift = deviations(
        energies,
        forces,
        reference_energies[test],
        [reference_forces[i] for i in test],
        frames,
    )
    return {
        "old_energy_drift_meV_atom": drift["energy"],
        "old_force_drift_meV_A": drift["force"],
        **old_level_errors(energies, forces, frames),
    }


def pretrained_predictions(campaign: Campaign):
    """The pretrained model's energies and forces on every frame, computed once.

    Exported with ``mtt export`` and evaluated with ``mtt eval`` on the whole data
    file (cross-checked against the MAEs it prints); cached in the zero-shot folder.
    """
    settings = campaign.settings
    folder = run_folder(Run("zero-shot", 0, 0, None, 0, trains=False), campaign)
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
    # before any shift: the pretrained model against the labels, as mtt eval printed
    cross_check(energies, forces, campaign.frames, folder / "eval.log")
    return energies, forces, timing, folder


def zero_shot(run: Run, campaign: Campaign) -> dict:
    """The pretrained model plus per-element shifts fitted on the N training frames."""
    energies, forces, timing, folder = pretrained_predictions(campaign)
    train = campaign.training_indices(run.n, run.seed)
    elements = sorted({int(z) for atoms in campaign.frames for z in atoms.numbers})
    reference = np.array([atoms.info[ENERGY_KEY] for atoms in campaign.frames])
    shifts = fit_element_shifts(
        campaign.subset(train), (reference - energies)[train], elements
    )
    shifted = energies + composition(campaign.frames, elements) @ shifts
    order = campaign.splits["val"] + campaign.splits["test"]
    result = split_metrics(shifted[order], [forces[i] for i in order], campaign)
    test = campaign.splits["test"]
    result.update(  # at its own level
        old_level_errors(
            energies[test], [forces[i] for i in test], campaign.subset(test)
        )
    )
    return {**result, **timing, "status": "ok", "error": "", "run_dir": str(folder)}


def old_level_errors(energies, forces, frames) -> dict:
    """Errors at the pretrained level (the xTB labels of ``frames``, the test
    frames) of a kept head, or of the pretrained model itself."""
    xtb = deviations(
        energies,
        forces,
        np.array([atoms.info["energy_xtb"] for atoms in frames]),
        [atoms.arrays["forces_xtb"] for atoms in frames],
        frames,
    )
    return {
        "old_energy_mae_meV_atom": xtb["energy"],
        "old_force_mae_meV_A": xtb["force"],
    }


def attempt(run: Run, campaign: Campaign) -> dict:
    """One run; whatever goes wrong is recorded as a failed run (and stops the
    campaign once recorded)."""
    train = zero_shot if ROWS[run.row].architecture is None else train_and_evaluate
    try:
        return train(run, campaign)
    except Exception as error:  # noqa: BLE001  (recorded in results.csv first)
        return failure(error, run_folder(run, campaign))


def failure(error: Exception, folder: Path) -> dict:
    """The result of a run that raised ``error``: recorded as failed."""
    return {
        "status": "failed",
        "error": f"{type(error).__name__}: {error}",
        "wall_s": float("nan"),
        "run_dir": str(folder),
    }
