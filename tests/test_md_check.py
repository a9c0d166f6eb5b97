"""``mtt-transfer md``: the MD stability check of an exported model."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import ase.io
import numpy as np
import pytest

from conftest import ase_predictions, run_mtt


def test_only_lasting_changes_of_the_topology_count():
    from metatrain_pet_transfer.cli.md.topology import topology_changes

    numbers = np.array([1, 1, 8])  # H-H, both near the O
    start = np.array([[0.0, 0.0, 0.0], [0.74, 0.0, 0.0], [0.4, 1.0, 0.0]])

    def trajectory(stretched_frames, total=60, frame_fs=5.0):
        frames = []
        for k in range(total):
            x = start.copy()
            if 10 <= k < 10 + stretched_frames:
                x[1, 0] = 2.5  # H1 away from H0 (still near O: not alone)
            frames.append(x)
        return np.array(frames), frame_fs

    symbols = ["H", "H", "O"]
    # 100 fs stretched, then back: a hot vibration, not a broken bond
    brief = topology_changes(symbols, numbers, *trajectory(20))
    assert brief.intact, brief
    # 200 fs: lost
    lasting = topology_changes(symbols, numbers, *trajectory(40))
    assert "H0-H1" in lasting.lost and not lasting.intact
    # an atom far from all others for the rest of the run has left
    frames = np.array([start] * 10 + [start + [[0, 0, 0], [0, 0, 0], [0, 0, 9.0]]] * 40)
    gone = topology_changes(symbols, numbers, frames, 5.0)
    assert gone.left == ["O2"], gone


def test_the_batched_model_gives_what_ase_gives(workdir):
    """One call for all structures: the same energies and forces as
    ``MetatomicCalculator`` structure by structure."""
    from metatrain_pet_transfer.cli.md.dynamics import BatchedModel, batch_of

    run_mtt(["export", "pretrained.ckpt", "-o", "pretrained.pt"], cwd=workdir)
    frames = ase.io.read(workdir / "pbe0_small.xyz", ":4")
    batch = batch_of(frames, [300.0] * 4, seed=0)
    BatchedModel(str(workdir / "pretrained.pt"), "energy")(batch)
    energies, forces = ase_predictions(workdir / "pretrained.pt", frames)
    np.testing.assert_allclose(batch.energies.numpy(), energies, rtol=1e-6, atol=1e-4)
    np.testing.assert_allclose(batch.forces.numpy(), forces, atol=1e-4)


def mtt_transfer(*args, cwd):
    """The installed ``mtt-transfer`` console script, as a user runs it."""
    script = Path(sys.executable).parent / "mtt-transfer"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return subprocess.run(
        [str(script), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture
def exported(workdir):
    run_mtt(["export", "pretrained.ckpt", "-o", "pretrained.pt"], cwd=workdir)
    return workdir


def test_md_check_reports_every_molecule_at_every_temperature(exported):
    result = mtt_transfer(
        "md",
        "pretrained.pt",
        "pbe0_small.xyz",
        "--temperatures",
        "300",
        "600",
        "--time-fs",
        "20",
        "--nve-fs",
        "10",
        "--min-change-fs",
        "10",
        "--out",
        "md",
        cwd=exported,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    molecules = {a.info["mol"] for a in ase.io.read(exported / "pbe0_small.xyz", ":")}
    assert "intact" in result.stdout and "wrote md/summary.md" in result.stdout
    with open(exported / "md" / "results.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert len(rows) == 2 * len(molecules)
    assert {r["structure"] for r in rows} == molecules
    assert {float(r["temperature_K"]) for r in rows} == {300.0, 600.0}
    for row in rows:
        assert float(row["max_force_eV_A"]) > 0
        assert float(row["reached_K"]) > 0
        # velocity Verlet at 0.5 fs over 10 fs conserves energy on a smooth model
        assert abs(float(row["nve_max_deviation_meV_atom"])) < 20, row
    summary = (exported / "md" / "summary.md").read_text()
    assert "| 300 | " in summary and "| 600 | " in summary

    # the results are never overwritten
    again = mtt_transfer(
        "md", "pretrained.pt", "pbe0_small.xyz", "--out", "md", cwd=exported
    )
    assert again.returncode == 1
    assert "'md/summary.md' exists: give another --out" in again.stderr
    assert (exported / "md" / "summary.md").read_text() == summary


@pytest.mark.parametrize(
    "args, message",
    [
        (["missing.pt", "pbe0_small.xyz"], "MODEL 'missing.pt' does not exist"),
        (["pretrained.pt", "missing.xyz"], "STRUCTURES 'missing.xyz' does not exist"),
        (
            ["pretrained.pt", "pbe0_small.xyz", "--variant", "pbe0"],
            "--variant pbe0: the model has no output 'energy/pbe0' (its energy "
            "outputs: energy)",
        ),
        (["pretrained.pt", "bulk_small.xyz"], "is periodic; this check runs molecules"),
    ],
    ids=["model", "structures", "variant", "periodic"],
)
def test_bad_md_check_input_says_what_is_wrong(exported, args, message):
    result = mtt_transfer("md", *args, "--out", "md", cwd=exported)
    assert result.returncode == 1
    assert message in result.stderr, result.stderr[-2000:]
    assert not (exported / "md").exists()
