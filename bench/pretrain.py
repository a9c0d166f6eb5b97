"""Re-create the benchmarks' starting point: a PET pre-trained on GFN2-xTB frames.

The benchmarks start from ``../shared/checkpoints/pet_xtb.ckpt`` where it exists.
This script makes an equivalent checkpoint from the xTB frames shipped in
``bench/data/`` with the same options (``PRETRAIN_OPTIONS``: native ``name: pet``,
731K parameters, seed 0, 60 epochs; ~40 min on one CPU core), so that the chain
pre-training -> transfer can be reproduced from a clone alone. It is a plain
``mtt train`` in ``--out``; the checkpoint is ``<out>/pet_xtb.ckpt``, and the xTB
test errors metatrain prints at the end are summarised.

    python bench/pretrain.py --out /tmp/pretrain
    python bench/learning_curve.py --checkpoint /tmp/pretrain/pet_xtb.ckpt ...

``--tiny`` (smoke test) trains a small PET for 1 epoch on 40 frames.
"""

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import yaml


BENCH = Path(__file__).resolve().parent
DEFAULT_DATA = BENCH / "data" / "pretrain_xtb.xyz"

#: the options of ``../shared/checkpoints/pet_xtb.options.yaml`` (a test checks it)
PRETRAIN_OPTIONS = {
    "seed": 0,
    "base_precision": 32,
    "architecture": {
        "name": "pet",
        "model": {
            "cutoff": 4.5,
            "d_pet": 64,
            "d_head": 64,
            "d_node": 128,
            "d_feedforward": 128,
            "num_heads": 4,
            "num_attention_layers": 2,
            "num_gnn_layers": 2,
        },
        "training": {
            "batch_size": 16,
            "num_epochs": 60,
            "learning_rate": 0.0005,
            "log_interval": 5,
            "checkpoint_interval": 10,
        },
    },
    "training_set": {
        "systems": {"read_from": "pretrain_xtb.xyz", "length_unit": "angstrom"},
        "targets": {
            "energy": {
                "key": "energy_xtb",
                "unit": "eV",
                "forces": {"key": "forces_xtb"},
                "stress": False,
            }
        },
    },
    "validation_set": 0.05,
    "test_set": 0.05,
}


def tiny_options(options: dict) -> dict:
    """Smoke-test sizes: a small PET, one epoch (only the plumbing is exercised)."""
    architecture = {
        **options["architecture"],
        "model": {
            "cutoff": 4.5,
            "d_pet": 8,
            "d_head": 8,
            "d_node": 8,
            "d_feedforward": 8,
            "num_heads": 1,
            "num_attention_layers": 1,
            "num_gnn_layers": 1,
        },
        "training": {**options["architecture"]["training"], "num_epochs": 1},
    }
    return {**options, "architecture": architecture, "validation_set": 0.1}


def test_errors(log: str) -> dict:
    """The test-set MAEs of metatrain's final evaluation in ``train.log``: energy
    per atom (meV/atom) and forces (meV/Å)."""
    _, _, after = log.rpartition("Evaluating test dataset")
    errors = {}
    energy = re.search(r"energy MAE \(per atom\): ([0-9.eE+-]+) meV", after)
    forces = re.search(r"positions_gradients MAE: ([0-9.eE+-]+) meV/A", after)
    if energy:
        errors["energy"] = float(energy.group(1))
    if forces:
        errors["forces"] = float(forces.group(1))
    return errors


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data",
        type=Path,
        default=DEFAULT_DATA,
        help="GFN2-xTB frames with energy_xtb / forces_xtb",
    )
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        help="a new (or empty) folder for the run",
    )
    parser.add_argument(
        "--frames",
        type=int,
        default=None,
        help="use only the first N frames (default: all)",
    )
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS")
    parser.add_argument("--tiny", action="store_true", help="smoke test")
    args = parser.parse_args(argv)

    if not args.data.is_file():
        parser.error(f"--data {args.data}: no such file")
    out = args.out.resolve()
    if out.exists() and any(out.iterdir()):
        parser.error(f"--out {out} is not empty: choose a new folder")
    out.mkdir(parents=True, exist_ok=True)

    import ase.io

    frames = ase.io.read(args.data, ":")
    if args.tiny:
        frames = frames[:: max(1, len(frames) // 40)][:40]
    elif args.frames:
        frames = frames[: args.frames]
    ase.io.write(out / "pretrain_xtb.xyz", frames, format="extxyz")

    options = tiny_options(PRETRAIN_OPTIONS) if args.tiny else PRETRAIN_OPTIONS
    (out / "options.yaml").write_text(yaml.safe_dump(options, sort_keys=False))

    mtt = Path(sys.executable).parent / "mtt"
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONWARNINGS="ignore")
    print(f"mtt train in {out} ({len(frames)} frames)", flush=True)
    begin = time.perf_counter()
    with open(out / "train.log", "w") as log:
        result = subprocess.run(
            [str(mtt), "train", "options.yaml", "-o", "pet_xtb.pt"],
            cwd=out,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    wall = time.perf_counter() - begin
    if result.returncode != 0:
        print(f"mtt train failed after {wall:.0f} s: see {out / 'train.log'}")
        return result.returncode

    errors = test_errors((out / "train.log").read_text(errors="replace"))
    print(f"done in {wall:.0f} s: {out / 'pet_xtb.ckpt'}")
    for quantity, value in errors.items():
        unit = "meV/atom" if quantity == "energy" else "meV/Å"
        print(f"  xTB test {quantity} MAE: {value:.1f} {unit}")
    print("  (../shared/checkpoints/pet_xtb.ckpt: 8.3 meV/atom, 109 meV/Å)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
