"""``mtt-transfer select``: choosing which structures to label, without labels."""

import os
import subprocess
import sys
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch

from metatrain_pet_transfer.cli import main
from metatrain_pet_transfer.cli.select.features import AtomDescriptors
from metatrain_pet_transfer.cli.select.methods import select


DATA = Path(__file__).parent / "data"
POOL = DATA / "pbe0_small.xyz"  # 40 frames with PBE0 and xTB labels, and tags


def mtt_transfer(*args, cwd=None):
    """Run the installed ``mtt-transfer`` console script, as a user would."""
    script = Path(sys.executable).parent / "mtt-transfer"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return subprocess.run(
        [str(script), *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=600,
    )


def positions(path):
    return [atoms.positions.copy() for atoms in ase.io.read(path, ":")]


def same_structures(a, b) -> bool:
    return len(a) == len(b) and all(
        x.shape == y.shape and np.allclose(x, y) for x, y in zip(a, b, strict=True)
    )


@pytest.fixture(scope="module")
def selection(tmp_path_factory, pretrained_checkpoint):
    """One selection from the shipped PBE0 frames, through the console script."""
    folder = tmp_path_factory.mktemp("select")
    result = mtt_transfer(
        "select", pretrained_checkpoint, POOL, "-n", 6, "-o", folder / "chosen.xyz"
    )
    assert result.returncode == 0, result.stderr
    return folder, result


def test_select_writes_chosen_structures_with_every_entry(selection):
    folder, result = selection
    assert "pool: 40 structures" in result.stdout
    # by default on the GPU when there is one
    assert f"on {'cuda' if torch.cuda.is_available() else 'cpu'})" in result.stdout
    # the labels are named as ignored in the printout
    assert "energy_pbe0" in result.stdout and "forces_pbe0" in result.stdout
    assert "structures/s" in result.stdout
    pool = ase.io.read(POOL, ":")
    chosen = ase.io.read(folder / "chosen.xyz", ":")
    assert len(chosen) == 6
    found = []
    for atoms in chosen:
        matches = [
            i
            for i, candidate in enumerate(pool)
            if len(candidate) == len(atoms)
            and np.allclose(candidate.positions, atoms.positions)
        ]
        assert len(matches) == 1
        original = pool[matches[0]]
        found.append(matches[0])
        assert atoms.info == original.info
        assert set(atoms.arrays) == set(original.arrays)
        for key in original.arrays:
            np.testing.assert_allclose(atoms.arrays[key], original.arrays[key])
    assert len(set(found)) == 6


def test_same_seed_same_selection(selection, pretrained_checkpoint):
    folder, _ = selection
    again = folder / "again.xyz"
    args = ["select", str(pretrained_checkpoint), str(POOL), "-n", "6"]
    assert main([*args, "-o", str(again)]) == 0
    assert same_structures(positions(again), positions(folder / "chosen.xyz"))


def test_existing_output_is_never_overwritten(selection, pretrained_checkpoint):
    folder, _ = selection
    output = folder / "chosen.xyz"
    before = output.read_bytes()
    result = mtt_transfer("select", pretrained_checkpoint, POOL, "-n", 3, "-o", output)
    assert result.returncode == 2
    assert f"output file '{output}' already exists" in result.stderr
    assert output.read_bytes() == before


def test_labels_do_not_change_the_selection(selection, pretrained_checkpoint, tmp_path):
    folder, _ = selection
    rng = np.random.default_rng(1)
    relabelled, unlabelled = [], []
    for atoms in ase.io.read(POOL, ":"):
        changed = atoms.copy()
        changed.info = {"energy_pbe0": float(rng.normal()), "mol": "?"}
        changed.arrays["forces_pbe0"] = rng.normal(size=(len(atoms), 3)) * 50
        del changed.arrays["forces_xtb"]
        relabelled.append(changed)
        bare = atoms.copy()
        bare.info = {}
        for key in [k for k in bare.arrays if k not in ("numbers", "positions")]:
            del bare.arrays[key]
        unlabelled.append(bare)
    for name, frames in [("relabelled", relabelled), ("unlabelled", unlabelled)]:
        pool = tmp_path / f"{name}.xyz"
        ase.io.write(pool, frames)
        output = tmp_path / f"chosen_{name}.xyz"
        args = ["select", str(pretrained_checkpoint), str(pool), "-n", "6"]
        assert main([*args, "-o", str(output)]) == 0
        assert same_structures(positions(output), positions(folder / "chosen.xyz"))
    # the relabelled output carries the relabelled entries, not the originals'
    assert "mol" in ase.io.read(tmp_path / "chosen_relabelled.xyz", "0").info


def test_exclude_is_never_chosen_and_counts_as_covered(
    selection, pretrained_checkpoint, tmp_path, capsys
):
    folder, _ = selection
    first = ase.io.read(folder / "chosen.xyz", ":2")
    exclude = tmp_path / "labelled.xyz"
    ase.io.write(exclude, first)
    output = tmp_path / "chosen.xyz"
    args = ["select", str(pretrained_checkpoint), str(POOL), "-n", "4"]
    assert main([*args, "-o", str(output), "--exclude", str(exclude)]) == 0
    assert "excluded: 2 structures" in capsys.readouterr().out
    chosen = positions(output)
    assert len(chosen) == 4
    for atoms in first:
        assert not any(
            p.shape == atoms.positions.shape and np.allclose(p, atoms.positions)
            for p in chosen
        )
    # the excluded structures were covered first, so the greedy picks that follow
    # are those of the full selection (picks 3 to 6), not a restart from scratch
    assert same_structures(chosen, positions(folder / "chosen.xyz")[2:])


@pytest.mark.parametrize("method", ["fps", "uncertainty"])
def test_every_method_runs_from_the_cli(method, pretrained_checkpoint, tmp_path):
    output = tmp_path / "chosen.xyz"
    args = ["select", str(pretrained_checkpoint), str(POOL), "-n", "5"]
    assert main([*args, "-o", str(output), "--method", method, "--seed", "3"]) == 0
    chosen = positions(output)
    assert len(chosen) == 5
    assert len({p.tobytes() for p in chosen}) == 5


def test_bad_inputs_are_named_before_anything_is_written(
    pretrained_checkpoint, tmp_path, capsys
):
    output = tmp_path / "chosen.xyz"
    args = ["select", str(pretrained_checkpoint)]
    # more structures asked for than the pool has
    assert main([*args, str(POOL), "-n", "41", "-o", str(output)]) == 2
    assert f"the pool '{POOL}' has only 40 structures" in capsys.readouterr().err
    # an element the pretrained model never saw (sulfur)
    sulfur = tmp_path / "with_sulfur.xyz"
    frames = ase.io.read(POOL, ":3")
    frames[1].numbers[0] = 16
    ase.io.write(sulfur, frames)
    assert main([*args, str(sulfur), "-n", "2", "-o", str(output)]) == 2
    err = capsys.readouterr().err
    assert f"'{sulfur}' has S (atomic numbers [16])" in err
    assert "it knows H, C, N, O" in err
    # a missing --exclude file
    missing = tmp_path / "missing.xyz"
    assert (
        main(
            [*args, str(POOL), "-n", "2", "-o", str(output), "--exclude", str(missing)]
        )
        == 2
    )
    assert f"--exclude file '{missing}' does not exist" in capsys.readouterr().err
    # a device torch does not know, and CUDA where there is none
    assert (
        main([*args, str(POOL), "-n", "2", "-o", str(output), "--device", "gpu"]) == 2
    )
    assert "--device gpu: " in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert (
            main([*args, str(POOL), "-n", "2", "-o", str(output), "--device", "cuda"])
            == 2
        )
        assert "--device cuda: torch sees no CUDA device" in capsys.readouterr().err
    assert not output.exists()


# ------------------------------------------------------- the rules, on known points


def clusters_and_outlier(seed=0):
    """Two dense clusters of 20 structures and one far outlier (index 40), as
    one-atom structures whose descriptors are the points."""
    rng = np.random.default_rng(seed)
    points = np.concatenate(
        [
            rng.normal(0.0, 0.1, (20, 4)),
            rng.normal(0.0, 0.1, (20, 4)) + [3.0, 0, 0, 0],
            [[0.0, 0.0, 12.0, 0.0]],
        ]
    )
    return AtomDescriptors(
        backbone=points,
        last_layer=points + [0.0, 0.0, 0.0, 1.0],  # a constant, as an energy head has
        owner=np.arange(len(points)),
        types=np.ones(len(points), dtype=int),
    )


def test_fps_and_uncertainty_take_the_outlier_early_mix_takes_it_last():
    descriptors = clusters_and_outlier()
    pool, nothing = np.arange(41), np.array([], dtype=int)
    for method in ("fps", "uncertainty"):
        assert 40 in select(descriptors, pool, nothing, 3, method, seed=0)
    mixed = select(descriptors, pool, nothing, 6, "mix", seed=0)
    assert 40 not in mixed
    # and it spreads over both clusters first
    assert {i // 20 for i in mixed[:2]} == {0, 1}


def test_rules_are_deterministic_for_a_seed():
    descriptors = clusters_and_outlier()
    pool, nothing = np.arange(41), np.array([], dtype=int)
    for method in ("mix", "fps", "uncertainty"):
        first = select(descriptors, pool, nothing, 10, method, seed=7)
        assert first == select(descriptors, pool, nothing, 10, method, seed=7)
    # fps starts from a seeded random structure when nothing is covered
    starts = {select(descriptors, pool, nothing, 1, "fps", seed=s)[0] for s in range(6)}
    assert len(starts) > 1
