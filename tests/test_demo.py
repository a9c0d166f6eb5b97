"""``mtt-transfer demo``: the whole story on the package's data, as a user runs it."""

import os
import subprocess
import sys
from pathlib import Path

import yaml

from metatrain_pet_transfer.cli import main
from metatrain_pet_transfer.cli.demo import DEMO_DATA


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_demo_data_is_shipped_and_small():
    sizes = {p.name: p.stat().st_size for p in DEMO_DATA.iterdir()}
    for name in ("pretrained_xtb.ckpt", "pbe0_train.xyz", "pbe0_test.xyz", "README.md"):
        assert sizes.get(name, 0) > 0, name
    assert sizes["pretrained_xtb.ckpt"] < 1_000_000
    assert sum(sizes.values()) < 2_000_000


def test_demo_runs_end_to_end(tmp_path):
    out = tmp_path / "demo"
    script = Path(sys.executable).parent / "mtt-transfer"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    result = subprocess.run(
        [str(script), "demo", "--epochs", "1", "--md-steps", "20", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    printed = result.stdout

    # progress of both trainings, then the before/after table
    assert "Zero-shot validation errors" in printed
    assert "epoch    0" in printed
    table = printed[printed.index("Before vs after") :]
    assert "mtt::energy_pbe0  zero-shot" in table
    assert "mtt::energy_pbe0  transferred" in table
    assert "meV/atom" in table and "meV/Å" in table
    assert "total-energy drift" in printed

    # the options a user can re-run, and the exported models
    options = yaml.safe_load((out / "options.yaml").read_text())
    assert options["architecture"]["name"] == "pet_transfer"
    assert options["architecture"]["training"]["num_epochs"] == 1
    assert (out / "model.pt").is_file()
    assert (out / "zero-shot" / "model.pt").is_file()
    assert (out / "md.xyz").is_file()

    report = out / "report"
    for name in ("parity.png", "learning_curve.png"):
        assert (report / name).read_bytes()[:8] == PNG_SIGNATURE
    summary = (report / "summary.md").read_text()
    assert "| mtt::energy_pbe0 | zero-shot |" in summary
    assert "| mtt::energy_pbe0 | transferred |" in summary
    assert "## Molecular dynamics" in summary
    # the MD's start is explained: relaxed geometry, velocities at twice 300 K
    assert "relaxed with the model" in summary
    assert "velocities drawn at 600 K" in summary
    assert "averages about 300 K" in summary
    assert "it does not close it" in summary
    # the energy baseline of the parity plot is fitted on the training frames
    assert "training frames (`pbe0_train.xyz`), not on the plotted" in summary


def test_demo_never_writes_into_a_non_empty_folder(capsys, tmp_path):
    mine = tmp_path / "notes.txt"
    mine.write_text("mine")
    assert main(["demo", "--out", str(tmp_path)]) == 2
    assert "not an empty folder" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    assert mine.read_text() == "mine"
