"""Transfer to a new level of theory and to new properties, through ``mtt train``."""

import ase.io
import numpy as np
import pytest
import torch

from conftest import periodic_transfer, run_mtt, transfer_options, write_yaml


def load(path):
    import metatomic.torch  # noqa: F401

    return torch.load(path, weights_only=False, map_location="cpu")


def load_model(path):
    from metatrain.utils.io import model_from_checkpoint

    return model_from_checkpoint(load(path), context="export")


def composition(model, target):
    weights = model.additive_models[0].model.weights[target].block().values
    return dict(zip(model.atomic_types, weights.reshape(-1).tolist(), strict=True))


def type_counts(frames, types):
    return np.array(
        [[list(f.numbers).count(t) for t in types] for f in frames], dtype=float
    )


def training_frames(workdir):
    (indices,) = workdir.glob("outputs/*/*/indices/training.txt")
    frames = ase.io.read(workdir / "pbe0_small.xyz", ":")
    return [frames[int(i)] for i in np.loadtxt(indices, dtype=int, ndmin=1)]


def train(workdir, options, *extra):
    write_yaml(workdir / "options.yaml", options)
    result = run_mtt(["train", "options.yaml", "-o", "model.pt", *extra], cwd=workdir)
    return result.stdout + result.stderr


def is_head(key, target):
    return any(
        key.startswith(f"backend.{kind}.{target}.")
        for kind in ["node_heads", "edge_heads", "node_last_layers", "edge_last_layers"]
    )


def is_backbone(key):
    return key.startswith("backend.") and not any(
        f"backend.{kind}." in key
        for kind in ["node_heads", "edge_heads", "node_last_layers", "edge_last_layers"]
    )


def numerical_stress(atoms, step):
    """Stress (Voigt, ASE's sign) from central differences of the energy under
    symmetric strains of ``step`` (ASE's own helper asks for a free energy)."""
    calculator, atoms = atoms.calc, atoms.copy()
    atoms.calc = calculator
    cell, volume = atoms.cell.copy(), atoms.get_volume()
    stress = np.zeros((3, 3))
    for i in range(3):
        for j in range(3):
            energies = []
            for sign in (+1, -1):
                strain = np.eye(3)
                strain[i, j] += sign * step / 2
                strain[j, i] += sign * step / 2
                atoms.set_cell(cell @ strain, scale_atoms=True)
                energies.append(atoms.get_potential_energy())
            stress[i, j] = (energies[0] - energies[1]) / (2 * step * volume)
    return stress.flat[[0, 4, 8, 5, 2, 1]]


def test_native_start_new_heads_and_composition_rest_from_checkpoint(workdir):
    """alignment: false is metatrain's start: random heads for the new target, a
    composition fitted on the raw labels, every other weight from the checkpoint."""
    options = transfer_options(epochs=0)
    options["architecture"]["training"]["alignment"] = False
    train(workdir, options)

    before = load(workdir / "pretrained.ckpt")["best_model_state_dict"]
    after = load(workdir / "model.ckpt")["model_state_dict"]
    target = "mtt::energy_pbe0"

    backbone = [k for k in before if is_backbone(k)]
    assert backbone
    for key in backbone:
        assert torch.equal(before[key], after[key]), key
    heads = [k for k in after if is_head(k, target)]
    assert heads
    for key in heads:
        source = key.replace(target, "energy")
        assert not torch.equal(after[key], before[source]), key

    # composition: least squares of the raw labels on the atom counts
    model = load_model(workdir / "model.ckpt")
    frames = training_frames(workdir)
    counts = type_counts(frames, model.atomic_types)
    labels = np.array([f.info["energy_pbe0"] for f in frames])
    expected, *_ = np.linalg.lstsq(counts, labels, rcond=None)
    fitted = composition(model, target)
    present = counts.sum(axis=0) > 0
    np.testing.assert_allclose(
        np.array(list(fitted.values()))[present], expected[present], rtol=1e-6
    )


def test_alignment_starts_from_pretrained_plus_shift(workdir):
    """The default start of a new energy target: pretrained head, pretrained scale,
    composition fitted on the residual, zero-shot errors logged."""
    log = train(workdir, transfer_options(epochs=0))
    assert "Alignment: 'mtt::energy_pbe0' starts from the pretrained 'energy'" in log
    assert "Zero-shot training errors" in log
    assert "Zero-shot validation errors" in log

    before = load(workdir / "pretrained.ckpt")["best_model_state_dict"]
    after = load(workdir / "model.ckpt")["model_state_dict"]
    heads = [k for k in after if is_head(k, "mtt::energy_pbe0")]
    assert heads
    for key in heads:
        assert torch.equal(
            after[key], before[key.replace("mtt::energy_pbe0", "energy")]
        )
    for key in before:
        if is_backbone(key):
            assert torch.equal(before[key], after[key]), key

    # the exported model predicts pretrained + per-element shift: same forces, and
    # energy residuals orthogonal to the atom counts (normal equations of the fit)
    from metatomic_ase import MetatomicCalculator

    new = MetatomicCalculator(str(workdir / "model.pt"), variants={"energy": "pbe0"})
    pretrained_export = workdir / "pretrained.pt"
    run_mtt(["export", "pretrained.ckpt", "-o", "pretrained.pt"], cwd=workdir)
    old = MetatomicCalculator(str(pretrained_export))
    frames = training_frames(workdir)
    residuals = []
    for frame in frames:
        frame.calc = new
        e_new, f_new = frame.get_potential_energy(), frame.get_forces()
        frame.calc = old
        f_old = frame.get_forces()
        np.testing.assert_allclose(f_new, f_old, atol=1e-4)
        residuals.append(frame.info["energy_pbe0"] - e_new)
    counts = type_counts(frames, [1, 6, 7, 8])
    projection = counts.T @ np.array(residuals)
    assert np.all(np.abs(projection) < 1e-3 * np.abs(counts.T @ counts).max()), (
        projection
    )


@pytest.mark.parametrize("method", ["full", "heads", "lora"])
def test_methods(workdir, method):
    options = transfer_options(method=method, epochs=1)
    finetune = options["architecture"]["training"]["finetune"]
    # heads, lora: no `config`, as README writes them: the plugin fills in PET's
    # heads and last layers, and LoRA's rank 4 and alpha 8
    assert "config" not in finetune
    log = train(workdir, options)
    assert f"Applied finetuning strategy: {method}" in log
    # metatrain's "[100.00% %]" is mended while the plugin runs PET's trainer
    assert "Number of trainable parameters" in log
    assert "% %]" not in log

    before = load(workdir / "pretrained.ckpt")["best_model_state_dict"]
    after = load(workdir / "model.ckpt")["model_state_dict"]
    backbone = [k for k in before if is_backbone(k)]

    def wrapped(key):  # LoRA wraps linear layers: `x.weight` -> `x.linear.weight`
        if key in after:
            return key
        module, name = key.rsplit(".", 1)
        return f"{module}.linear.{name}"

    unchanged = [k for k in backbone if torch.equal(before[k], after[wrapped(k)])]
    if method == "full":
        assert len(unchanged) < len(backbone)
        assert not any(k.startswith("backend.node_heads.energy.") for k in after)
    elif method == "heads":
        assert unchanged == backbone
        # heads keeps the pretrained head next to the new one
        assert any(k.startswith("backend.node_heads.energy.") for k in after)
    else:
        adapters = [k for k in after if k.endswith("lora_A.weight")]
        assert adapters and all(after[k].shape[0] == 4 for k in adapters)  # rank 4
        assert unchanged == backbone


HEADS_DEFAULT = {
    "head_modules": ["node_heads", "edge_heads"],
    "last_layer_modules": ["node_last_layers", "edge_last_layers"],
}


@pytest.mark.parametrize(
    "method, config, expected",
    [
        ("heads", None, HEADS_DEFAULT),
        ("heads", {}, HEADS_DEFAULT),
        (
            "heads",
            {"head_modules": ["node_heads"]},
            {**HEADS_DEFAULT, "head_modules": ["node_heads"]},
        ),
        # README's `method: lora` without config: metatrain's schema stopped it with
        # 7 errors (one per method); metatrain's fallbacks are rank 4, alpha 8
        ("lora", None, {"rank": 4, "alpha": 8.0}),
        ("lora", {"rank": 2}, {"rank": 2, "alpha": 8.0}),
    ],
)
def test_method_config_defaults(pretrained_checkpoint, method, config, expected):
    """What the options validator accepts and the trainer receives: a key the user
    wrote is kept, a missing one is PET's (heads) or metatrain's (LoRA)."""
    from metatrain.utils.architectures import (
        check_architecture_options,
        get_default_hypers,
    )
    from omegaconf import OmegaConf

    from metatrain_pet_transfer import Trainer

    finetune = {"method": method, "read_from": str(pretrained_checkpoint)}
    if config is not None:
        finetune["config"] = config
    architecture = {"name": "pet_transfer", "training": {"finetune": finetune}}
    merged = OmegaConf.merge(
        {"architecture": get_default_hypers("pet_transfer")},
        {"architecture": architecture},
    )
    options = OmegaConf.to_container(merged["architecture"])
    check_architecture_options(name="pet_transfer", options=options)  # no error

    trainer = Trainer(options["training"])
    assert trainer.hypers["finetune"]["config"] == expected
    # the options themselves are not changed
    assert options["training"]["finetune"].get("config", {}) == (config or {})


@pytest.mark.parametrize("target", ["energy/pbe0", "mtt::energy_pbe0"])
def test_new_level_runs_in_ase(workdir, target):
    """Both spellings are selected in ASE with ``variants={"energy": "pbe0"}``; the
    forces conserve energy in NVE molecular dynamics."""
    from ase import units
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from ase.md.verlet import VelocityVerlet
    from metatomic_ase import MetatomicCalculator

    train(workdir, transfer_options(target=target, epochs=1))
    calculator = MetatomicCalculator(
        str(workdir / "model.pt"), variants={"energy": "pbe0"}
    )
    atoms = ase.io.read(workdir / "pbe0_small.xyz", "0")
    atoms.calc = calculator
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
    dynamics = VelocityVerlet(atoms, timestep=0.25 * units.fs)
    totals = []
    dynamics.attach(lambda: totals.append(atoms.get_total_energy()), interval=1)
    dynamics.run(100)
    totals = np.array(totals)
    kinetic = 1.5 * len(atoms) * units.kB * 300
    assert len(totals) == 101
    assert np.all(np.isfinite(totals))
    assert np.ptp(totals) < 0.02 * kinetic, np.ptp(totals)

    # mtt eval keeps the name of the options file
    write_yaml(
        workdir / "eval.yaml",
        {
            "systems": {"read_from": "pbe0_small.xyz", "length_unit": "angstrom"},
            "targets": transfer_options(target=target)["training_set"]["targets"],
        },
    )
    result = run_mtt(["eval", "model.pt", "eval.yaml"], cwd=workdir)
    assert f"{target} MAE (per atom)" in result.stdout + result.stderr


@pytest.mark.parametrize("gradient", ["stress", "virial"])
def test_periodic_transfer_with_stress(tmp_path, pretrained_bulk_checkpoint, gradient):
    from metatomic_ase import MetatomicCalculator

    options = periodic_transfer(tmp_path, pretrained_bulk_checkpoint, gradient)
    log = train(tmp_path, options)
    assert "energy/gfn2_strain_gradients" in log  # zero-shot stress/virial error
    atoms = ase.io.read(tmp_path / "bulk_small.xyz", "0")
    atoms.calc = MetatomicCalculator(
        str(tmp_path / "model.pt"), variants={"energy": "gfn2"}
    )
    stress = atoms.get_stress()
    assert stress.shape == (6,) and np.all(np.isfinite(stress))
    # the served stress is the strain derivative of the served energy: float32
    # energies of ~760 eV leave ~3e-5 eV/A^3 of noise on stresses of ~1e-3, so
    # this catches a wrong sign, unit or volume, not a few percent
    numerical = numerical_stress(atoms, step=1e-2)
    np.testing.assert_allclose(stress, numerical, rtol=0.05, atol=6e-5)


def test_periodic_aligned_start_serves_the_pretrained_stress(
    tmp_path, pretrained_bulk_checkpoint
):
    """0 epochs export the aligned start: the pretrained head plus per-element
    shifts, which do not depend on strain, so the new level's stress is the
    pretrained model's, to float32 precision."""
    from metatomic_ase import MetatomicCalculator

    options = periodic_transfer(tmp_path, pretrained_bulk_checkpoint, "stress")
    options["architecture"]["training"]["num_epochs"] = 0
    train(tmp_path, options)
    run_mtt(["export", "pretrained.ckpt", "-o", "pretrained.pt"], cwd=tmp_path)
    new = MetatomicCalculator(str(tmp_path / "model.pt"), variants={"energy": "gfn2"})
    old = MetatomicCalculator(str(tmp_path / "pretrained.pt"))
    for atoms in ase.io.read(tmp_path / "bulk_small.xyz", ":3"):
        stresses = []
        for calculator in (new, old):
            atoms.calc = calculator
            stresses.append(atoms.get_stress())
        # stresses of ~1e-3 eV/A^3 (float32 models)
        np.testing.assert_allclose(stresses[0], stresses[1], rtol=1e-4, atol=1e-7)


def test_generic_targets_get_new_heads(workdir):
    options = transfer_options(epochs=1)
    options["training_set"]["targets"] = {
        "mtt::energy_xtb_total": {
            "quantity": "",
            "key": "energy_xtb",
            "unit": "eV",
            "type": "scalar",
            "sample_kind": "system",
            "num_subtargets": 1,
        },
        "mtt::force_norm": {
            "quantity": "",
            "key": "force_norm_xtb",
            "unit": "eV/A",
            "type": "scalar",
            "sample_kind": "atom",
            "num_subtargets": 1,
        },
        "mtt::force_vector": {
            "quantity": "",
            "key": "forces_xtb",
            "unit": "eV/A",
            "type": {"cartesian": {"rank": 1}},
            "sample_kind": "atom",
            "num_subtargets": 1,
        },
    }
    train(workdir, options)
    after = load(workdir / "model.ckpt")["model_state_dict"]
    for target in options["training_set"]["targets"]:
        assert any(is_head(k, target) for k in after), target
    from metatomic.torch import load_atomistic_model

    exported = load_atomistic_model(str(workdir / "model.pt"))
    assert set(options["training_set"]["targets"]) <= set(
        exported.capabilities().outputs
    )


def test_new_level_under_existing_name_refits_composition(workdir):
    """PBE0 labels declared as ``energy``: native metatrain would keep the xTB
    reference energies; the plugin refits them on the residual and says why."""
    options = transfer_options(target="energy", epochs=0)
    log = train(workdir, options)
    assert "NOT at the checkpoint's level of theory" in log
    before = load_model(workdir / "pretrained.ckpt")
    after = load_model(workdir / "model.ckpt")
    old, new = composition(before, "energy"), composition(after, "energy")
    assert all(abs(new[t] - old[t]) > 1.0 for t in [1, 6, 8])

    # the refit is the least-squares fit of the residual on the training frames:
    # PBE0 labels minus the pretrained model's energies (through ASE here), per
    # element (minimum norm: an element absent from them keeps its weight)
    from metatomic_ase import MetatomicCalculator

    run_mtt(["export", "pretrained.ckpt", "-o", "pretrained.pt"], cwd=workdir)
    calculator = MetatomicCalculator(str(workdir / "pretrained.pt"))
    frames = training_frames(workdir)
    predicted = np.array([calculator.get_potential_energy(f) for f in frames])
    labels = np.array([f.info["energy_pbe0"] for f in frames])
    types = sorted(old)
    shift, *_ = np.linalg.lstsq(
        type_counts(frames, types), labels - predicted, rcond=None
    )
    expected = {t: old[t] + s for t, s in zip(types, shift, strict=True)}
    for t in types:
        # float32 energies of ~10^3 eV: agreement to a few meV per atom type
        assert new[t] == pytest.approx(expected[t], abs=5e-3), (t, new, expected)


def test_bad_checkpoints_stop_before_training(workdir):
    """Not a PET, too new for this metatrain, truncated: one clear message each."""
    pretrained = load(workdir / "pretrained.ckpt")
    not_pet = dict(pretrained, architecture_name="soap_bpnn")
    torch.save(not_pet, workdir / "not_pet.ckpt")
    too_new = dict(pretrained, model_ckpt_version=999)
    torch.save(too_new, workdir / "too_new.ckpt")
    data = (workdir / "pretrained.ckpt").read_bytes()
    (workdir / "truncated.ckpt").write_bytes(data[: len(data) // 2])

    cases = {
        "not_pet.ckpt": "written by the 'soap_bpnn' architecture",
        "too_new.ckpt": "checkpoint version 999",
        "truncated.ckpt": "truncated",
    }
    for name, message in cases.items():
        write_yaml(workdir / "options.yaml", transfer_options(read_from=name))
        result = run_mtt(["train", "options.yaml"], cwd=workdir, check=False)
        log = result.stdout + result.stderr
        assert result.returncode != 0, name
        assert f"'{name}'" in log and message in log, (name, log[-2000:])
        assert "Setting up training set" not in log


def test_lora_starts_at_the_pretrained_model(workdir):
    """metatrain's LoRA adapters start random (the model changes before any step);
    the plugin's start with B = 0, so 0 epochs export the aligned start exactly."""
    from metatomic_ase import MetatomicCalculator

    options = transfer_options(target="energy/pbe0", method="lora", epochs=0)
    options["architecture"]["training"]["finetune"]["config"] = {"rank": 2, "alpha": 4}
    log = train(workdir, options)
    assert "adapters start as a no-op" in log

    state = load(workdir / "model.ckpt")["best_model_state_dict"]
    adapters = [key for key in state if key.endswith("lora_B.weight")]
    assert adapters and all(not state[key].any() for key in adapters)

    run_mtt(["export", "pretrained.ckpt", "-o", "pretrained.pt"], cwd=workdir)
    frames = ase.io.read(workdir / "pbe0_small.xyz", ":4")
    for atoms in frames:
        before, after = atoms.copy(), atoms.copy()
        before.calc = MetatomicCalculator(str(workdir / "pretrained.pt"))
        after.calc = MetatomicCalculator(
            str(workdir / "model.pt"), variants={"energy": "pbe0"}
        )
        np.testing.assert_allclose(after.get_forces(), before.get_forces(), atol=1e-5)
