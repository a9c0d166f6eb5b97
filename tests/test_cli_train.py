"""``mtt train/export/eval`` with ``name: pet_transfer``, as a user runs them."""

import re

import torch

from conftest import python_launcher, run_mtt, transfer_options, write_yaml


def load(path):
    import metatomic.torch  # noqa: F401

    return torch.load(path, weights_only=False, map_location="cpu")


def final_metrics(log):
    """The MAE lines of the final evaluation, in order."""
    return re.findall(r"energy_pbe0 MAE \(per atom\): ([0-9.]+)", log)


def test_train_export_eval_restart(workdir):
    write_yaml(workdir / "options.yaml", transfer_options(epochs=2))
    result = run_mtt(["train", "options.yaml", "-o", "model.pt"], cwd=workdir)
    log = result.stdout + result.stderr
    assert "Running training for 'pet_transfer' architecture" in log

    checkpoint = load(workdir / "model.ckpt")
    assert checkpoint["architecture_name"] == "pet_transfer"
    assert list(checkpoint["model_data"]["dataset_info"].targets) == [
        "mtt::energy_pbe0"
    ]
    assert (workdir / "model.pt").is_file()

    # metatrain's own export and eval accept the plugin's checkpoint
    run_mtt(["export", "model.ckpt", "-o", "exported.pt"], cwd=workdir)
    assert (workdir / "exported.pt").is_file()
    write_yaml(
        workdir / "eval.yaml",
        {
            "systems": {"read_from": "pbe0_small.xyz", "length_unit": "angstrom"},
            "targets": transfer_options()["training_set"]["targets"],
        },
    )
    from_checkpoint = run_mtt(["eval", "model.ckpt", "eval.yaml"], cwd=workdir)
    from_export = run_mtt(["eval", "exported.pt", "eval.yaml"], cwd=workdir)
    mae_checkpoint = final_metrics(from_checkpoint.stdout + from_checkpoint.stderr)
    mae_export = final_metrics(from_export.stdout + from_export.stderr)
    assert mae_checkpoint and mae_checkpoint == mae_export

    # a target the checkpoint does not serve is named, with the ones it does
    # (metatrain says only "Not all targets are within the model's supported
    # outputs", framed as an architecture's bug)
    targets = transfer_options()["training_set"]["targets"]
    write_yaml(
        workdir / "eval-energy.yaml",
        {
            "systems": {"read_from": "pbe0_small.xyz", "length_unit": "angstrom"},
            "targets": {"energy": targets["mtt::energy_pbe0"]},
        },
    )
    wrong = run_mtt(
        ["eval", "model.ckpt", "eval-energy.yaml"], cwd=workdir, check=False
    )
    log = wrong.stdout + wrong.stderr
    assert wrong.returncode == 1
    assert (
        "eval-energy.yaml: target 'energy' is not an output of 'model.ckpt'; its "
        "energy outputs are 'mtt::energy_pbe0'" in log
    )
    assert "most likely originates from an architecture" not in log

    # --restart continues the same run with this architecture's trainer
    restarted = run_mtt(
        [
            "train",
            "options.yaml",
            "-o",
            "restarted.pt",
            "--restart",
            "model.ckpt",
            "-r",
            "architecture.training.num_epochs=4",
        ],
        cwd=workdir,
    )
    log = restarted.stdout + restarted.stderr
    assert "Using latest model from epoch 1" in log
    assert re.search(r"Epoch:\s+3 ", log)
    assert not re.search(r"Epoch:\s+0 ", log)
    assert load(workdir / "restarted.ckpt")["epoch"] == 3


def test_python_m_launcher_is_mtt(workdir):
    """``python -m metatrain_pet_transfer train`` (no .pth needed) gives the very same
    model as ``mtt train``."""
    write_yaml(workdir / "options.yaml", transfer_options(epochs=1))
    run_mtt(["train", "options.yaml", "-o", "a.pt"], cwd=workdir)
    run_mtt(
        ["train", "options.yaml", "-o", "b.pt"], cwd=workdir, launcher=python_launcher()
    )
    a = load(workdir / "a.ckpt")["best_model_state_dict"]
    b = load(workdir / "b.ckpt")["best_model_state_dict"]
    assert a.keys() == b.keys()
    for key, value in a.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, b[key]), key


def test_mistyped_name_suggests_pet_transfer(workdir):
    options = transfer_options()
    options["architecture"]["name"] = "pet_transfr"
    write_yaml(workdir / "options.yaml", options)
    result = run_mtt(["train", "options.yaml"], cwd=workdir, check=False)
    assert result.returncode != 0
    assert "Did you mean 'pet_transfer'?" in result.stdout + result.stderr


def test_missing_checkpoint_stops_before_training(workdir):
    write_yaml(
        workdir / "options.yaml", transfer_options(read_from="no/such/model.ckpt")
    )
    result = run_mtt(["train", "options.yaml"], cwd=workdir, check=False)
    log = result.stdout + result.stderr
    assert result.returncode != 0
    assert "training.finetune.read_from" in log
    assert "'no/such/model.ckpt' does not exist" in log
    assert "Setting up training set" not in log
    assert not (workdir / "model.ckpt").exists()


def test_model_hypers_come_from_the_checkpoint(workdir):
    # the options give no model hypers: the trained model has the checkpoint's (a
    # tiny PET, far from PET's defaults), including those that shape no weight
    options = transfer_options(epochs=0)
    write_yaml(workdir / "options.yaml", options)
    run_mtt(["train", "options.yaml", "-o", "model.pt"], cwd=workdir)
    pretrained, trained = (
        load(workdir / "pretrained.ckpt"),
        load(workdir / "model.ckpt"),
    )
    hypers = trained["model_data"]["model_hypers"]
    assert hypers == pretrained["model_data"]["model_hypers"]
    assert (hypers["d_pet"], hypers["cutoff"]) == (8, 4.0)

    # hypers that differ from the checkpoint's are refused, not silently replaced
    options = transfer_options()
    options["architecture"]["model"] = {"d_pet": 16, "cutoff": 5.0, "d_head": 8}
    write_yaml(workdir / "options.yaml", options)
    result = run_mtt(["train", "options.yaml"], cwd=workdir, check=False)
    log = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Mismatched hypers: ['d_pet', 'cutoff']" in log
