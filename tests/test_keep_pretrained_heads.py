"""``training.keep_pretrained_heads``: the old level stays served and valid."""

import copy

import ase.io
import numpy as np
import pytest
import torch
from metatomic_ase import MetatomicCalculator

from conftest import run_mtt, transfer_options, write_yaml


def options(epochs=4, keep=True, method="full"):
    config = transfer_options(target="energy/pbe0", method=method, epochs=epochs)
    training = config["architecture"]["training"]
    training["keep_pretrained_heads"] = keep
    training["learning_rate"] = 1e-2  # moves the tiny backbone within a few epochs
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


def with_adapters(kept, output, adapters_from):
    """``kept`` with the LoRA adapters of another run's last epoch."""
    checkpoint = torch.load(kept, weights_only=False, map_location="cpu")
    other = torch.load(adapters_from, weights_only=False, map_location="cpu")
    state = copy.deepcopy(checkpoint["best_model_state_dict"])
    adapters = [key for key in state if ".lora_" in key]
    assert adapters
    for key in adapters:
        state[key] = other["model_state_dict"][key].clone()
    checkpoint["best_model_state_dict"] = state
    torch.save(checkpoint, output)


@pytest.mark.parametrize("method", ["full", "lora"])
def test_kept_head_stays_close_to_the_pretrained_model(workdir, method):
    frames = ase.io.read(workdir / "pbe0_small.xyz", ":")
    run_mtt(["export", "pretrained.ckpt", "-o", "pretrained.pt"], cwd=workdir)
    reference = forces(workdir / "pretrained.pt", frames)

    log = train(workdir, options(method=method), "model.pt")
    assert "Keeping the pretrained head 'energy' valid" in log
    # the kept head is a target like the others: its errors are logged every epoch
    assert "validation energy MAE (per atom)" in log

    last_epoch(workdir / "model.ckpt", workdir / "kept.ckpt")
    if method == "lora":
        # LoRA freezes every head, the kept one too: the pretrained predictions
        # only train the adapters. Control: the adapters of the same training
        # without the option, under the same (frozen, pretrained) head
        train(workdir, options(method=method, keep=False), "control.pt")
        with_adapters(
            workdir / "kept.ckpt", workdir / "drift.ckpt", workdir / "control.ckpt"
        )
    else:
        # control: the same backbone under the untouched pretrained head drifts
        # away from the pretrained forces; the trained kept head stays closer
        last_epoch(
            workdir / "model.ckpt", workdir / "drift.ckpt", workdir / "pretrained.ckpt"
        )
    for name in ["kept", "drift"]:
        run_mtt(["export", f"{name}.ckpt", "-o", f"{name}.pt"], cwd=workdir)
    kept = np.abs(forces(workdir / "kept.pt", frames) - reference).mean()
    drift = np.abs(forces(workdir / "drift.pt", frames) - reference).mean()
    # measured on this tiny PET: full 28.5 vs 40.7 meV/A; lora 14.58 vs 14.80: with
    # LoRA the kept head barely holds the old level better than no option at all
    # (the adapters serve both levels), but a head trained on anything else than
    # the pretrained predictions ends further away than the control
    assert kept < (0.8 if method == "full" else 1.0) * drift, (kept, drift)

    # the new level is served next to the old one
    new = forces(workdir / "model.pt", frames[:1], "pbe0")
    assert np.all(np.isfinite(new))


@pytest.mark.parametrize("method", ["full", "lora"])
def test_without_the_option_the_old_head_is_dropped(workdir, method):
    from metatomic.torch import load_atomistic_model

    train(workdir, options(epochs=1, keep=False, method=method), "model.pt")
    outputs = load_atomistic_model(str(workdir / "model.pt")).capabilities().outputs
    assert "energy/pbe0" in outputs and "energy" not in outputs, list(outputs)
    # ASE, asked for the old level, refuses: only the new level is left
    with pytest.raises(ValueError, match="'energy' has no default variant") as refused:
        forces(workdir / "model.pt", ase.io.read(workdir / "pbe0_small.xyz", "0:1"))
    assert "energy/pbe0" in str(refused.value)
