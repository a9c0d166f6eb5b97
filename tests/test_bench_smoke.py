"""The benchmark scripts (``bench/learning_curve.py``, ``bench/pretrain.py``) run.

A smoke test, not a benchmark: ``--tiny`` trains for 2 epochs on 10 frames, so only
the plumbing is checked (splits, ``mtt train``/``mtt eval`` subprocesses, scoring,
CSV/markdown/PNG), never the numbers.
"""

import csv
import importlib.util
import math
import os
import subprocess
import sys

import pytest
import yaml

from conftest import DATA, TESTS


HARNESS = TESTS.parent / "bench" / "learning_curve.py"


def load_harness():
    spec = importlib.util.spec_from_file_location("learning_curve", HARNESS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_splits_are_disjoint_stratified_and_nested(tmp_path):
    import ase.io

    harness = load_harness()
    settings, _ = harness.parse_args(
        [
            "--data",
            str(DATA / "pbe0_small.xyz"),
            "--out",
            str(tmp_path),
            "--seeds",
            "0,1",
        ]
    )
    mols = [atoms.info["mol"] for atoms in ase.io.read(settings.data, ":")]
    splits = harness.make_splits(mols, settings)
    assert splits == harness.make_splits(mols, settings)  # fixed by the split seed

    test, val = set(splits["test"]), set(splits["val"])
    assert len(test) == round(0.25 * len(mols)) and len(val) == round(0.1 * len(mols))
    for order in splits["train_order"].values():
        assert not (test | val) & set(order)
        assert sorted(test | val | set(order)) == list(range(len(mols)))
    # N=10 for a seed is the first 10 of its order: ten different molecules
    assert len({mols[i] for i in splits["train_order"]["0"][:10]}) == 10


def test_test_split_holds_every_molecule_in_proportion(tmp_path):
    harness = load_harness()
    settings, _ = harness.parse_args(["--out", str(tmp_path)])
    mols = ["a"] * 8 + ["b"] * 12 + ["c"] * 9 + ["d"] * 3 + ["e"]
    test = [mols[i] for i in harness.make_splits(mols, settings)["test"]]
    assert len(test) == round(0.25 * len(mols))
    assert {mol: test.count(mol) for mol in "abcd"} == {"a": 2, "b": 3, "c": 2, "d": 1}


def test_tiny_campaign_writes_finite_results(tmp_path, pretrained_checkpoint):
    out = tmp_path / "out"
    command = [
        sys.executable,
        str(HARNESS),
        "--tiny",
        "--data",
        str(DATA / "pbe0_small.xyz"),
        "--checkpoint",
        str(pretrained_checkpoint),
        "--rows",
        "native-full,zero-shot",
        "--out",
        str(out),
        "--runs",
        str(tmp_path / "runs"),
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    result = subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    with open(out / "results.csv", newline="") as stream:
        records = list(csv.DictReader(stream))
    assert sorted(r["row"] for r in records) == ["native-full", "zero-shot"]
    for record in records:
        assert record["status"] == "ok", record["error"]
        for column in [
            "val_energy_mae_meV_atom",
            "val_force_mae_meV_A",
            "test_energy_mae_meV_atom",
            "test_force_mae_meV_A",
            "wall_s",
        ]:
            assert math.isfinite(float(record[column])), (record["row"], column)

    table = (out / "results.md").read_text()
    assert "| zero-shot | 10 |" in table and "| native-full | 10 | 2 |" in table
    assert "failed" not in table
    assert (out / "results.png").stat().st_size > 0
    assert (out / "splits.json").is_file()


PRETRAIN = TESTS.parent / "bench" / "pretrain.py"
SHARED_OPTIONS = TESTS.parent.parent / "shared" / "checkpoints" / "pet_xtb.options.yaml"


def load_pretrain():
    spec = importlib.util.spec_from_file_location("pretrain", PRETRAIN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not SHARED_OPTIONS.is_file(), reason="needs ../shared")
def test_pretrain_uses_the_options_of_the_shared_checkpoint():
    shared = yaml.safe_load(SHARED_OPTIONS.read_text())
    ours = load_pretrain().PRETRAIN_OPTIONS
    # the data path is the only difference: ours reads the copy in the run folder
    assert ours["training_set"]["systems"].pop("read_from") == "pretrain_xtb.xyz"
    shared["training_set"]["systems"].pop("read_from")
    assert ours == shared


def test_pretrain_tiny_gives_a_checkpoint_the_harness_reads(tmp_path):
    out = tmp_path / "pretrain"
    command = [sys.executable, str(PRETRAIN), "--tiny", "--out", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    result = subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "xTB test forces MAE" in result.stdout

    pretrained = load_harness().read_pretrained(out / "pet_xtb.ckpt")
    assert pretrained.target == "energy"
    assert pretrained.model_hypers["d_pet"] == 8

    # a second run never writes into a used folder
    again = subprocess.run(command, capture_output=True, text=True, env=env)
    assert again.returncode == 2 and "is not empty" in again.stderr


def test_lr_from_reuses_the_learning_rate_selected_at_that_n(tmp_path):
    harness = load_harness()
    settings, _ = harness.parse_args(
        ["--out", str(tmp_path), "--lr-from", "100", "--half-epochs-from", "200"]
    )
    header = ",".join(harness.COLUMNS)
    lines = [
        "native-full,100,0,0.0003,80,1,2,3,4,5,6,7,ok,yes,,",
        "native-full,100,0,0.001,80,1,9,3,4,5,6,7,ok,,,",
    ]
    (tmp_path / "results.csv").write_text("\n".join([header, *lines]) + "\n")
    pretrained = harness.Pretrained(tmp_path, "energy", {}, 5e-4)

    at_100 = harness.runs_of_row("native-full", 100, 0, settings, pretrained)
    assert [run.lr for run in at_100] == settings.lrs  # the search itself
    at_25 = harness.runs_of_row("native-full", 25, 0, settings, pretrained)
    assert [(run.lr, run.epochs) for run in at_25] == [(3e-4, 80)]
    at_200 = harness.runs_of_row("native-full", 200, 0, settings, pretrained)
    assert [(run.lr, run.epochs) for run in at_200] == [(3e-4, 40)]
    with pytest.raises(SystemExit, match="no selected learning rate at N=100"):
        harness.runs_of_row("native-heads", 25, 0, settings, pretrained)


def test_overhead_runs_one_tiny_pair(tmp_path, pretrained_checkpoint):
    command = [
        sys.executable,
        str(TESTS.parent / "bench" / "overhead.py"),
        "--checkpoint",
        str(pretrained_checkpoint),
        "--data",
        str(DATA / "pbe0_small.xyz"),
        "--frames",
        "10",
        "--pairs",
        "1",
        "--epochs",
        "3",
        "--workdir",
        str(tmp_path),
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    result = subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for label in ["training time per epoch", "peak RSS", "inference"]:
        line = next(x for x in result.stdout.splitlines() if label in x)
        assert math.isfinite(float(line.split()[-2])), line
