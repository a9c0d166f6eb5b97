"""``training.keep_pretrained_heads``: the old level stays served and valid."""

import copy
import re

import ase.io
import numpy as np
import pytest
import torch
from metatomic_ase import MetatomicCalculator

from conftest import run_mtt, transfer_options, write_yaml


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
    variants = {"energy": variant} if variant else None
    calculator = MetatomicCalculator(str(model), variants=variants)
    forces = []
    for atoms in frames:
        atoms = atoms.copy()
        atoms.calc = calculator
        forces.append(atoms.get_forces())
    return np.concatenate(forces)


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


def test_with_lora_the_kept_head_is_served_frozen(workdir):
    """LoRA freezes every head, the kept one too: it is served next to the new
    level with the pretrained head's weights, on the adapted backbone.

    How close it stays is not tested: on this tiny PET the adapters hold the old
    level no better than without the option (old-level force deviation from the
    pretrained model 14.58 vs 14.80 meV/A after 4 epochs, rank 2, alpha 16), and
    no worse when the kept head's labels come from another model (docs/transfer.md).
    """
    from metatomic.torch import load_atomistic_model

    # here on the pretrained forces too: kept_heads_on_forces
    log = train(workdir, options(method="lora", on_forces=True), "model.pt")
    assert "Keeping the pretrained head 'energy' valid" in log
    assert "pretrained model's own energies and forces for the" in log
    header = train_csv_header(workdir)
    assert "training forces MAE" in header and "validation forces MAE" in header

    outputs = load_atomistic_model(str(workdir / "model.pt")).capabilities().outputs
    assert {"energy", "energy/pbe0"} <= set(outputs), list(outputs)
    trained = torch.load(workdir / "model.ckpt", weights_only=False)
    trained = trained["model_state_dict"]  # the last epoch
    source = torch.load(workdir / "pretrained.ckpt", weights_only=False)
    source = source["best_model_state_dict"] or source["model_state_dict"]
    kept = [
        key
        for key in trained
        if any(key.startswith(f"backend.{m}.energy.") for m in HEAD_MODULES)
    ]
    assert kept
    for key in kept:
        assert torch.equal(trained[key], source[key]), key
    # while the adapters moved: the old level is computed on another backbone
    adapters = [key for key in trained if key.endswith("lora_B.weight")]
    assert adapters and any(trained[key].any() for key in adapters)


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
