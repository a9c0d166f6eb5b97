"""A fine-tuning killed with SIGKILL resumes with ``--restart auto`` and ends with the
weights of the uninterrupted run, bit for bit; a checkpoint without the plugin's
record (older plugin versions) still restarts; checkpoints are never left
truncated."""

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


def assert_same_weights(first: dict, other: dict) -> None:
    """Every tensor of the weights and best weights of two checkpoints is equal."""
    for state in ["model_state_dict", "best_model_state_dict"]:
        a, b = first[state], other[state]
        assert a.keys() == b.keys()
        tensors = [key for key, value in a.items() if isinstance(value, torch.Tensor)]
        assert tensors
        for key in tensors:
            assert torch.equal(a[key], b[key]), (state, key)


def differing_weights(first: dict, other: dict) -> list:
    a, b = first["model_state_dict"], other["model_state_dict"]
    return [
        key
        for key, value in a.items()
        if isinstance(value, torch.Tensor) and not torch.equal(value, b[key])
    ]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, pretrained_checkpoint):
    """The reference: the run of every test here, never interrupted."""
    from conftest import DATA

    folder = tmp_path_factory.mktemp("uninterrupted")
    (folder / "pbe0_small.xyz").write_bytes((DATA / "pbe0_small.xyz").read_bytes())
    (folder / "pretrained.ckpt").write_bytes(pretrained_checkpoint.read_bytes())
    write_yaml(folder / "options.yaml", transfer_options(epochs=EPOCHS))
    result = run_mtt(["train", "options.yaml"], cwd=folder)
    return folder, result.stdout + result.stderr


def test_sigkill_then_restart_auto_is_exact(workdir, uninterrupted):
    reference, reference_log = uninterrupted
    write_yaml(workdir / "options.yaml", transfer_options(epochs=EPOCHS))

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

    # the checkpoint's random state and the first step's learning rate put back:
    # the resumed run ends where the uninterrupted one did, bit for bit
    assert_same_weights(load(workdir / "model.ckpt"), load(reference / "model.ckpt"))
    reference_mae = final_validation_mae(reference_log)
    resumed_mae = final_validation_mae(resumed_log)
    print(
        f"validation energy MAE: uninterrupted {reference_mae} meV/atom, killed "
        f"after epoch {first_epoch - 1} and resumed {resumed_mae} meV/atom"
    )
    assert resumed_mae == reference_mae


def test_checkpoint_without_record_still_restarts(uninterrupted, tmp_path):
    """A checkpoint of an older plugin version (no ``pet_transfer`` record) restarts,
    with a warning; without the random state the resumed epochs draw other numbers,
    so it does not end bit-identical, which shows what the record is for."""
    from metatrain_pet_transfer.resume import RECORD_KEY

    reference, _ = uninterrupted
    for name in ["pbe0_small.xyz", "pretrained.ckpt", "options.yaml"]:
        (tmp_path / name).write_bytes((reference / name).read_bytes())
    (epoch_2,) = reference.glob("outputs/*/*/model_2.ckpt")
    checkpoint = load(epoch_2)
    assert RECORD_KEY in checkpoint
    del checkpoint[RECORD_KEY]
    torch.save(checkpoint, tmp_path / "older.ckpt")

    result = run_mtt(["train", "options.yaml", "--restart", "older.ckpt"], cwd=tmp_path)
    log = result.stdout + result.stderr
    assert "was written before pet_transfer recorded splits and random states" in log
    assert epochs_run(log)[0] == 3
    resumed = load(tmp_path / "model.ckpt")
    assert resumed["epoch"] == EPOCHS - 1
    assert RECORD_KEY in resumed  # its own checkpoints have the record again
    assert differing_weights(resumed, load(reference / "model.ckpt"))


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
