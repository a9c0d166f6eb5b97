"""A fine-tuning killed with SIGKILL resumes with ``--restart auto`` and reaches the
quality of an uninterrupted run; checkpoints are never left truncated."""

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from conftest import mtt, run_mtt, transfer_options, write_yaml


EPOCHS = 6


def checkpoints(folder: Path):
    """What ``mtt train --restart auto`` chooses from: ``outputs/*/*/*.ckpt``,
    dot-files included (pathlib's glob matches them)."""
    return sorted((folder / "outputs").glob("*/*/*.ckpt"))


def load(path):
    import metatomic.torch  # noqa: F401

    return torch.load(path, weights_only=False, map_location="cpu")


def final_validation_mae(log: str) -> float:
    """The validation energy MAE (meV/atom) of the final evaluation of ``mtt train``."""
    final = log.split("Evaluating validation dataset", 1)[1]
    match = re.search(r"energy_pbe0 MAE \(per atom\): ([0-9.]+) meV", final)
    return float(match.group(1))


def epochs_run(log: str):
    return [int(epoch) for epoch in re.findall(r"Epoch:\s+(\d+)", log)]


def kill_when(folder: Path, pattern: str, args, log_name: str) -> None:
    """Run ``mtt train`` in ``folder`` and SIGKILL it once ``pattern`` matches."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    with open(folder / log_name, "w") as log:
        process = subprocess.Popen(
            [*mtt(), "train", "options.yaml", *args],
            cwd=folder,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 300
            while not list(folder.glob(pattern)):
                assert process.poll() is None, (folder / log_name).read_text()[-3000:]
                assert time.monotonic() < deadline, f"no {pattern} after 300 s"
                time.sleep(0.02)
            process.send_signal(signal.SIGKILL)
        finally:
            process.kill()
            process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (folder / "model.ckpt").exists()  # it did not finish


def check_checkpoints_load(folder: Path):
    found = checkpoints(folder)
    for path in found:
        assert re.fullmatch(r"model_\d+\.ckpt", path.name), path
        assert load(path)["epoch"] == int(path.stem.split("_")[1])
    return found


def test_sigkill_then_restart_auto(workdir, tmp_path):
    options = transfer_options(epochs=EPOCHS)
    write_yaml(workdir / "options.yaml", options)

    # the reference: the same run, uninterrupted, in its own folder
    reference = tmp_path / "reference"
    reference.mkdir()
    for name in ["pbe0_small.xyz", "pretrained.ckpt", "options.yaml"]:
        (reference / name).write_bytes((workdir / name).read_bytes())
    uninterrupted = run_mtt(["train", "options.yaml"], cwd=reference)
    reference_mae = final_validation_mae(uninterrupted.stdout + uninterrupted.stderr)

    # killed in its first epoch: the composition and scaler fits are saved, no epoch
    # checkpoint yet; `--restart auto` must not take the fits for a checkpoint
    kill_when(workdir, "outputs/*/*/fits/scaler.ckpt", [], "first.log")
    check_checkpoints_load(workdir)

    # started again with --restart auto, and killed after its first checkpoint
    kill_when(workdir, "outputs/*/*/model_*.ckpt", ["--restart", "auto"], "second.log")
    found = check_checkpoints_load(workdir)
    assert found

    resumed = run_mtt(["train", "options.yaml", "--restart", "auto"], cwd=workdir)
    resumed_log = resumed.stdout + resumed.stderr
    newest = max(found, key=lambda path: path.stat().st_mtime)
    assert f"Restarting training from '{newest.relative_to(workdir)}'" in resumed_log
    first_epoch = epochs_run(resumed_log)[0]
    assert first_epoch == load(newest)["epoch"] + 1 > 0, epochs_run(resumed_log)
    assert load(workdir / "model.ckpt")["epoch"] == EPOCHS - 1

    resumed_mae = final_validation_mae(resumed_log)
    print(
        f"validation energy MAE: uninterrupted {reference_mae} meV/atom, killed "
        f"after epoch {first_epoch - 1} and resumed {resumed_mae} meV/atom"
    )
    # the restart does not restore the random state, so the runs differ a little
    assert resumed_mae == pytest.approx(reference_mae, rel=0.25, abs=2.0)


def test_kill_while_saving_keeps_the_previous_checkpoint(workdir):
    """SIGKILL in the middle of writing a checkpoint: the file under the final name
    is the previous, complete one, and ``--restart auto`` finds nothing else."""
    folder = workdir / "outputs" / "2026-01-01" / "00-00-00"
    folder.mkdir(parents=True)
    previous = folder / "model_0.ckpt"
    previous.write_bytes((workdir / "pretrained.ckpt").read_bytes())
    before = previous.read_bytes()
    script = textwrap.dedent(
        f"""
        import os, signal, torch
        import metatomic.torch
        from metatrain.utils.io import model_from_checkpoint
        from metatrain_pet_transfer import Trainer

        checkpoint = torch.load({str(previous)!r}, weights_only=False)
        model = model_from_checkpoint(checkpoint, context="export")
        trainer = Trainer(checkpoint["train_hypers"])

        def killed_while_writing(obj, path, *args, **kwargs):
            with open(path, "wb") as file:
                file.write(b"PK half a checkpoint")
                file.flush()
                os.kill(os.getpid(), signal.SIGKILL)

        torch.save = killed_while_writing
        trainer.save_checkpoint(model, {str(folder / "model_1.ckpt")!r})
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    assert previous.read_bytes() == before
    assert checkpoints(workdir) == [previous]

    from metatrain.cli.train import _process_restart_from

    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        assert Path(_process_restart_from("auto")) == previous.relative_to(workdir)
    finally:
        os.chdir(cwd)
