"""Fine-tuning on elements the checkpoint never saw: a tiny PET pre-trained on H, C
and O only, transferred to PBE0 frames that contain nitrogen."""

import shutil
import sys

import ase.io
import pytest
import torch

from conftest import DATA, run_mtt, train_tiny_pet, transfer_options, write_yaml


HCO, HCNO = [1, 6, 8], [1, 6, 7, 8]
# rows of the union model (H, C, N, O) that hold the checkpoint's H, C, O rows
OLD_ROWS, N_ROW = [0, 1, 3], 2


@pytest.fixture(scope="session")
def hco_checkpoint(tmp_path_factory):
    """A tiny native PET pre-trained on the H/C/O-only frames of xtb_small.xyz."""
    folder = tmp_path_factory.mktemp("pretrained-hco")
    frames = [a for a in ase.io.read(DATA / "xtb_small.xyz", ":") if 7 not in a.numbers]
    ase.io.write(folder / "xtb_hco.xyz", frames)
    return train_tiny_pet(folder / "hco.ckpt", data=str(folder / "xtb_hco.xyz"))


def state(path, key="best_model_state_dict"):
    import metatomic.torch  # noqa: F401

    checkpoint = torch.load(path, weights_only=False, map_location="cpu")
    return checkpoint, checkpoint[key]


def embeddings(hypers):
    from metatrain_pet_transfer.recipe.species import type_indexed_parameters

    return type_indexed_parameters(hypers)


def finetune_on_nitrogen(tmp_path, hco_checkpoint, method, epochs, **training):
    """``mtt train`` from the H/C/O checkpoint on pbe0_small.xyz (12 of 40 frames
    hold N); returns the log."""
    shutil.copy(DATA / "pbe0_small.xyz", tmp_path)
    shutil.copy(hco_checkpoint, tmp_path / "pretrained.ckpt")
    options = transfer_options(target="energy/pbe0", method=method, epochs=epochs)
    options["architecture"]["training"].update(training)
    options["test_set"] = 0.0
    write_yaml(tmp_path / "options.yaml", options)
    result = run_mtt(["train", "options.yaml", "-o", "model.pt"], cwd=tmp_path)
    return result.stdout + result.stderr


# -------------------------------------------------------------- in-process: the rows


def restarted_on_nitrogen(hco_checkpoint):
    """The H/C/O model after metatrain's fine-tuning ``restart`` on data with N."""
    import copy

    from metatrain.utils.io import model_from_checkpoint

    from metatrain_pet_transfer.model import PETTransfer

    checkpoint, _ = state(hco_checkpoint)
    pretrained = model_from_checkpoint(checkpoint, context="finetune")
    info = copy.deepcopy(pretrained.dataset_info)
    info.atomic_types = HCNO
    # outside an `mtt train` run, only the plugin's class extends (restart_route.py)
    return pretrained, PETTransfer.adopt(pretrained).restart(info)


def test_extension_keeps_every_old_entry(hco_checkpoint):
    from metatrain_pet_transfer.model import PETTransfer

    pretrained, extended = restarted_on_nitrogen(hco_checkpoint)
    assert isinstance(extended, PETTransfer)
    assert extended.atomic_types == HCNO and extended.dataset_info.atomic_types == HCNO
    assert extended.extended_atomic_types == [7]
    before, after = pretrained.state_dict(), extended.state_dict()
    type_indexed = embeddings(pretrained.hypers)
    # node, edge and neighbour embeddings: one row per type
    assert len(type_indexed) >= 2
    for name, old in before.items():
        if name in type_indexed:
            assert after[name].shape[0] == 4
            assert torch.equal(after[name][OLD_ROWS], old), name
        elif name.endswith("species_to_species_index"):
            assert after[name][[1, 6, 7, 8]].tolist() == [0, 1, 2, 3]
        elif not name.endswith(("_buffer", "type_to_index")):
            assert torch.equal(after[name], old), name
    composition = extended.additive_models[0].model
    weights = composition.weights["energy"].block()
    assert weights.samples.values.reshape(-1).tolist() == HCNO
    old_weights = pretrained.additive_models[0].model.weights["energy"].block().values
    assert torch.equal(weights.values[OLD_ROWS], old_weights)
    assert composition.type_to_index[[1, 6, 7, 8]].tolist() == [0, 1, 2, 3]
    assert extended.export().capabilities().atomic_types == HCNO


@pytest.mark.parametrize("init", ["mean", "nearest", "random"])
def test_new_rows_start_as_asked(hco_checkpoint, init):
    from metatrain_pet_transfer.recipe.species import initialise_new_rows

    torch.manual_seed(0)
    _, extended = restarted_on_nitrogen(hco_checkpoint)
    random_rows = {
        name: row[N_ROW].clone()
        for name, row in extended.state_dict().items()
        if name in embeddings(extended.hypers)
    }
    sources = initialise_new_rows(extended, [7], init)
    after = extended.state_dict()
    for name, random_row in random_rows.items():
        rows = after[name]
        if init == "mean":
            assert torch.allclose(rows[N_ROW], rows[OLD_ROWS].mean(dim=0))
        elif init == "nearest":  # N sits between C and O in period 2
            assert sources == {7: [6, 8]}
            assert torch.allclose(rows[N_ROW], rows[[1, 3]].mean(dim=0))
        else:
            assert torch.equal(rows[N_ROW], random_row)
            assert not torch.allclose(rows[N_ROW], rows[OLD_ROWS].mean(dim=0))


def test_keeping_pretrained_heads_with_new_elements_stops(hco_checkpoint):
    from metatrain_pet_transfer.recipe.species import prepare_new_types

    _, extended = restarted_on_nitrogen(hco_checkpoint)
    hypers = {
        "keep_pretrained_heads": True,
        "finetune": {"method": "full", "read_from": str(hco_checkpoint)},
    }
    with pytest.raises(ValueError, match=r"keep_pretrained_heads.*N \(7\)"):
        prepare_new_types(extended, hypers, is_fresh_start=True)
    rows = extended.state_dict()[embeddings(extended.hypers)[0]].clone()
    hypers["keep_pretrained_heads"] = False
    assert prepare_new_types(extended, hypers, is_fresh_start=True) == []  # full
    # the rows were initialised (mean, the default) only once the check passed
    assert not torch.equal(extended.state_dict()[embeddings(extended.hypers)[0]], rows)


def test_nearest_element_by_period_and_group():
    from metatrain_pet_transfer.recipe.species import nearest_types, period_and_group

    assert [period_and_group(z) for z in (1, 7, 14, 26, 53, 58, 79)] == [
        (1, 1), (2, 15), (3, 14), (4, 8), (5, 17), (6, 3), (6, 11),
    ]  # fmt: skip
    assert nearest_types(7, HCO) == [6, 8]
    assert nearest_types(9, HCO) == [8]  # F: next to O
    assert nearest_types(14, HCO) == [6]  # Si: below C
    assert nearest_types(16, [1, 6, 8, 15]) == [8]  # S: below O beats P beside it


def test_default_initialisation_is_documented():
    from metatrain_pet_transfer.documentation import TrainerHypers
    from metatrain_pet_transfer.recipe.species import DEFAULT_INITIALISATION

    assert TrainerHypers.new_atomic_types_init == DEFAULT_INITIALISATION


# ------------------------------------------------------- other architectures' runs

#: `mtt train` in a process that imported the plugin first, for each options file
#: given; metatrain's error ends each run (exit code 1), the loop goes on
NATIVE_RUNS = """
import sys

import metatrain_pet_transfer  # noqa: F401
from metatrain.__main__ import main
from metatrain.pet import PET

assert hasattr(PET.restart, "__wrapped__")  # the plugin's route is in place
for options in sys.argv[1:]:
    sys.argv = ["mtt", "train", options]
    try:
        main()
    except SystemExit as stop:
        print(f"{options}: exit code {stop.code}")
"""


def test_native_pet_runs_keep_pets_error_with_the_plugin_imported(
    tmp_path, hco_checkpoint
):
    """A ``name: pet`` fine-tune from the H/C/O checkpoint on data with N stops with
    metatrain's own error in a process that imported the plugin: from the native
    checkpoint, and from the same checkpoint written under ``pet_transfer``'s name
    (which loads as a ``PETTransfer``)."""
    import metatomic.torch  # noqa: F401  (classes stored in the checkpoint)

    shutil.copy(DATA / "pbe0_small.xyz", tmp_path)
    shutil.copy(hco_checkpoint, tmp_path / "native.ckpt")
    checkpoint = torch.load(hco_checkpoint, weights_only=False)
    checkpoint["architecture_name"] = "pet_transfer"
    torch.save(checkpoint, tmp_path / "transfer.ckpt")
    for name in ("native", "transfer"):
        options = transfer_options(target="energy", read_from=f"{name}.ckpt")
        options["architecture"]["name"] = "pet"
        write_yaml(tmp_path / f"{name}.yaml", options)
    result = run_mtt(
        ["native.yaml", "transfer.yaml"],
        cwd=tmp_path,
        launcher=(sys.executable, "-c", NATIVE_RUNS),
    )
    log = result.stdout + result.stderr
    pet_error = (
        "New atomic types found in the dataset: [7]. The PET model does not support "
        "adding new atomic types."
    )
    assert log.count(pet_error) == 2, log[-3000:]
    assert "native.yaml: exit code 1" in log and "transfer.yaml: exit code 1" in log
    assert "New atomic types: N (7)" not in log  # the plugin's extension never ran


# ------------------------------------------------------------ mtt train, per method


def test_full_starts_from_the_checkpoint_rows_and_exports_the_union(
    tmp_path, hco_checkpoint
):
    # zero epochs: the checkpoint written is the model before the first step
    log = finetune_on_nitrogen(
        tmp_path, hco_checkpoint, "full", 0, new_atomic_types_init="nearest"
    )
    assert "New atomic types: N (7) are not in the checkpoint (H, C, O)" in log
    assert "N from C+O" in log
    _, pretrained = state(hco_checkpoint)
    checkpoint, start = state(tmp_path / "model.ckpt")
    assert checkpoint["model_data"]["dataset_info"].atomic_types == HCNO
    for name in embeddings(checkpoint["model_data"]["model_hypers"]):
        assert torch.equal(start[name][OLD_ROWS], pretrained[name]), name
        assert torch.allclose(start[name][N_ROW], start[name][[1, 3]].mean(dim=0))

    # `mtt-transfer inspect` shows the union, with a composition weight for N
    from metatrain_pet_transfer.cli.inspect.describe import describe_checkpoint
    from metatrain_pet_transfer.cli.inspect.formatting import format_summary

    summary = format_summary(describe_checkpoint(tmp_path / "model.ckpt"))
    assert "H (1), C (6), N (7), O (8)" in summary

    # the exported model declares H, C, N, O and evaluates a nitrogen molecule
    from metatomic_ase import MetatomicCalculator

    calculator = MetatomicCalculator(
        str(tmp_path / "model.pt"), variants={"energy": "pbe0"}
    )
    assert calculator._model.capabilities().atomic_types == HCNO
    hydrazine = next(
        a for a in ase.io.read(DATA / "pbe0_small.xyz", ":") if a.info["mol"] == "N2H4"
    )
    hydrazine.calc = calculator
    energy, forces = hydrazine.get_potential_energy(), hydrazine.get_forces()
    # the composition weight of N was fitted on the PBE0 labels: the energy is on
    # their scale (hundreds of eV), not the tiny model's raw output
    assert abs(energy - hydrazine.info["energy_pbe0"]) < 0.05 * abs(energy)
    assert forces.shape == (6, 3) and torch.isfinite(torch.tensor(forces)).all()


@pytest.mark.parametrize("method", ["heads", "lora"])
def test_frozen_methods_train_only_the_new_rows(tmp_path, hco_checkpoint, method):
    config = {
        "heads": {
            "head_modules": ["node_heads", "edge_heads"],
            "last_layer_modules": ["node_last_layers", "edge_last_layers"],
        },
        "lora": {"rank": 2, "alpha": 4},
    }[method]
    finetune = {"method": method, "read_from": "pretrained.ckpt", "config": config}
    extra = {"finetune": finetune}
    log = finetune_on_nitrogen(
        tmp_path, hco_checkpoint, method, 1, new_atomic_types_init="mean", **extra
    )
    assert f"train while the rest of the {method} backbone is frozen" in log
    _, pretrained = state(hco_checkpoint)
    checkpoint, trained = state(tmp_path / "model.ckpt", "model_state_dict")
    for name in embeddings(checkpoint["model_data"]["model_hypers"]):
        assert torch.equal(trained[name][OLD_ROWS], pretrained[name]), name
        start = pretrained[name].mean(dim=0)
        assert not torch.allclose(trained[name][N_ROW], start, atol=1e-6), name
    # the backbone stayed frozen
    frozen = [
        k for k in pretrained if k.startswith("backend.gnn_layers.0.") and k in trained
    ]
    assert frozen and all(torch.equal(trained[k], pretrained[k]) for k in frozen)
    if method == "lora":
        return

    # --restart continues the run: same rows, no second extension
    restarted = run_mtt(
        ["train", "options.yaml", "-o", "restarted.pt", "--restart", "model.ckpt",
         "-r", "architecture.training.num_epochs=2"],
        cwd=tmp_path,
    )  # fmt: skip
    assert "New atomic types" not in restarted.stdout + restarted.stderr
    checkpoint, again = state(tmp_path / "restarted.ckpt", "model_state_dict")
    assert checkpoint["epoch"] == 1
    for name in embeddings(checkpoint["model_data"]["model_hypers"]):
        assert torch.equal(again[name][OLD_ROWS], pretrained[name]), name
        assert not torch.equal(again[name][N_ROW], trained[name][N_ROW]), name
