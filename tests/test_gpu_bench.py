"""The GPU check and the foundation-sized PET benchmark: their parsing, comparison and
clock, on hand-made logs (the runs themselves are ``bench/gpu_check.sh``'s, on the
device; docs/gpu.md)."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

from conftest import TESTS


BENCH = TESTS.parent / "bench"


def load(name):
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


LOG = """\
[2026-12-04 18:22:20][INFO] - Run inputs checked: 30 training, 10 validation, 0 test
[2026-12-04 18:22:21][INFO] - Zero-shot training errors: mtt::energy_pbe0 RMSE (per \
atom): 47.5 meV/atom | mtt::energy_pbe0_positions_gradients MAE: 327.2 meV/A
[2026-12-04 18:22:21][INFO] - Zero-shot validation errors: mtt::energy_pbe0 MAE (per \
atom): 32.81 meV/atom
[default0]:[2026-12-04 18:22:21][INFO] - Process 0 of 1 (torchrun, nccl on cuda:0); \
collectives time out after 1800 s
[2026-12-04 18:22:21][INFO] - Training on device cuda:0 with dtype torch.float32
[2026-12-04 18:22:25][INFO] - Epoch:    0 | learning rate: 0.000e+00 | training loss: \
5.080e+00 | validation mtt::energy_pbe0 MAE (per atom): 32.796 meV | validation \
forces[mtt::energy_pbe0] MAE: 272.42 meV/A
"""


def test_gpu_check_reads_the_epoch_zero_numbers_and_the_device():
    check = load("gpu_check")
    numbers = check.training_numbers(LOG)
    assert numbers == {
        "zero-shot training mtt::energy_pbe0 RMSE (per atom)": 47.5,
        "zero-shot training mtt::energy_pbe0_positions_gradients MAE": 327.2,
        "zero-shot validation mtt::energy_pbe0 MAE (per atom)": 32.81,
        "epoch 0 training loss": 5.08,
        "epoch 0 validation mtt::energy_pbe0 MAE (per atom)": 32.796,
        "epoch 0 validation forces[mtt::energy_pbe0] MAE": 272.42,
    }
    assert check.training_facts(LOG) == {
        "device": "cuda:0",
        "backend": "nccl on cuda:0",
    }


def test_gpu_check_tolerances():
    check = load("gpu_check")
    reference = {
        "epoch 0 validation loss": 100.0,
        "energy 0 (eV)": -2000.0,
        "chosen 0": 17.0,
    }

    def compared(**numbers):
        result = check.Check("x", finished=True, numbers=numbers)
        check.compare(result, reference)
        return result

    close = compared(
        **{
            "epoch 0 validation loss": 100.05,  # 0.05 < 0.01 + 1e-3 * 100
            "energy 0 (eV)": -2000.0005,  # float32 rounding at 2000 eV
            "chosen 0": 17.0,
        }
    )
    assert close.agrees and close.compared == 3
    assert not compared(
        **{"epoch 0 validation loss": 100.2, "energy 0 (eV)": -2000.0, "chosen 0": 17}
    ).agrees
    other = compared(
        **{"epoch 0 validation loss": 100.0, "energy 0 (eV)": -2000.0, "chosen 0": 3}
    )
    assert not other.agrees and other.worst_key == "chosen 0"
    missing = compared(**{"epoch 0 validation loss": 100.0})
    assert not missing.agrees and missing.missing == ["chosen 0", "energy 0 (eV)"]


def test_the_committed_reference_covers_every_check():
    check = load("gpu_check")
    reference = json.loads(check.REFERENCE.read_text())
    trainings = set(check.trainings(Path("inputs"), "cpu"))
    assert set(reference) == trainings | {"select", "eval", "export", "report"}
    for name in trainings:
        keys = reference[name]
        assert any(key.startswith("zero-shot validation") for key in keys), name
        assert any(key.startswith("epoch 0 validation") for key in keys), name
    assert len([k for k in reference["select"] if k.startswith("chosen")]) == 10
    assert any(key.startswith("force") for key in reference["export"])


def test_clock_marks_lines_and_reads_one_epoch(tmp_path):
    clock = load("epoch_clock")
    script = (
        "import time\n"
        "print('Calling trainer', flush=True); time.sleep(0.2)\n"
        "print('Training on device cuda', flush=True)\n"
        "print('Epoch:    0 | loss 1', flush=True)\n"
        "print('peak GPU memory (MiB): 12.5', flush=True)\n"
    )
    command = [sys.executable, "-c", script]
    timing = clock.timed_training(
        command, tmp_path, {}, marks=["Calling trainer", "Training on"], min_epochs=1
    )
    passes = timing.marks["Training on"] - timing.marks["Calling trainer"]
    assert 0.15 < passes < 5
    assert math.isnan(timing.epoch)  # one epoch line: no interval
    assert load("foundation_pet").peak_memory(timing) == 12.5
    with pytest.raises(RuntimeError, match="fewer than 3 epoch lines"):
        clock.timed_training(command, tmp_path, {})


def test_foundation_frames_cover_every_element_and_rattle_the_repeats(tmp_path):
    import ase.io
    import numpy as np

    foundation = load("foundation_pet")
    everything = ase.io.read(foundation.PRETRAIN_DATA, ":")
    few = ase.io.read(foundation.write_frames(tmp_path / "few.xyz", 50), ":")
    assert {int(z) for a in few for z in a.numbers} == {1, 6, 7, 8}
    many = foundation.write_frames(tmp_path / "many.xyz", len(everything) + 5, 0.02)
    many = ase.io.read(many, ":")
    assert len(many) == len(everything) + 5
    np.testing.assert_array_equal(many[3].positions, everything[3].positions)
    shift = many[len(everything) + 3].positions - everything[3].positions
    assert 0 < np.abs(shift).max() < 0.2
    assert "forces_xtb" in many[-1].arrays


def test_foundation_table_reads_the_ratios(tmp_path):
    foundation = load("foundation_pet")
    results = foundation.Results(tmp_path, "cuda", {})
    row = {"epoch": 2.0, "wall": 60.0, "rss": 900.0, "gpu": 1000.0, "passes": 0.5}
    results.data["make"] = {
        "parameters": 4177666,
        "epochs": 2,
        "frames": 2990,
        "wall": 40.0,
    }
    results.data["compare"] = {"frames": 356, "epochs": 6}
    results.data["pairs"] = [
        {"pet": row, "pet_transfer": {**row, "epoch": 2.02, "passes": 1.5}}
    ]
    results.data["startup"] = [
        {"structures": 1000, "passes": 3.0, "epoch0": 6.0, "wall": 30.0}
    ]
    results.save()
    text = (tmp_path / "foundation.md").read_text()
    assert "4.18 M parameters" in text
    assert "| time per epoch (s) | 2 | 2.02 | 1.010 (1.010-1.010) |" in text
    assert "| 1000 | 3.0 | 6.0 | 0.50 | 30 |" in text
    assert json.loads((tmp_path / "foundation.json").read_text())["device"] == "cuda"
