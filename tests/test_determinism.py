"""Same options, same seed, same data, same machine: bit-identical weights."""

import shutil

import torch

from conftest import run_mtt, transfer_options, write_yaml


def load(path):
    import metatomic.torch  # noqa: F401

    return torch.load(path, weights_only=False, map_location="cpu")


def test_two_runs_give_identical_weights(workdir):
    options = transfer_options(epochs=2)
    options["final_eval"] = False
    write_yaml(workdir / "options.yaml", options)
    second = workdir / "second"
    second.mkdir()
    for name in ["pbe0_small.xyz", "pretrained.ckpt", "options.yaml"]:
        shutil.copy(workdir / name, second / name)

    run_mtt(["train", "options.yaml"], cwd=workdir)
    run_mtt(["train", "options.yaml"], cwd=second)

    first, other = load(workdir / "model.ckpt"), load(second / "model.ckpt")
    assert first["epoch"] == other["epoch"] == 1
    for state in ["model_state_dict", "best_model_state_dict"]:
        a, b = first[state], other[state]
        assert a.keys() == b.keys()
        tensors = [key for key, value in a.items() if isinstance(value, torch.Tensor)]
        assert tensors
        for key in tensors:
            assert a[key].dtype == b[key].dtype, (state, key)
            assert torch.equal(a[key], b[key]), (state, key)
        # the non-tensor entries (finetune_config) too
        assert {k: v for k, v in a.items() if k not in tensors} == {
            k: v for k, v in b.items() if k not in tensors
        }
    assert first["best_epoch"] == other["best_epoch"]
    assert first["best_metric"] == other["best_metric"]
