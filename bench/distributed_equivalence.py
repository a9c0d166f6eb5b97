"""How far two torchrun ranks end from one process seeing the same global batches.

The configuration of ``tests/test_distributed.py``: the tiny PET of the tests
(pre-trained on the periodic cells, ``tests/conftest.py``), transferred to GFN2
labels (energies and forces) on 18 cells of 8 atoms, ``full``, learning rate
1e-3. Four runs: ``torchrun --nproc_per_node=2`` with ``batch_size: 4`` and
``--nproc_per_node=1`` with ``batch_size: 8`` (the same global batches in the same
order), each with PET's random rotations on (what users run) and off (through a
``sitecustomize.py`` on ``PYTHONPATH``, as the test does). Printed: the largest
weight difference between the 2-rank and 1-rank runs, and how far the 1-rank run
moved from its start (largest element; and Euclidean norms).

    python bench/distributed_equivalence.py --out /tmp/equivalence --epochs 3
"""

import argparse
import os
import subprocess
import sys
from pathlib import Path

import yaml


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from test_distributed import NO_ROTATIONS, weights  # noqa: E402

from conftest import periodic_transfer, train_tiny_pet  # noqa: E402


def run(folder: Path, nproc: int, batch: int, epochs: int, pretrained, rotations):
    folder.mkdir(parents=True)
    options = periodic_transfer(folder, pretrained, "stress")
    options["training_set"]["targets"]["energy/gfn2"]["stress"] = False
    training = options["architecture"]["training"]
    training.update(batch_size=batch, num_epochs=epochs, checkpoint_interval=100)
    options.update(validation_set=0.25, test_set=0.0)
    (folder / "options.yaml").write_text(yaml.safe_dump(options))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    if not rotations:
        (folder / "instrument").mkdir()
        (folder / "instrument" / "sitecustomize.py").write_text(NO_ROTATIONS)
        env["PYTHONPATH"] = str(folder / "instrument")
    mtt = str(Path(sys.executable).parent / "mtt")
    subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone",
         f"--nproc_per_node={nproc}", mtt, "train", "options.yaml"],
        cwd=folder, env=env, check=True, capture_output=True,
    )  # fmt: skip
    return weights(folder / "model.ckpt")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    pretrained = args.out / "pretrained_bulk.ckpt"
    if not pretrained.exists():
        train_tiny_pet(
            pretrained, data="bulk_small.xyz", energy="energy_a",
            forces="forces_a", stress="stress_a",
        )  # fmt: skip
    start = weights(pretrained, "best_model_state_dict")
    print("| rotations | largest difference, 2 ranks vs 1 | largest move, 1 rank "
          "| norm difference | norm move |")  # fmt: skip
    print("|---|---|---|---|---|")
    for rotations in (False, True):
        tag = "on" if rotations else "off"
        two = run(args.out / f"two-{tag}", 2, 4, args.epochs, pretrained, rotations)
        one = run(args.out / f"one-{tag}", 1, 8, args.epochs, pretrained, rotations)
        shared = [k for k in start if k in one]
        largest = max(float((two[k] - one[k]).abs().max()) for k in two)
        moved = max(float((one[k] - start[k]).abs().max()) for k in shared)
        norm_diff = sum(float((two[k] - one[k]).norm() ** 2) for k in shared) ** 0.5
        norm_move = sum(float((one[k] - start[k]).norm() ** 2) for k in shared) ** 0.5
        print(f"| {tag} | {largest:.2g} | {moved:.2g} | {norm_diff:.2g} | "
              f"{norm_move:.2g} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
