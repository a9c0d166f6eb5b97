"""New properties: how they are read out of PET's per-atom predictions.

The readouts' arithmetic on hand-made numbers (a rotated molecule rotates the
charges' dipole, a translated one leaves it alone, ``mean`` averages), then one
``mtt train`` with an energy, a dipole and a gap in one model: the readouts are
chosen, logged, stored in the checkpoint and applied by the exported model; a wrong
``readouts`` option stops the run before training, naming the key.
"""

import shutil

import ase.io
import numpy as np
import pytest
import torch
from metatensor.torch import Labels, TensorBlock, TensorMap
from metatomic.torch import System
from scipy.spatial.transform import Rotation

from conftest import DATA, run_mtt, transfer_options, write_yaml
from metatrain_pet_transfer.recipe.readouts import apply_readout


def _per_atom(values: torch.Tensor, lengths, components=True) -> TensorMap:
    samples = torch.tensor(
        [[s, a] for s, n in enumerate(lengths) for a in range(n)], dtype=torch.int32
    )
    comps = [Labels(["xyz"], torch.arange(3).reshape(-1, 1))] if components else []
    block = TensorBlock(
        values=values,
        samples=Labels(["system", "atom"], samples),
        components=comps,
        properties=Labels(["property"], torch.tensor([[0]])),
    )
    return TensorMap(Labels.single(), [block])


def _system(positions) -> System:
    n = len(positions)
    return System(
        types=torch.ones(n, dtype=torch.int32),
        positions=torch.as_tensor(positions, dtype=torch.float64),
        cell=torch.zeros(3, 3, dtype=torch.float64),
        pbc=torch.zeros(3, dtype=torch.bool),
    )


def test_charges_dipole_rotates_with_the_molecule_and_ignores_the_origin():
    generator = np.random.default_rng(0)
    lengths = [5, 3]
    positions = [generator.normal(size=(n, 3)) for n in lengths]
    # invariant per-atom charges: the same three channels however the molecule turns
    charges = torch.tensor(generator.normal(size=(sum(lengths), 1, 1)))
    atomic = _per_atom(charges.repeat(1, 3, 1), lengths)

    dipole = apply_readout("charges", atomic, [_system(p) for p in positions])
    values = dipole.block().values[:, :, 0].numpy()
    # by hand: charges shifted to sum to zero per molecule, times positions
    start = 0
    for s, n in enumerate(lengths):
        q = charges[start : start + n, 0, 0].numpy()
        q = q - q.mean()
        np.testing.assert_allclose(values[s], q @ positions[s], atol=1e-12)
        start += n

    rotation = Rotation.random(random_state=1).as_matrix()
    moved = [p @ rotation.T + np.array([3.0, -7.0, 11.0]) for p in positions]
    rotated = apply_readout("charges", atomic, [_system(p) for p in moved])
    np.testing.assert_allclose(
        rotated.block().values[:, :, 0].numpy(), values @ rotation.T, atol=1e-12
    )
    assert dipole.block().samples.names == ["system"]


def test_mean_readout_averages_the_atoms():
    lengths = [4, 2]
    values = torch.arange(6, dtype=torch.float64).reshape(6, 1)
    atomic = _per_atom(values, lengths, components=False)
    systems = [_system(np.zeros((n, 3))) for n in lengths]
    mean = apply_readout("mean", atomic, systems).block().values[:, 0]
    assert mean.tolist() == [1.5, 4.5]  # (0+1+2+3)/4, (4+5)/2


def _properties_options(readouts=None, epochs=2):
    options = transfer_options(epochs=epochs)
    options["training_set"]["systems"]["read_from"] = "props_small.xyz"
    targets = options["training_set"]["targets"]
    targets["mtt::dipole"] = {
        "quantity": "",
        "key": "dipole_pbe0",
        "unit": "",
        "type": {"cartesian": {"rank": 1}},
        "sample_kind": "system",
        "num_subtargets": 1,
    }
    targets["mtt::gap"] = {
        "quantity": "",
        "key": "gap_pbe0",
        "unit": "eV",
        "type": "scalar",
        "sample_kind": "system",
        "num_subtargets": 1,
    }
    if readouts is not None:
        options["architecture"]["training"]["readouts"] = readouts
    return options


def test_energy_dipole_and_gap_train_in_one_model(workdir):
    shutil.copy(DATA / "props_small.xyz", workdir / "props_small.xyz")
    options = _properties_options(readouts={"mtt::gap": "mean"})
    write_yaml(workdir / "options.yaml", options)
    result = run_mtt(["train", "options.yaml"], cwd=workdir)
    log = result.stdout + result.stderr
    assert "Readouts: 'mtt::dipole' charges, 'mtt::gap' mean" in log, log[-3000:]
    for target in ("mtt::dipole", "mtt::gap"):
        assert f"Probe start: '{target}' last layer fitted" in log, log[-3000:]
    assert "Probe start: 'mtt::energy_pbe0'" not in log  # energies: the alignment

    checkpoint = torch.load(workdir / "model.ckpt", weights_only=False)
    assert checkpoint["pet_transfer_readouts"] == {
        "mtt::dipole": "charges",
        "mtt::gap": "mean",
    }
    # inspect names the readouts
    import subprocess
    import sys
    from pathlib import Path

    tool = str(Path(sys.executable).parent / "mtt-transfer")
    described = subprocess.run(
        [tool, "inspect", "model.ckpt"],
        cwd=workdir,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "head parameters, readout charges" in described, described
    assert "head parameters, readout mean" in described, described

    # one model, every head
    names = checkpoint["model_state_dict"]
    for target in ("mtt::energy_pbe0", "mtt::dipole", "mtt::gap"):
        assert any(f"node_last_layers.{target}." in k for k in names), target

    # the exported model (TorchScript) applies the readouts as the checkpoint does
    # (`mtt eval model.ckpt`, in Python), and its dipole is origin-free
    from metatomic.torch import (
        ModelEvaluationOptions,
        load_atomistic_model,
        systems_to_torch,
    )
    from metatrain.utils.io import load_model
    from metatrain.utils.neighbor_lists import (
        get_requested_neighbor_lists,
        get_system_with_neighbor_lists,
    )

    checkpointed = load_model(workdir / "model.ckpt")
    exported = load_atomistic_model(str(workdir / "model.pt"))
    frames = ase.io.read(workdir / "props_small.xyz", ":3")
    moved = [frame.copy() for frame in frames]
    for frame in moved:
        frame.positions += np.array([5.0, -3.0, 2.0])
    outputs = {name: _output() for name in ("mtt::dipole", "mtt::gap")}
    requested = get_requested_neighbor_lists(checkpointed)
    options = ModelEvaluationOptions(length_unit="angstrom", outputs=outputs)
    results = []
    for structures in (frames, moved):
        systems = [
            get_system_with_neighbor_lists(system, requested)
            for system in systems_to_torch(structures, dtype=torch.float32)
        ]
        results.append(
            {
                "pt": exported(systems, options, check_consistency=True),
                "ckpt": checkpointed(systems, outputs, None),
            }
        )
    for name in outputs:
        values = {
            (i, kind): result[kind][name].block().values.detach().numpy()
            for i, result in enumerate(results)
            for kind in ("pt", "ckpt")
        }
        assert values[0, "pt"].shape[0] == 3
        np.testing.assert_allclose(values[0, "pt"], values[0, "ckpt"], atol=1e-5)
        np.testing.assert_allclose(values[0, "pt"], values[1, "pt"], atol=1e-4)


def _output():
    from metatomic.torch import ModelOutput

    return ModelOutput(sample_kind="system")


@pytest.mark.parametrize(
    "readouts, message",
    [
        ({"mtt::gap": "charges"}, "training.readouts.mtt::gap: 'charges' builds"),
        ({"mtt::dipol": "mean"}, "training.readouts.mtt::dipol: the run has no"),
        ({"mtt::energy_pbe0": "mean"}, "energies are extensive"),
    ],
)
def test_bad_readouts_stop_before_training(workdir, readouts, message):
    shutil.copy(DATA / "props_small.xyz", workdir / "props_small.xyz")
    write_yaml(workdir / "options.yaml", _properties_options(readouts, epochs=1))
    result = run_mtt(["train", "options.yaml"], cwd=workdir, check=False)
    log = result.stdout + result.stderr
    assert result.returncode != 0
    assert message in log, log[-3000:]
    assert "Epoch" not in log.split(message)[0]


def test_a_gap_alone_says_how_it_is_read_out(workdir):
    """With no readout asked, the log still names the gap's (PET's sum), and does
    not warn about metatrain's deprecated ``per_atom`` (the docs' syntax is
    ``sample_kind``)."""
    log = _dipole_only(workdir, epochs=0, target="mtt::gap")
    assert "Readouts: 'mtt::gap' sum (sum: PET's sum over atoms" in log, log[-3000:]
    assert "per_atom" not in log


def _dipole_only(workdir, epochs, target="mtt::dipole", **training):
    frames = ase.io.read(DATA / "props_small.xyz", ":")
    ase.io.write(workdir / "train.xyz", frames[:20])
    ase.io.write(workdir / "val.xyz", frames[20:])
    options = _properties_options(epochs=epochs)
    options["architecture"]["training"].update(training)
    targets = options["training_set"]["targets"]
    options["training_set"] = {
        "systems": {"read_from": "train.xyz", "length_unit": "angstrom"},
        "targets": {target: targets[target]},
    }
    options["validation_set"] = {**options["training_set"]}
    options["validation_set"]["systems"] = {
        "read_from": "val.xyz",
        "length_unit": "angstrom",
    }
    options["test_set"] = 0.0
    write_yaml(workdir / "options.yaml", options)
    result = run_mtt(["train", "options.yaml"], cwd=workdir)
    return result.stdout + result.stderr


def _energy_features(checkpoint, frames):
    """The pretrained model's per-atom last-layer features of its energy head."""
    from metatomic.torch import ModelOutput, systems_to_torch
    from metatrain.utils.io import load_model
    from metatrain.utils.neighbor_lists import (
        get_requested_neighbor_lists,
        get_system_with_neighbor_lists,
    )

    model = load_model(checkpoint)
    requested = get_requested_neighbor_lists(model)
    name = "mtt::aux::energy_last_layer_features"
    features = []
    for frame in frames:
        (system,) = systems_to_torch([frame], dtype=torch.float32)
        system = get_system_with_neighbor_lists(system, requested)
        output = model([system], {name: ModelOutput(sample_kind="atom")})
        features.append(output[name].block().values.detach().double().numpy())
    return features


def _charges_rows(frames, features):
    rows = []
    for frame, values in zip(frames, features, strict=True):
        relative = frame.positions - frame.positions.mean(axis=0)
        rows.append(relative.T @ values)  # [3, features]
    return np.concatenate(rows)


def test_probe_start_is_the_ridge_fit_computed_by_hand(workdir):
    """With 0 epochs the exported dipole model is the probe: by hand, the ridge
    regression (standardized features, each penalty of the list, the best on the
    validation RMSE) of the PBE0 dipoles on the pretrained energy head's
    last-layer features through the charges' readout."""
    from metatrain_pet_transfer.recipe.probe import PENALTIES

    log = _dipole_only(workdir, epochs=0, ema_decay=None)
    assert "Probe start: 'mtt::dipole' last layer fitted" in log, log[-3000:]
    train = ase.io.read(workdir / "train.xyz", ":")
    val = ase.io.read(workdir / "val.xyz", ":")
    rows = _charges_rows(train, _energy_features(workdir / "pretrained.ckpt", train))
    val_rows = _charges_rows(val, _energy_features(workdir / "pretrained.ckpt", val))
    labels = np.concatenate([f.info["dipole_pbe0"] for f in train])
    val_labels = np.concatenate([f.info["dipole_pbe0"] for f in val])
    norms = np.sqrt((rows**2).mean(axis=0))
    norms[norms == 0] = 1.0
    best = None
    for penalty in PENALTIES:
        a = rows / norms
        # ridge as least squares on the augmented system [A; sqrt(m l) I]
        augmented = np.vstack([a, np.sqrt(penalty * len(a)) * np.eye(a.shape[1])])
        target = np.concatenate([labels, np.zeros(a.shape[1])])
        weights = np.linalg.lstsq(augmented, target, rcond=None)[0] / norms
        predicted = val_rows @ weights
        rmse = np.sqrt(((predicted - val_labels) ** 2).mean())
        if best is None or rmse < best[0]:
            best = (rmse, predicted, penalty)
    assert f"ridge penalty {best[2]:g} chosen" in log

    from metatomic_ase import MetatomicCalculator

    calculator = MetatomicCalculator(str(workdir / "model.pt"))
    exported = np.concatenate(
        [
            calculator.run_model(frame, {"mtt::dipole": _output()})["mtt::dipole"]
            .block()
            .values.detach()
            .numpy()
            .reshape(3)
            for frame in val
        ]
    )
    # float32 model against a float64 fit: agreement to 1e-3 of the dipoles' size
    scale = np.abs(val_labels).mean()
    np.testing.assert_allclose(exported, best[1], atol=1e-3 * scale)
    # and it learned something: far better than the training mean
    mean = labels.reshape(-1, 3).mean(axis=0)
    mean_error = np.abs(val_labels.reshape(-1, 3) - mean).mean()
    assert np.abs(exported - val_labels).mean() < 0.5 * mean_error


def test_defaults_move_a_random_head(workdir):
    """A random dipole head barely moves at the default learning rate (three epochs
    of 20 frames change its last layer by about 1 %: the issue's complaint); the
    default probe start moves it to the probe before the first step."""
    heads = {}
    for name, training in {
        "random": {"probe_start": False},
        "default": {},
    }.items():
        folder = workdir / name
        folder.mkdir()
        shutil.copy(workdir / "pretrained.ckpt", folder / "pretrained.ckpt")
        log = _dipole_only(folder, epochs=0, ema_decay=None, **training)
        assert ("Probe start: 'mtt::dipole'" in log) == (name == "default")
        state = torch.load(folder / "model.ckpt", weights_only=False)
        state = state["best_model_state_dict"] or state["model_state_dict"]
        heads[name] = torch.cat(
            [
                value.flatten()
                for key, value in state.items()
                if "last_layers.mtt::dipole." in key
            ]
        )
    change = (heads["default"] - heads["random"]).norm() / heads["random"].norm()
    assert change > 0.5, change
