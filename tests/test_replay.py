"""``training.replay``: a ``full`` transfer's kept heads train on real old-level
labels, mixed into training at a ratio."""

import shutil

import ase.io
import numpy as np
import pytest
from test_keep_pretrained_heads import (
    forces,
    last_epoch,
    options,
    train,
    train_csv_header,
)

from conftest import run_mtt, write_yaml
from metatrain_pet_transfer.cli.demo import DEMO_DATA


def replay_section(ratio=0.5, **targets):
    return {
        "systems": {"read_from": "xtb_small.xyz", "length_unit": "angstrom"},
        "targets": targets
        or {
            "energy": {
                "quantity": "energy",
                "key": "energy_xtb",
                "unit": "eV",
                "forces": {"key": "forces_xtb"},
            }
        },
        "ratio": ratio,
    }


def replay_options(epochs=4, **replay):
    config = options(epochs=epochs)
    training = config["architecture"]["training"]
    training["replay"] = replay_section(**replay)
    # a rate at which the kept head can follow the moving backbone within 4 epochs
    # (at 1e-2 the tiny backbone moves too far: old and new level both 1.2 eV/A off)
    training["learning_rate"] = 3e-3
    return config


def old_level_error(model, frames):
    """Force MAE of the old level against the frames' xTB labels (eV/Å)."""
    labels = np.concatenate([atoms.arrays["forces_xtb"] for atoms in frames])
    return float(np.abs(forces(model, frames) - labels).mean())


def test_replay_trains_the_kept_head_on_old_level_labels(workdir):
    # the shipped demo PET: 0.16 eV/A from the xTB forces of these frames (the
    # session's tiny PET is 1.2 eV/A off: no level to keep)
    shutil.copy(DEMO_DATA / "pretrained_xtb.ckpt", workdir / "pretrained.ckpt")
    log = train(workdir, replay_options(ratio=1.0), "model.pt")
    # 32 training structures at ratio 1: 32 of the 48 xTB frames each epoch
    assert "Replay: each epoch 32 of the 48 structures of training.replay" in log
    assert "trained on the energies and forces of 32 replay structures" in log
    assert "pretrained model's own" not in log  # no teacher labels for training
    header = train_csv_header(workdir)
    # the kept head trains on the replayed forces, and its drift is validated
    assert "training forces MAE" in header
    assert "validation forces MAE" in header
    # and the report shows that drift
    from metatrain_pet_transfer.cli import main

    assert main(["report", str(workdir), "--out", str(workdir / "report")]) == 0
    summary = (workdir / "report" / "summary.md").read_text()
    assert "### Old level kept (`keep_pretrained_heads`)" in summary

    # the old level, against the xTB labels of the run's frames (which the replay
    # file does not hold): closer than the same moved backbone under the untouched
    # pretrained head (what the model would predict without replay)
    frames = ase.io.read(workdir / "pbe0_small.xyz", ":")
    last_epoch(workdir / "model.ckpt", workdir / "kept.ckpt")
    last_epoch(
        workdir / "model.ckpt", workdir / "drift.ckpt", workdir / "pretrained.ckpt"
    )
    for name in ["kept", "drift"]:
        run_mtt(["export", f"{name}.ckpt", "-o", f"{name}.pt"], cwd=workdir)
    kept = old_level_error(workdir / "kept.pt", frames)
    drift = old_level_error(workdir / "drift.pt", frames)
    # measured: 0.75 vs 0.83 eV/A (the tiny PET is 0.16 eV/A off before the
    # transfer; its backbone moves far at this rate)
    assert kept < 0.95 * drift, (kept, drift)
    # the exported model serves both levels
    assert np.all(np.isfinite(forces(workdir / "model.pt", frames[:2], "pbe0")))


def test_the_replay_draw_changes_each_epoch_and_repeats_with_the_seed():
    from metatrain_pet_transfer.recipe.replay import ReplaySubset

    subset = ReplaySubset(list(range(100)), size=10, seed=3)
    first = [subset[i] for i in range(len(subset))]
    subset.draw(1)
    second = [subset[i] for i in range(len(subset))]
    assert len(subset) == 10 and len(set(first)) == 10
    assert first != second
    again = ReplaySubset(list(range(100)), size=10, seed=3)
    again.draw(1)
    assert [again[i] for i in range(10)] == second


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda t: t.update(keep_pretrained_heads=False),
            "training.replay trains the kept pretrained heads: set "
            "training.keep_pretrained_heads: true",
        ),
        (
            lambda t: t["finetune"].update(method="lora"),
            "training.replay is for finetune.method: full; with 'lora'",
        ),
        (
            lambda t: t["replay"].update(ratio=0),
            "training.replay.ratio must be a number > 0, got 0",
        ),
        (
            lambda t: t["replay"]["systems"].update(read_from="missing.xyz"),
            "training.replay.systems: file 'missing.xyz' does not exist",
        ),
        (
            lambda t: t["replay"].update(
                targets={"mtt::other": {"quantity": "energy", "key": "energy_xtb"}}
            ),
            "training.replay.targets.mtt::other: not a pretrained head this run keeps",
        ),
        (
            lambda t: t["replay"]["targets"]["energy"].update(unit="kcal/mol"),
            "training.replay.targets.energy: unit 'kcal/mol' but the pretrained head",
        ),
    ],
    ids=["no-keep", "lora", "ratio", "file", "target", "unit"],
)
def test_bad_replay_options_stop_before_training(workdir, change, message):
    config = replay_options(epochs=1)
    change(config["architecture"]["training"])
    write_yaml(workdir / "options.yaml", config)
    result = run_mtt(["train", "options.yaml"], cwd=workdir, check=False)
    log = result.stdout + result.stderr
    assert result.returncode != 0
    assert message in log, log[-2000:]
    assert "Epoch" not in log and not (workdir / "model.ckpt").exists()


def test_bad_replay_labels_stop_before_training(workdir):
    """The replay frames get the label checks every training set gets."""
    frames = ase.io.read(workdir / "xtb_small.xyz", ":")
    frames[3].arrays["forces_xtb"][0, 0] = np.nan
    ase.io.write(workdir / "xtb_bad.xyz", frames)
    config = replay_options(epochs=1)
    config["architecture"]["training"]["replay"]["systems"]["read_from"] = "xtb_bad.xyz"
    write_yaml(workdir / "options.yaml", config)
    result = run_mtt(["train", "options.yaml"], cwd=workdir, check=False)
    log = result.stdout + result.stderr
    assert result.returncode != 0
    assert (
        "training.replay.targets['energy'].forces: the label is partly NaN in "
        "structure 3 of 'xtb_bad.xyz'"
    ) in log, log[-2000:]
    assert "Epoch" not in log and not (workdir / "model.ckpt").exists()
