"""``mtt-transfer inspect``: reporting a checkpoint, and refusing unsafe ones."""

import gzip
import json
import os
import pathlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from metatrain_pet_transfer.checkpoints import load_checkpoint_safely
from metatrain_pet_transfer.cli import main


SHIPPED_CHECKPOINT = (
    Path(__file__).parent / "checkpoints" / "model-v16_trainer-v15.ckpt.gz"
)


def mtt_transfer(*args):
    """Run the installed ``mtt-transfer`` console script, as a user would."""
    script = Path(sys.executable).parent / "mtt-transfer"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return subprocess.run(
        [str(script), *args], capture_output=True, text=True, env=env, timeout=300
    )


def load_model(path):
    import metatomic.torch  # noqa: F401  (registers the classes the pickle names)
    from metatrain.utils.io import model_from_checkpoint

    checkpoint = torch.load(path, weights_only=False, map_location="cpu")
    return model_from_checkpoint(checkpoint, context="export")


def is_head_parameter(name: str) -> bool:
    groups = ["node_heads", "edge_heads", "node_last_layers", "edge_last_layers"]
    return any(name.startswith(f"backend.{group}.") for group in groups)


def inspect_json(capsys, path) -> dict:
    assert main(["inspect", "--json", str(path)]) == 0
    return json.loads(capsys.readouterr().out)


class TouchMarker:
    """Unpickling this object creates ``marker``: the stand-in for malicious code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_inspect_reports_what_options_need(pretrained_checkpoint):
    result = mtt_transfer("inspect", str(pretrained_checkpoint))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "architecture:         pet\n" in out
    assert "energy: quantity=energy, unit=eV, gradients=positions, per-system" in out
    assert "H (1), C (6), N (7), O (8)" in out
    assert "cutoff:               4.0 angstrom" in out
    # the ready-to-paste options.yaml points at the inspected file
    assert "name: pet_transfer" in out
    assert f'read_from: "{pretrained_checkpoint.resolve()}"' in out
    assert "mtt::energy_<level> or energy/<level>" in out


def test_inspect_json(capsys, pretrained_checkpoint):
    summary = inspect_json(capsys, pretrained_checkpoint)
    assert summary["architecture_name"] == "pet"
    assert summary["is_pet"]
    assert summary["cutoff"] == 4.0
    assert summary["model_hypers"]["d_pet"] == 8
    assert summary["length_unit"] == "angstrom"
    assert [t["number"] for t in summary["atomic_types"]] == [1, 6, 7, 8]
    assert [t["symbol"] for t in summary["atomic_types"]] == ["H", "C", "N", "O"]

    energy = summary["targets"]["energy"]
    assert (energy["quantity"], energy["unit"]) == ("energy", "eV")
    assert energy["gradients"] == ["positions"]
    assert energy["per_atom"] is False

    versions = summary["checkpoint_versions"]
    assert versions["model"]["status"] == "current"
    assert versions["trainer"]["status"] == "current"
    assert summary["finetune"]["finetune_config"] == {}

    # counted from the state dict; checked here against the model metatrain builds
    # from the same checkpoint: its torch parameters are the backbone and the heads,
    # the composition weights (one per element) and the scales (the energy scale,
    # per target and per property: one each) are serialized buffers on top
    model = load_model(pretrained_checkpoint)
    trainable = dict(model.named_parameters())
    heads = [name for name in trainable if is_head_parameter(name)]
    parameters = summary["parameters"]
    assert parameters["heads_total"] == sum(trainable[n].numel() for n in heads)
    assert parameters["heads_total"] == energy["head_parameters"]
    assert parameters["groups"]["backbone"] == sum(
        p.numel() for n, p in trainable.items() if n not in heads
    )
    assert parameters["groups"]["composition"] == 4
    assert parameters["groups"]["scaler"] == 3
    assert parameters["total"] == sum(p.numel() for p in trainable.values()) + 4 + 3

    weights = summary["composition_weights"]["energy"]["weights"]
    assert list(weights) == ["H", "C", "N", "O"]
    assert all(isinstance(value, float) for value in weights.values())


def test_verify_accepts_a_pet_checkpoint(capsys, pretrained_checkpoint):
    assert main(["inspect", "--verify", str(pretrained_checkpoint)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("OK:") and str(pretrained_checkpoint) in out
    assert len(out.strip().splitlines()) == 1


def test_verify_refuses_a_truncated_copy(capsys, tmp_path, pretrained_checkpoint):
    truncated = tmp_path / "truncated.ckpt"
    data = pretrained_checkpoint.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])

    assert main(["inspect", "--verify", str(truncated)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("REFUSED:") and str(truncated) in err
    assert "truncated" in err
    assert len(err.strip().splitlines()) == 1


def test_verify_refuses_a_crafted_pickle_without_running_it(capsys, tmp_path):
    marker = tmp_path / "marker"
    crafted = tmp_path / "crafted.ckpt"
    torch.save({"architecture_name": "pet", "payload": TouchMarker(marker)}, crafted)

    assert main(["inspect", "--verify", str(crafted)]) == 1
    err = capsys.readouterr().err
    assert str(crafted) in err and "refusing to load it" in err
    assert len(err.strip().splitlines()) == 1
    assert not marker.exists()

    assert main(["inspect", str(crafted)]) == 2
    assert "refusing to load it" in capsys.readouterr().err
    assert not marker.exists()

    # the payload is live: a plain unpickling does run it
    torch.load(crafted, weights_only=False)
    assert marker.exists()


def test_verify_refuses_a_checkpoint_too_new(capsys, tmp_path, pretrained_checkpoint):
    checkpoint = load_checkpoint_safely(pretrained_checkpoint)
    checkpoint["model_ckpt_version"] += 1
    future = tmp_path / "future.ckpt"
    torch.save(checkpoint, future)

    assert main(["inspect", "--verify", str(future)]) == 1
    err = capsys.readouterr().err
    assert str(future) in err and "upgrade metatrain" in err

    summary = inspect_json(capsys, future)
    assert summary["checkpoint_versions"]["model"]["status"].startswith("too new")


def _missing(tmp_path):
    return tmp_path / "missing.ckpt"


def _directory(tmp_path):
    return tmp_path


def _text_file(tmp_path):
    path = tmp_path / "notes.ckpt"
    path.write_text("not a checkpoint\n")
    return path


def _other_torch_file(tmp_path):
    path = tmp_path / "tensors.pt"
    torch.save({"weights": torch.zeros(3)}, path)
    return path


def _no_model_data(tmp_path):
    path = tmp_path / "bare.ckpt"
    torch.save({"architecture_name": "pet"}, path)
    return path


def _exported_model(tmp_path):
    path = tmp_path / "model.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), path)
    return path


@pytest.mark.parametrize(
    "make_path",
    [
        _missing,
        _directory,
        _text_file,
        _other_torch_file,
        _no_model_data,
        _exported_model,
    ],
)
def test_unreadable_files_give_one_line_and_exit_2(capsys, tmp_path, make_path):
    path = make_path(tmp_path)
    assert main(["inspect", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("mtt-transfer inspect:")
    assert f"'{path}'" in captured.err
    assert len(captured.err.strip().splitlines()) == 1


def test_plugin_checkpoint_is_inspected_too(capsys, tmp_path):
    # a checkpoint written by pet_transfer, shipped with the tests
    path = tmp_path / "transferred.ckpt"
    with gzip.open(SHIPPED_CHECKPOINT) as source, open(path, "wb") as target:
        shutil.copyfileobj(source, target)

    summary = inspect_json(capsys, path)
    assert summary["architecture_name"] == "pet_transfer" and summary["is_pet"]
    assert summary["targets"]["energy"]["unit"] == "eV"
    assert main(["inspect", "--verify", str(path)]) == 0


def test_no_subcommand_prints_help(capsys):
    assert main([]) == 2
    assert "inspect" in capsys.readouterr().err
