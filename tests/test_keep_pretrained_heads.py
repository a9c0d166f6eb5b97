"""``training.keep_pretrained_heads``: the old level stays served and valid."""

import copy
import re

import ase.io
import numpy as np
import pytest
import torch

from conftest import ase_predictions, run_mtt, transfer_options, write_yaml


def options(epochs=4, keep=True, method="full", on_forces=False):
    config = transfer_options(target="energy/pbe0", method=method, epochs=epochs)
    training = config["architecture"]["training"]
    training["keep_pretrained_heads"] = keep
    training["kept_heads_on_forces"] = on_forces
    training["learning_rate"] = 1e-2  # moves the tiny backbone within a few epochs
    # the last epoch's raw weights, trained on PET's loss: with the averaged weights
    # the tiny backbone barely leaves its start in 4 epochs, and nothing drifts
    training["ema_decay"] = None
    training["loss"] = "mse"
    if method == "lora":
        # a large alpha / rank: the adapters move the tiny backbone within 4 epochs
        training["finetune"]["config"] = {"rank": 2, "alpha": 16.0}
    config["validation_set"] = 0.2
    config["test_set"] = 0.0
    return config


def train(folder, config, output):
    write_yaml(folder / "options.yaml", config)
    result = run_mtt(["train", "options.yaml", "-o", output], cwd=folder)
    return result.stdout + result.stderr


def forces(model, frames, variant=None):
    """Forces of ``energy`` (the pretrained level) or of ``energy/<variant>``."""
    return ase_predictions(model, frames, variant)[1]


HEAD_MODULES = ["node_heads", "edge_heads", "node_last_layers", "edge_last_layers"]


def last_epoch(trained, output, pretrained=None):
    """The trained checkpoint's last-epoch weights as the ones to export (the
    backbone has moved most there); with ``pretrained``, the pretrained weights put
    back into the ``energy`` head: what a head kept but not trained predicts."""
    checkpoint = torch.load(trained, weights_only=False, map_location="cpu")
    state = copy.deepcopy(checkpoint["model_state_dict"])
    if pretrained is not None:
        source = torch.load(pretrained, weights_only=False, map_location="cpu")
        source = source["best_model_state_dict"] or source["model_state_dict"]
        for key in state:
            if any(key.startswith(f"backend.{m}.energy.") for m in HEAD_MODULES):
                state[key] = source[key].clone()
    checkpoint["best_model_state_dict"] = state
    torch.save(checkpoint, output)


def test_kept_head_stays_close_to_the_pretrained_model(workdir):
    frames = ase.io.read(workdir / "pbe0_small.xyz", ":")
    run_mtt(["export", "pretrained.ckpt", "-o", "pretrained.pt"], cwd=workdir)
    reference = forces(workdir / "pretrained.pt", frames)

    log = train(workdir, options(method="full"), "model.pt")
    assert "Keeping the pretrained head 'energy' valid" in log
    assert "pretrained model's own energies for the" in log
    # the kept head is a target like the others: its errors are logged every epoch,
    # forces included (the old level's drift), though it trains on energies only
    header = train_csv_header(workdir)
    assert "validation energy MAE (per atom)" in header
    assert "validation forces MAE" in header
    assert "training energy MAE (per atom)" in header
    assert "training forces MAE" not in header
    # the report shows that drift
    from metatrain_pet_transfer.cli import main

    assert main(["report", str(workdir), "--out", str(workdir / "report")]) == 0
    summary = (workdir / "report" / "summary.md").read_text()
    assert "### Old level kept (`keep_pretrained_heads`)" in summary
    assert re.search(r"\| energy \| forces MAE \| [0-9.]+ meV/A \| [0-9.]+", summary)
    # trained without, the kept head is still an energy with forces in the model
    checkpoint = torch.load(workdir / "model.ckpt", weights_only=False)
    kept_info = checkpoint["model_data"]["dataset_info"].targets["energy"]
    assert kept_info.gradients == ["positions"], kept_info.gradients

    # control: the same backbone under the untouched pretrained head drifts away
    # from the pretrained forces; the trained kept head stays closer
    last_epoch(workdir / "model.ckpt", workdir / "kept.ckpt")
    last_epoch(
        workdir / "model.ckpt", workdir / "drift.ckpt", workdir / "pretrained.ckpt"
    )
    for name in ["kept", "drift"]:
        run_mtt(["export", f"{name}.ckpt", "-o", f"{name}.pt"], cwd=workdir)
    kept = np.abs(forces(workdir / "kept.pt", frames) - reference).mean()
    drift = np.abs(forces(workdir / "drift.pt", frames) - reference).mean()
    # measured on this tiny PET: 38.0 vs 45.4 meV/A (28.5 vs 40.7 when it trains
    # on the pretrained forces too: kept_heads_on_forces)
    assert kept < 0.9 * drift, (kept, drift)

    # the new level is served next to the old one
    new = forces(workdir / "model.pt", frames[:1], "pbe0")
    assert np.all(np.isfinite(new))


def train_csv_header(folder) -> str:
    (csv,) = folder.glob("outputs/*/*/train.csv")
    return csv.read_text().splitlines()[0]


def mtt_eval_energies(folder, model, output):
    """``mtt eval MODEL`` of the pretrained level (``energy``) on the frames."""
    write_yaml(
        folder / "eval-old.yaml",
        {
            "systems": {"read_from": "pbe0_small.xyz", "length_unit": "angstrom"},
            "targets": {
                "energy": {
                    "quantity": "energy",
                    "key": "energy_xtb",
                    "unit": "eV",
                    "forces": {"key": "forces_xtb"},
                }
            },
        },
    )
    run_mtt(["eval", model, "eval-old.yaml", "-o", output], cwd=folder)
    frames = ase.io.read(folder / output, ":")
    return np.array([atoms.get_potential_energy() for atoms in frames])


def assert_serves_the_pretrained_level(folder, frames):
    """``model.pt`` and ``mtt eval model.ckpt`` give the pretrained ``energy`` bit
    for bit; returns the pretrained model's energies and forces."""
    run_mtt(["export", "pretrained.ckpt", "-o", "pretrained.pt"], cwd=folder)
    reference = ase_predictions(folder / "pretrained.pt", frames)
    served = ase_predictions(folder / "model.pt", frames)
    assert np.array_equal(served[0], reference[0])
    assert np.array_equal(served[1], reference[1])
    # `mtt eval` on the checkpoint (PETTransfer.__call__) serves the same level
    from_checkpoint = mtt_eval_energies(folder, "model.ckpt", "checkpoint.xyz")
    from_pretrained = mtt_eval_energies(folder, "pretrained.pt", "pretrained.xyz")
    assert np.array_equal(from_checkpoint, from_pretrained)
    return reference


def test_with_lora_the_old_level_is_the_pretrained_model_exactly(workdir):
    """``lora`` + ``keep_pretrained_heads``: the old level is served by the backbone
    without its adapters, so it equals the pretrained model bit for bit, in the
    exported model and in ``mtt eval`` on the checkpoint, and keeping it changes
    nothing in the new level's training."""
    frames = ase.io.read(workdir / "pbe0_small.xyz", ":")
    log = train(workdir, options(method="lora"), "model.pt")
    assert "Keeping the pretrained head 'energy' exactly" in log
    reference = assert_serves_the_pretrained_level(workdir, frames)
    checkpoint = torch.load(workdir / "model.ckpt", weights_only=False)
    assert checkpoint["pet_transfer_pretrained_backbone_outputs"] == ["energy"]

    # control: the adapters moved, so the kept head on the adapted backbone (what
    # the checkpoint serves without the record) is another model
    checkpoint["pet_transfer_pretrained_backbone_outputs"] = []
    torch.save(checkpoint, workdir / "adapted.ckpt")
    run_mtt(["export", "adapted.ckpt", "-o", "adapted.pt"], cwd=workdir)
    adapted = ase_predictions(workdir / "adapted.pt", frames)
    assert np.abs(adapted[1] - reference[1]).mean() > 1e-3

    # the new level trains as without keeping: the same model, bit for bit
    new_level = ase_predictions(workdir / "model.pt", frames, "pbe0")
    (workdir / "alone").mkdir()
    for name in ["pbe0_small.xyz", "pretrained.ckpt"]:
        (workdir / "alone" / name).write_bytes((workdir / name).read_bytes())
    train(workdir / "alone", options(method="lora", keep=False), "model.pt")
    alone = ase_predictions(workdir / "alone" / "model.pt", frames, "pbe0")
    assert np.array_equal(new_level[1], alone[1])
    assert np.array_equal(new_level[0], alone[0])


def test_with_heads_the_old_level_is_the_pretrained_model_exactly(heads_run):
    """``heads`` never moves the backbone: the untouched old head serves the
    pretrained level bit for bit, in the export and in ``mtt eval`` on the
    checkpoint."""
    frames = ase.io.read(heads_run / "pbe0_small.xyz", ":")
    reference = assert_serves_the_pretrained_level(heads_run, frames)
    # while the new level moved away from the pretrained one
    new_level = ase_predictions(heads_run / "model.pt", frames, "pbe0")
    assert np.abs(new_level[1] - reference[1]).mean() > 1e-4


def test_without_the_option_the_old_head_is_dropped(workdir):
    """metatrain's own behaviour (the same with ``lora``), which the plugin keeps
    unless asked."""
    from metatomic.torch import load_atomistic_model

    train(workdir, options(epochs=1, keep=False), "model.pt")
    outputs = load_atomistic_model(str(workdir / "model.pt")).capabilities().outputs
    assert "energy/pbe0" in outputs and "energy" not in outputs, list(outputs)
    # ASE, asked for the old level, refuses: only the new level is left
    with pytest.raises(ValueError, match="'energy' has no default variant") as refused:
        forces(workdir / "model.pt", ase.io.read(workdir / "pbe0_small.xyz", "0:1"))
    assert "energy/pbe0" in str(refused.value)


def test_a_scale_fit_next_to_a_kept_head_stops_before_training(workdir):
    """Without the alignment PET fits the new target's output scale on the training
    labels, kept heads' included, and fails deep in its set-up: stop first, and
    say what works instead."""
    config = options(epochs=1)
    config["architecture"]["training"]["alignment"] = False
    write_yaml(workdir / "options.yaml", config)
    result = run_mtt(["train", "options.yaml"], cwd=workdir, check=False)
    log = result.stdout + result.stderr
    assert result.returncode != 0
    assert "training.keep_pretrained_heads: the output scale of 'energy/pbe0'" in log
    assert "training.scale_targets: false" in log
    # before the pretrained model's pass over the data, not after it
    assert "Keeping the pretrained head" not in log
    assert "Epoch" not in log and not (workdir / "model.ckpt").exists()
