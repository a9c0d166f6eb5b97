"""``mtt-transfer export``: a model whose default ``energy`` is the new level."""

import ase.io
import numpy as np
import pytest

from conftest import DATA
from metatrain_pet_transfer.cli import main


def energy_and_forces(model, variant=None, frame=3):
    from metatomic_ase import MetatomicCalculator

    atoms = ase.io.read(DATA / "pbe0_small.xyz", frame)
    atoms.calc = MetatomicCalculator(
        str(model), variants={"energy": variant} if variant else None
    )
    return atoms.get_potential_energy(), atoms.get_forces()


def outputs_of(model):
    import metatomic.torch as mta

    return set(mta.load_atomistic_model(str(model)).capabilities().outputs.keys())


def test_single_level_model_serves_the_new_level_as_energy(heads_run, tmp_path):
    out = tmp_path / "pbe0.pt"
    args = ["export", str(heads_run / "model.pt"), "--level", "pbe0", "-o", str(out)]
    assert main(args) == 0

    # the run's model serves both levels; the pretrained one is its default
    new_energy, new_forces = energy_and_forces(heads_run / "model.pt", "pbe0")
    old_energy, _ = energy_and_forces(heads_run / "model.pt")
    assert abs(new_energy - old_energy) > 1.0  # the per-element shift, hundreds of eV

    # the single-level model gives the new level with no variant selected
    energy, forces = energy_and_forces(out)
    assert energy == pytest.approx(new_energy, abs=1e-6)
    np.testing.assert_allclose(forces, new_forces, atol=1e-6)
    # and has no other energy an engine could pick instead
    assert not any(name.startswith("energy/") for name in outputs_of(out))
    assert "energy" in outputs_of(out)


def test_checkpoint_input_and_level_found_by_itself(heads_run, tmp_path, capsys):
    out = tmp_path / "from-ckpt.pt"
    assert main(["export", str(heads_run / "model.ckpt"), "-o", str(out)]) == 0
    assert "'energy/pbe0'" in capsys.readouterr().out
    expected, _ = energy_and_forces(heads_run / "model.pt", "pbe0", frame=5)
    energy, _ = energy_and_forces(out, frame=5)
    assert energy == pytest.approx(expected, abs=1e-6)


def test_existing_output_is_never_overwritten(heads_run, tmp_path, capsys):
    out = tmp_path / "mine.pt"
    out.write_bytes(b"my file")
    assert main(["export", str(heads_run / "model.pt"), "-o", str(out)]) == 1
    assert f"'{out}' exists" in capsys.readouterr().err
    assert out.read_bytes() == b"my file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.pt"]


@pytest.mark.parametrize(
    "level, message",
    [
        ("ccsdt", "has no level 'ccsdt'; its levels: 'pbe0' (energy/pbe0)"),
        ("energy/ccsdt", "has no level 'ccsdt'"),
    ],
)
def test_unknown_level_names_the_levels(heads_run, tmp_path, capsys, level, message):
    out = tmp_path / "x.pt"
    args = ["export", str(heads_run / "model.pt"), "--level", level, "-o", str(out)]
    assert main(args) == 1
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_level_choice_rules():
    from metatomic.torch import ModelOutput

    from metatrain_pet_transfer.recipe.energy_levels import (
        choose_level,
        single_level_outputs,
    )

    def output():
        return ModelOutput(unit="eV", sample_kind="system", explicit_gradients=[])

    # a native metatrain export: only the mtt:: name
    native = {"mtt::energy_pbe0": output(), "mtt::dipole": output()}
    assert choose_level(native, None) == "mtt::energy_pbe0"
    assert set(single_level_outputs(native, "mtt::energy_pbe0")) == {
        "energy",
        "mtt::dipole",
    }
    # the plugin's export: energy/ variants, preferred over the name behind them
    both = {
        "energy": output(),
        "energy/pbe0": output(),
        "mtt::energy_pbe0": output(),
        "energy/ccsdt": output(),
        "mtt::aux::energy_last_layer_features": output(),
    }
    with pytest.raises(ValueError, match="several levels, choose one: 'ccsdt'"):
        choose_level(both, None)
    assert choose_level(both, "pbe0") == "energy/pbe0"
    assert choose_level(both, "mtt::energy_pbe0") == "mtt::energy_pbe0"
    assert set(single_level_outputs(both, "energy/pbe0")) == {"energy"}
    with pytest.raises(ValueError, match="no energy level other than 'energy'"):
        choose_level({"energy": output()}, None)


EXPORT_SCRIPT = """
import warnings
warnings.simplefilter("always")
from metatrain.utils.io import model_from_checkpoint
from metatrain_pet_transfer.checkpoints import load_checkpoint_safely
model = model_from_checkpoint(load_checkpoint_safely("model.ckpt"), "export")
exported = model.export()
print(sorted(exported.capabilities().outputs.keys()))
"""


def test_the_plugins_export_makes_metatomic_warn_about_nothing(heads_run):
    """No "'features' output name is deprecated" (the plugin declared metatomic's
    own compatibility names again) and no C++ warning about energy variants without
    a description, which no Python filter can hide."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("PYTHONWARNINGS", None)
    result = subprocess.run(
        [sys.executable, "-c", EXPORT_SCRIPT],
        cwd=heads_run,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "'energy/pbe0'" in result.stdout and "'features'" in result.stdout
    assert "output name is deprecated" not in result.stderr
    assert "empty description" not in result.stderr
