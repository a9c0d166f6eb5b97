"""Wall time per epoch with one and two CPU processes, and the cost of one
gradient all-reduce.

The same fine-tuning (the shared xTB-pretrained PET, 731K parameters, ``full``,
PBE0 frames of ``bench/data/pbe0.xyz``) runs as

- ``mtt train`` in one process, global batch ``2 * batch``;
- ``torchrun --nproc_per_node=1``: one process through the distributed path
  (gloo, DistributedSampler), global batch ``2 * batch``;
- ``torchrun --nproc_per_node=2``: two processes, ``batch`` each (the same global
  batch: ``batch_size`` is per process, as in metatrain).

Each process gets ``OMP_NUM_THREADS=1``. The time per epoch is read from rank
0's log lines as they arrive (as ``overhead.py`` does; epoch 0, the warm-up, is
left out). The all-reduce: two gloo processes sum a float32 tensor with as many
elements as the model has trainable parameters (what DDP reduces per step, in
buckets), ``--reduce-repeats`` times; the median is reported.

    python bench/distributed_scaling.py --out /tmp/scaling
"""

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

# bench/ is on sys.path when this script runs
from epoch_clock import timed_training


ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = ROOT.parent / "shared" / "checkpoints" / "pet_xtb.ckpt"
DATA = ROOT / "bench" / "data" / "pbe0.xyz"


#: validation frames (after the training ones in the file the runs read)
N_VALIDATION = 16


def write_frames(path: Path, n_train: int) -> None:
    """The first ``n_train + N_VALIDATION`` frames of the PBE0 file."""
    import ase.io

    frames = ase.io.read(DATA, f":{n_train + N_VALIDATION}")
    ase.io.write(path, frames)


def options(checkpoint: Path, batch_size: int, epochs: int, n_train: int) -> dict:
    return {
        "seed": 0,
        "architecture": {
            "name": "pet_transfer",
            "training": {
                "batch_size": batch_size,
                "num_epochs": epochs,
                "learning_rate": 1e-4,
                "log_interval": 1,  # one line per epoch: the clock
                "checkpoint_interval": 1000,
                "num_workers": 0,
                "finetune": {"method": "full", "read_from": str(checkpoint)},
            },
        },
        "training_set": {
            "systems": {"read_from": "frames.xyz", "length_unit": "angstrom"},
            "targets": {
                "mtt::energy_pbe0": {
                    "quantity": "energy",
                    "key": "energy_pbe0",
                    "unit": "eV",
                    "forces": {"key": "forces_pbe0"},
                    "stress": False,
                }
            },
        },
        "validation_set": N_VALIDATION / (n_train + N_VALIDATION),
        "test_set": 0.0,
    }


def run(workdir: Path, launcher: list, config: dict, n_train: int) -> dict:
    """One training; wall time, time per epoch (epoch 0 excluded)."""
    workdir.mkdir(parents=True, exist_ok=False)
    (workdir / "options.yaml").write_text(yaml.safe_dump(config))
    write_frames(workdir / "frames.xyz", n_train)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    timing = timed_training([*launcher, "train", "options.yaml"], workdir, env)
    return {"wall_s": timing.wall, "epoch_s": timing.epoch}


def reduce_worker(n_elements: int, repeats: int) -> None:
    """Run by each of the two torchrun workers of :func:`all_reduce_time`."""
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    tensor = torch.ones(n_elements)
    times = []
    for _ in range(repeats):
        dist.barrier()
        begin = time.perf_counter()
        dist.all_reduce(tensor)
        times.append(time.perf_counter() - begin)
    if dist.get_rank() == 0:
        print(f"ALLREDUCE {statistics.median(times)}", flush=True)
    dist.destroy_process_group()


def all_reduce_time(n_elements: int, repeats: int) -> float:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        __file__,
        "--reduce-worker",
        str(n_elements),
        "--reduce-repeats",
        str(repeats),
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    line = next(x for x in out.stdout.splitlines() if x.startswith("ALLREDUCE"))
    return float(line.split()[1])


def trainable_parameters(checkpoint: Path) -> int:
    import metatomic.torch  # noqa: F401  (classes stored in the checkpoint)
    import torch

    state = torch.load(checkpoint, weights_only=False, map_location="cpu")
    return sum(
        value.numel()
        for name, value in state["model_state_dict"].items()
        if torch.is_tensor(value)
        and value.is_floating_point()
        and "additive" not in name
        and "scaler" not in name
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--checkpoint", type=Path, default=CHECKPOINT)
    parser.add_argument("--batch", type=int, default=8, help="per process, K=2")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--n-train", type=int, default=160)
    parser.add_argument("--reduce-repeats", type=int, default=50)
    parser.add_argument(
        "--repeats", type=int, default=1, help="passes over the rows, order alternated"
    )
    parser.add_argument("--reduce-worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.reduce_worker is not None:
        return reduce_worker(args.reduce_worker, args.reduce_repeats)

    mtt = str(Path(sys.executable).parent / "mtt")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    rows = [
        ("mtt train, 1 process", [mtt], 2 * args.batch),
        ("torchrun, 1 process", [*torchrun, "--nproc_per_node=1", mtt], 2 * args.batch),
        ("torchrun, 2 processes", [*torchrun, "--nproc_per_node=2", mtt], args.batch),
    ]
    results = {name: [] for name, _, _ in rows}
    for repeat in range(args.repeats):
        for name, launcher, batch in rows if repeat % 2 == 0 else rows[::-1]:
            config = options(args.checkpoint, batch, args.epochs, args.n_train)
            slug = name.replace(",", "").replace(" ", "-")
            timing = run(args.out / f"{slug}-{repeat}", launcher, config, args.n_train)
            results[name].append(timing)
            print(name, batch, timing, flush=True)

    n_params = trainable_parameters(args.checkpoint)
    reduce_s = all_reduce_time(n_params, args.reduce_repeats)
    print()
    print(
        f"{args.n_train} training frames, {args.epochs} epochs, global batch "
        f"{2 * args.batch}, {n_params} parameters"
    )
    steps = args.n_train // (2 * args.batch)
    print("| launch | batch_size | s/epoch (each run) | s/step | wall s (each run) |")
    print("|---|---|---|---|---|")
    for name, _, batch in rows:
        epochs = [t["epoch_s"] for t in results[name]]
        walls = [t["wall_s"] for t in results[name]]
        print(
            f"| {name} | {batch} | {', '.join(f'{e:.1f}' for e in epochs)} | "
            f"{statistics.median(epochs) / steps:.2f} | "
            f"{', '.join(f'{w:.0f}' for w in walls)} |"
        )
    print(
        f"\nall-reduce of {n_params} float32 (gloo, 2 processes): "
        f"{1000 * reduce_s:.2f} ms (median of {args.reduce_repeats})"
    )


if __name__ == "__main__":
    main()
