"""The new-properties benchmark (``bench/properties.py``) runs and scores right.

The reader of ``mtt eval``'s predictions (a per-atom ``mtt::charges`` column that
ASE cannot read), the errors, the cross-check against ``mtt eval``'s per-atom MAE and
the rotation check are checked against hand-made values; a tiny campaign (the
session's tiny PET, 10 training frames, 1 epoch) runs the real harness end to end:
``mean`` and native ``full`` on the dipole and the charges, with the rotation check
of the exported dipole model.
"""

import csv
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from test_bench_smoke import run_harness

from conftest import TESTS


BENCH = TESTS.parent / "bench"
HARNESS = BENCH / "properties.py"
PROPS_DATA = BENCH / "data" / "pbe0_props.xyz"


def load_harness():
    spec = importlib.util.spec_from_file_location("properties", HARNESS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # puts bench/ on sys.path
    return module


# ----------------------------------------------------------- mtt eval's predictions

#: what `mtt eval` writes for a per-atom `mtt::charges` and a per-structure
#: `mtt::dipole` (metatrain 2026.4): ASE's reader fails on the Properties string
HEADER = "Properties=species:S:1:pos:R:3:mtt::charges:R:1 mtt::dipole="
PREDICTIONS = f"""\
2
{HEADER}"_JSON [[0.1], [-0.2], [0.3]]" pbc="F F F"
O       0.00000000       0.00000000       0.00000000      -0.40000000
H       0.96000000       0.00000000       0.00000000       0.30000000
1
{HEADER}"_JSON [[0.0], [0.0], [1.0]]" pbc="F F F"
H       0.00000000       0.00000000       1.00000000       0.05000000
"""


class Frame:
    """What the scoring reads of a frame."""

    def __init__(self, numbers, positions, dipole, charges):
        self.numbers = np.array(numbers)
        self.positions = np.array(positions, dtype=float)
        self.info = {"dipole_pbe0": np.array(dipole, dtype=float)}
        self.arrays = {"charges_pbe0": np.array(charges, dtype=float)}

    def __len__(self):
        return len(self.numbers)


FRAMES = [
    Frame([8, 1], [[0, 0, 0], [0.96, 0, 0]], [0.1, 0.0, 0.3], [-0.3, 0.3]),
    Frame([1], [[0, 0, 1]], [0.0, 0.0, -1.0], [0.0]),
]


def test_predictions_with_a_per_atom_target_are_read(tmp_path):
    load_harness()
    import ase.io
    from property_campaign.scoring import columns_of, read_predictions
    from property_campaign.targets import PROPERTIES

    path = tmp_path / "predictions.xyz"
    path.write_text(PREDICTIONS)
    with pytest.raises(ValueError):  # why the harness has its own reader
        ase.io.read(path, ":")
    assert columns_of("species:S:1:pos:R:3:mtt::charges:R:1") == [
        ("species", "S", 1),
        ("pos", "R", 3),
        ("mtt::charges", "R", 1),
    ]
    charges = read_predictions(path, PROPERTIES["charges"], FRAMES)
    assert [c.tolist() for c in charges] == [[-0.4, 0.3], [0.05]]
    dipoles = read_predictions(path, PROPERTIES["dipole"], FRAMES)
    assert [d.tolist() for d in dipoles] == [[0.1, -0.2, 0.3], [0.0, 0.0, 1.0]]
    # frames in another order than the eval set: refused
    with pytest.raises(ValueError, match="not in the order"):
        read_predictions(path, PROPERTIES["dipole"], FRAMES[::-1])


def test_errors_cross_check_and_mean_baselines(tmp_path):
    load_harness()
    from property_campaign.scoring import (
        CrossCheckError,
        cross_check,
        element_means,
        errors,
        predict_element_means,
    )
    from property_campaign.targets import PROPERTIES

    dipole, charges = PROPERTIES["dipole"], PROPERTIES["charges"]
    predicted = [np.array([0.1, -0.2, 0.3]), np.array([0.0, 0.0, 1.0])]
    result = errors(predicted, dipole.labels(FRAMES), dipole)
    # components: |0|,|0.2|,|0| and |0|,|0|,|2| over 6 components
    assert result["mae"] == pytest.approx(2.2 / 6)
    # norms: |0.374 - 0.316| and |1 - 1|
    norm = np.linalg.norm([0.1, -0.2, 0.3]) - np.linalg.norm([0.1, 0.0, 0.3])
    assert result["norm_mae"] == pytest.approx(norm / 2)

    predicted_q = [np.array([-0.4, 0.3]), np.array([0.05])]
    result = errors(predicted_q, charges.labels(FRAMES), charges)
    assert result["mae"] == pytest.approx((0.1 + 0.0 + 0.05) / 3)  # over atoms
    assert result["charge_sum"] == pytest.approx((0.1 + 0.05) / 2)

    # mtt eval's "(per atom)" MAE divides a dipole's error by the number of atoms
    per_atom = (0.2 / 2 + 2.0 / 1) / 6
    log = tmp_path / "eval.log"
    log.write_text(f"mtt::dipole MAE (per atom): {per_atom:.5f} e*A | x\n")
    cross_check(predicted, FRAMES, dipole, log)
    log.write_text(f"mtt::dipole MAE (per atom): {per_atom * 1.1:.5f} e*A\n")
    with pytest.raises(CrossCheckError, match="differs from the one mtt eval"):
        cross_check(predicted, FRAMES, dipole, log)
    log.write_text(f"mtt::dipole MAE (per atom): {per_atom:.5f} D\n")
    with pytest.raises(CrossCheckError, match="printed in 'D'"):
        cross_check(predicted, FRAMES, dipole, log)
    log.write_text("mtt::gap MAE (per atom): 1.0 meV\n")
    with pytest.raises(CrossCheckError, match="no 'mtt::dipole MAE"):
        cross_check(predicted, FRAMES, dipole, log)

    means = element_means(FRAMES, charges.labels(FRAMES))
    assert means == {1: pytest.approx(0.15), 8: pytest.approx(-0.3)}
    assert [p.tolist() for p in predict_element_means(FRAMES, means)] == [
        [-0.3, pytest.approx(0.15)],
        [pytest.approx(0.15)],
    ]


class FakeCalculator:
    """Stands for metatomic's calculator: ``rule(atoms)`` is the dipole."""

    rule = None

    def __init__(self, *args, **kwargs):
        pass


def test_rotation_error_is_zero_for_a_rotating_dipole_only(monkeypatch):
    load_harness()
    import ase
    import metatomic_ase
    from property_campaign import rotation
    from property_campaign.targets import PROPERTIES

    frames = [
        ase.Atoms("OH2", positions=[[0, 0, 0.1], [0.96, 0, 0], [-0.24, 0.93, 0]]),
        ase.Atoms("CO", positions=[[1.0, 2.0, 3.0], [2.1, 2.0, 3.0]]),
    ]
    charge = {1: 0.3, 6: 0.6, 8: -0.6}  # both molecules neutral

    def point_charges(atoms):  # sum_i q_i r_i: rotates with the molecule
        q = np.array([charge[z] for z in atoms.numbers])
        return q @ atoms.positions

    def first_atom(atoms):  # an absolute position: does not
        return atoms.positions[0].copy()

    def fake_predict(calculator, frames, prop):
        return [np.asarray(FakeCalculator.rule(atoms), dtype=float) for atoms in frames]

    monkeypatch.setattr(metatomic_ase, "MetatomicCalculator", FakeCalculator)
    monkeypatch.setattr(rotation, "predict", fake_predict)
    dipole = PROPERTIES["dipole"]
    FakeCalculator.rule = point_charges
    written = [point_charges(atoms) for atoms in frames]
    assert rotation.rotation_error("m.pt", frames, dipole, 3, 0, written) < 1e-12

    FakeCalculator.rule = first_atom
    written = [first_atom(atoms) for atoms in frames]
    assert rotation.rotation_error("m.pt", frames, dipole, 3, 0, written) > 0.1
    # what mtt eval wrote must be what the model predicts
    with pytest.raises(RuntimeError, match="not the same model"):
        rotation.rotation_error("m.pt", frames, dipole, 3, 0, [w + 1 for w in written])


# ---------------------------------------------------------------------- the spec


def write_spec(folder: Path, checkpoint, data: Path, record: Path, **changes) -> Path:
    spec = {
        "description": "smoke test",
        "data": str(data),
        "checkpoint": str(checkpoint),
        "splits": {"from": str(record), "data": str(data)},
        "batch_size": 8,
        "epochs": {"finetune": 1, "scratch": 1},
        "lr_search": {"n": 10, "seed": 0, "grid": [1e-3], "max_extensions": 0},
        "rotation": {"count": 2, "seed": 0},
        "properties": ["dipole", "charges"],
        "runs": [{"rows": ["mean", "native-full"], "n": [10], "seeds": [0]}],
    }
    spec.update(changes)
    path = folder / "campaign.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def tiny_data(folder: Path) -> tuple:
    """40 frames of the benchmark's property data, and energy-harness splits made
    on them (12 test, 4 validation frames, a training order for seed 0)."""
    import ase.io

    harness = load_harness()
    from transfer_campaign.settings import Block, LrSearch, Settings
    from transfer_campaign.splits import make_splits, sha256

    data = folder / "props_small.xyz"
    ase.io.write(data, ase.io.read(PROPS_DATA, ":40"), format="extxyz")
    mols = [atoms.info["mol"] for atoms in ase.io.read(data, ":")]
    settings = Settings(
        data=data,
        checkpoint=data,
        out=folder,
        runs=folder,
        blocks=[Block(["mean"], ["10"], [0])],
        lr_search=LrSearch("10", 0, [1e-3], 0),
        epochs=1,
        scratch_epochs=1,
        half_epochs_from=None,
        scratch_lr=None,
        batch_size=8,
        test_fraction=0.3,
        val_fraction=0.1,
        split_seed=0,
        threads=1,
        mtt=Path("mtt"),
    )
    splits = make_splits(mols, settings)
    record = folder / "splits.json"
    record.write_text(json.dumps({"data_sha256": sha256(data), **splits}))
    return harness, data, record


def test_committed_spec_and_refusals(tmp_path):
    harness, data, record = tiny_data(tmp_path)
    from transfer_campaign.spec import SpecError

    committed = harness.read_property_spec(
        BENCH / "campaigns" / "properties.yaml", tmp_path / "out"
    )
    assert committed.base.data == PROPS_DATA
    assert committed.splits_from == BENCH / "results" / "accuracy" / "splits.json"
    assert committed.properties == ["dipole", "gap", "charges"]
    assert committed.base.lr_search.grid == [1e-4, 3e-4, 1e-3]
    settings = committed.settings_for("dipole")
    assert settings.table["native-full"].target == "mtt::dipole"
    assert settings.selection == ("val_mae",)
    assert settings.runs == committed.base.runs / "dipole"

    spec = write_spec(tmp_path, data, data, record, properties=["dipoles"])
    with pytest.raises(SpecError, match=r"properties: unknown \['dipoles'\]"):
        harness.read_property_spec(spec, tmp_path / "out")
    runs = [{"rows": ["plugin-defaults"], "n": [10], "seeds": [0]}]
    spec = write_spec(tmp_path, data, data, record, runs=runs)
    with pytest.raises(SpecError, match=r"unknown \['plugin-defaults'\]"):
        harness.read_property_spec(spec, tmp_path / "out")
    runs = [{"rows": ["mean"], "n": [10], "seeds": [7]}]
    spec = write_spec(tmp_path, data, data, record, runs=runs)
    with pytest.raises(SpecError, match=r"seeds \[7\] have no training order"):
        harness.read_property_spec(spec, tmp_path / "out")


def test_tiny_property_campaign_end_to_end(tmp_path, pretrained_checkpoint):
    harness, data, record = tiny_data(tmp_path)
    spec = write_spec(tmp_path, pretrained_checkpoint, data, record)
    out, runs = tmp_path / "out", tmp_path / "runs"
    common = ["--campaign", spec, "--out", out, "--runs", runs]

    # --rows: only the mean rows now (nothing trains: in this process); native-full
    # is planned, not run
    assert harness.main([*map(str, common), "--rows", "mean"]) == 0
    with open(out / "results.csv", newline="") as stream:
        assert sorted(r["row"] for r in csv.DictReader(stream)) == ["mean", "mean"]

    result = run_harness(*common, script=HARNESS)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    with open(out / "results.csv", newline="") as stream:
        records = {(r["property"], r["row"]): r for r in csv.DictReader(stream)}
    assert sorted(records) == [
        ("charges", "mean"),
        ("charges", "native-full"),
        ("dipole", "mean"),
        ("dipole", "native-full"),
    ]
    for record_ in records.values():
        assert record_["status"] == "ok", record_["error"]
        assert record_["run_dir"].startswith(str(runs))
        for column in ["val_mae", "test_mae", "cpu_s"]:
            assert math.isfinite(float(record_[column])), column
    trained = records[("dipole", "native-full")]
    assert 1 < float(trained["cpu_s"]) < 1.5 * float(trained["wall_s"])
    assert float(trained["test_rotation_error"]) > 0  # 1 epoch: not equivariant
    assert float(trained["test_norm_mae"]) > 0
    # the charges went through mtt eval's unreadable header, and were scored
    folder = Path(records[("charges", "native-full")]["run_dir"])
    assert "mtt::charges:R:1" in (folder / "predictions.xyz").read_text()
    assert float(records[("charges", "native-full")]["test_charge_sum"]) >= 0
    assert float(records[("charges", "mean")]["test_element_mean_mae"]) > 0
    assert records[("charges", "native-full")]["test_rotation_error"] == ""

    table = (out / "results.md").read_text()
    assert f"--campaign {spec} --out {out}" in table
    assert "## dipole (`mtt::dipole`, e·Å)" in table
    assert "## charges (`mtt::charges`, e)" in table
    assert "| native-full | 10 | 1 | 0.001 | 1 |" in table
    assert " % |" in table  # the error under rotation, as a share of the MAE
    for name in ["dipole", "charges"]:
        assert (out / f"{name}.png").stat().st_size > 0
    # --report rewrites the tables from the CSV alone (nothing runs)
    (out / "results.md").unlink()
    assert harness.main([*map(str, common), "--report"]) == 0
    assert "| native-full | 10 | 1 | 0.001 | 1 |" in (out / "results.md").read_text()
    splits = json.loads((out / "splits.json").read_text())
    assert splits["test"] == json.loads(record.read_text())["test"]

    # splits made on other data are refused before anything runs
    other = tmp_path / "other.xyz"
    other.write_text(data.read_text().replace("Properties", "Properties", 1) + "\n")
    spec = write_spec(
        tmp_path,
        pretrained_checkpoint,
        data,
        record,
        splits={"from": str(record), "data": str(other)},
    )
    with pytest.raises(SystemExit, match="SHA-256 differs"):
        harness.main(["--campaign", str(spec), "--out", str(tmp_path / "o2"), "--plan"])
    assert not (tmp_path / "o2").exists()


def test_ratio_table_compares_with_the_plugin_default():
    load_harness()
    from property_campaign.tables import ratio_table

    def line(row, n, mae, seed="0"):
        return {
            "row": row,
            "N": str(n),
            "seed": seed,
            "epochs": "80",
            "lr": "x",
            "status": "ok",
            "selected": "yes",
            "test_mae": str(mae),
        }

    results = [
        line("scratch", 25, 0.09),
        line("native-full", 25, 0.12),
        line("native-heads", 25, 0.16),
        line("mean", 25, 0.19),
    ]
    assert ratio_table(results) == []  # no plugin-default yet: no ratios
    results += [line("plugin-default", 25, 0.03, seed) for seed in "0"] + [
        line("plugin-default", 25, 0.05, "1"),
        line("plugin-default", 25, 0.06, "2"),
    ]
    table = ratio_table(results)
    # median of the default 0.05; best native: full (0.12)
    assert table[-1] == "| 25 | 1.80x | 2.40x | 3.80x |"
    assert "| N | scratch / plugin-default | best native / plugin-default |" in table[3]
