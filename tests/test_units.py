"""Labels in another unit than the checkpoint's: the same model, in that unit.

The pretrained PET predicts in eV; labels declared ``unit: Hartree`` (forces
Hartree/Å) are the same physics in other numbers. The plugin converts the
pretrained head's output scale and predictions into the declared unit, so the run
on Hartree labels trains the same model, to float tolerance, as the run on the same
labels in eV; the exported model declares Hartree and ASE (which converts to eV)
gives the same energies. A unit declared wrong is named in a warning.
"""

import shutil

import ase.io
import numpy as np
import pytest

from conftest import DATA, run_mtt, transfer_options, write_yaml
from conftest import ase_predictions as conftest_ase_predictions
from metatrain_pet_transfer.recipe.units import label_slope, unit_mismatch


HARTREE = 27.211386245988  # eV, metatomic's value


def hartree_copy(path):
    """``pbe0_small.xyz`` with its PBE0 energies and forces in Hartree(/Å)."""
    frames = ase.io.read(DATA / "pbe0_small.xyz", ":")
    for atoms in frames:
        atoms.info["energy_pbe0"] /= HARTREE
        atoms.arrays["forces_pbe0"] = atoms.arrays["forces_pbe0"] / HARTREE
    ase.io.write(path, frames)
    return path


def user_run(folder, checkpoint, data, unit, epochs, **training):
    """``mtt train`` of the PBE0 transfer from ``checkpoint`` on ``data`` declared
    in ``unit``; returns its log."""
    folder.mkdir()
    shutil.copy(checkpoint, folder / "pretrained.ckpt")
    shutil.copy(data, folder / "pbe0_small.xyz")
    options = transfer_options(epochs=epochs)
    options["architecture"]["training"].update(training)
    options["training_set"]["targets"]["mtt::energy_pbe0"]["unit"] = unit
    options["test_set"] = 0.0
    write_yaml(folder / "options.yaml", options)
    run_mtt(["train", "options.yaml", "-o", "model.pt"], cwd=folder)
    (log,) = (folder / "outputs").glob("*/*/train.log")
    return log.read_text()


def ase_predictions(model, frames, level="pbe0"):
    return conftest_ase_predictions(model, frames, level)


def test_hartree_labels_train_the_same_model_as_ev(tmp_path):
    """Before the fix the Hartree run copied the eV head with its eV scale and
    fitted the composition on "Hartree labels minus eV predictions": its training
    loss, its model and its exported energies were not the eV run's.

    With ``keep_pretrained_heads``: the kept ``energy`` head stays in the
    checkpoint's eV (its labels, the pretrained predictions, are in eV) next to the
    new target in Hartree."""
    from metatrain_pet_transfer.cli.demo import DEMO_DATA
    from metatrain_pet_transfer.cli.report import make_report

    checkpoint = DEMO_DATA / "pretrained_xtb.ckpt"
    keep = {"keep_pretrained_heads": True}
    logs = {
        "eV": user_run(
            tmp_path / "ev", checkpoint, DATA / "pbe0_small.xyz", "eV", 2, **keep
        ),
        "Hartree": user_run(
            tmp_path / "hartree",
            checkpoint,
            hartree_copy(tmp_path / "hartree.xyz"),
            "Hartree",
            2,
            **keep,
        ),
    }
    # every logged number in the declared unit, none of them in meV
    hartree_log = logs["Hartree"]
    assert "eV converted to Hartree" in hartree_log
    assert "Zero-shot validation errors" in hartree_log
    zero_shot = [line for line in hartree_log.splitlines() if "Zero-shot" in line]
    assert zero_shot and all("meV" not in line for line in zero_shot), zero_shot
    assert "Hartree/atom" in zero_shot[0] and "Hartree/A" in zero_shot[0]
    assert "look like" not in hartree_log and "look like" not in logs["eV"]

    # the same training: PET's loss works on labels divided by the output scale
    losses = {}
    for unit, log in logs.items():
        losses[unit] = [
            float(line.split("training loss: ")[1].split()[0])
            for line in log.splitlines()
            if "training loss: " in line
        ]
    assert len(losses["eV"]) == 2
    np.testing.assert_allclose(losses["Hartree"], losses["eV"], rtol=1e-4)

    # the same model: ASE gives eV whatever the model's unit
    import metatomic.torch as mta

    exported = mta.load_atomistic_model(str(tmp_path / "hartree" / "model.pt"))
    assert exported.capabilities().outputs["mtt::energy_pbe0"].unit == "Hartree"
    frames = ase.io.read(DATA / "pbe0_small.xyz", ":")
    energy_ev, forces_ev = ase_predictions(tmp_path / "ev" / "model.pt", frames)
    energy_ha, forces_ha = ase_predictions(tmp_path / "hartree" / "model.pt", frames)
    labels = np.array([atoms.info["energy_pbe0"] for atoms in frames])
    np.testing.assert_allclose(energy_ha, energy_ev, rtol=1e-6)
    np.testing.assert_allclose(forces_ha, forces_ev, atol=1e-4)
    # and close to the labels, in eV (per atom: within 1 eV of a -2000 eV energy)
    n_atoms = np.array([len(atoms) for atoms in frames])
    assert np.all(np.abs(energy_ha - labels) / n_atoms < 1.0)
    # the kept pretrained level: eV in both models, the same numbers
    assert exported.capabilities().outputs["energy"].unit == "eV"
    kept_ev, _ = ase_predictions(tmp_path / "ev" / "model.pt", frames, None)
    kept_ha, _ = ase_predictions(tmp_path / "hartree" / "model.pt", frames, None)
    np.testing.assert_allclose(kept_ha, kept_ev, rtol=1e-6)

    # the report compares the model with the labels in their own unit; with
    # `test_set: 0` it scores the validation split, says so, and warns nothing
    # (np.loadtxt warned about the empty indices/test.txt)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        reports = {
            unit: make_report(tmp_path / folder, data=None)
            for unit, folder in (("eV", "ev"), ("Hartree", "hartree"))
        }
    errors = {unit: r.comparisons[0].metrics() for unit, r in reports.items()}
    for metric in ("energy MAE", "forces MAE"):
        assert errors["Hartree"][metric] * HARTREE == pytest.approx(
            errors["eV"][metric], rel=1e-3
        )
    summary = reports["Hartree"].summary.read_text()
    assert "Hartree/atom" in summary and "meV" not in summary.split("## Training")[0]
    assert "The run has no test set: these errors are on its validation" in summary


def test_a_unit_declared_wrong_is_named(tmp_path):
    """Hartree numbers under ``unit: eV``: the forces are 1/27 of what the
    pretrained model predicts, and the log says they look like Hartree."""
    from metatrain_pet_transfer.cli.demo import DEMO_DATA

    log = user_run(
        tmp_path / "run",
        DEMO_DATA / "pretrained_xtb.ckpt",
        hartree_copy(tmp_path / "hartree.xyz"),
        "eV",
        0,
    )
    expected = "The labels of 'mtt::energy_pbe0' look like Hartree, not the declared eV"
    assert expected in log


@pytest.mark.parametrize(
    "slope, declared, expected",
    [
        (1.0, "eV", None),  # right unit
        (1.12, "eV", None),  # xTB -> PBE0 forces: another level, same unit
        (1 / 27.2, "eV", "Hartree"),
        (27.2, "Hartree", "eV"),
        (1 / 23.06, "kcal/mol", "eV"),
        (23.06, "eV", "kcal/mol"),
        (1000.0, "eV", "meV"),
        (5.0, "eV", None),  # far from 1 but no unit factor: not named
        (None, "eV", None),  # the data cannot tell
        (-1.0, "eV", None),
        (1 / 27.2, "", None),  # no unit declared
    ],
)
def test_unit_mismatch_names_the_unit_of_the_factor(slope, declared, expected):
    assert unit_mismatch(slope, declared) == expected


def test_label_slope_needs_predictions_that_explain_the_labels():
    rng = np.random.default_rng(0)
    predicted = rng.normal(size=1000)
    labels = predicted / 27.2 + 0.001 * rng.normal(size=1000)
    products = np.array(
        [labels @ predicted, predicted @ predicted, labels @ labels], dtype=float
    )
    empty = np.zeros((0, 2))
    assert label_slope(products, empty, np.zeros(0), np.zeros(0)) == pytest.approx(
        1 / 27.2, rel=1e-2
    )
    # a barely trained model: predictions unrelated to the labels
    noise = rng.normal(size=1000)
    products = np.array([labels @ noise, noise @ noise, labels @ labels])
    assert label_slope(products, empty, np.zeros(0), np.zeros(0)) is None
    # no forces: energies with a per-element offset
    counts = rng.integers(1, 5, size=(30, 2)).astype(float)
    energies = counts @ np.array([-10.0, -50.0]) + rng.normal(size=30)
    labels = 23.06 * energies + counts @ np.array([3.0, 4.0])
    assert label_slope(np.zeros(3), counts, labels, energies) == pytest.approx(23.06)
