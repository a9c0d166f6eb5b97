"""The PBE0 benchmark harness (``bench/pbe0_transfer.py``) runs end to end.

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

from conftest import DATA, TESTS


HARNESS = TESTS.parent / "bench" / "pbe0_transfer.py"


def load_harness():
    spec = importlib.util.spec_from_file_location("pbe0_transfer", HARNESS)
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
