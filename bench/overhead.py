"""Cost of the plugin over native metatrain: training time per epoch, peak memory,
and inference time, measured side by side in one run.

Training: the same fine-tuning config (same checkpoint, data, hypers, seed) is run
with ``name: pet`` and ``name: pet_transfer``, alternating, as ``mtt train``
subprocesses. Each configuration runs with a short and a long epoch budget; the time
per epoch is the difference of the wall times divided by the difference of epochs,
so start-up work (imports, data loading, the plugin's one-time alignment pass, the
final evaluation) cancels out. Peak RSS comes from the kernel's rusage of each child.
Inference: the two exported models compute energies and forces of the same
structures through ``metatomic_ase.MetatomicCalculator``, alternating.

Every figure is a ratio plugin/native (median over pairs).

    python bench/overhead.py --pairs 5
"""

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml


ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def options(architecture: str, checkpoint: str, data: str, epochs: int) -> dict:
    """One fine-tuning config; only the architecture name differs between rows."""
    training = {
        "batch_size": 8,
        "num_epochs": epochs,
        "learning_rate": 1e-4,
        "log_interval": 1000,
        "checkpoint_interval": 1000,
        "num_workers": 0,
        "finetune": {"method": "full", "read_from": checkpoint},
    }
    if architecture == "pet_transfer":
        # same start as native: the alignment pass is measured in the total only
        training["alignment"] = False
    return {
        "seed": 0,
        "architecture": {"name": architecture, "training": training},
        "training_set": {
            "systems": {"read_from": data, "length_unit": "angstrom"},
            "targets": {
                "energy/pbe0": {
                    "key": "energy_pbe0",
                    "unit": "eV",
                    "forces": {"key": "forces_pbe0"},
                    "stress": False,
                }
            },
        },
        "validation_set": 0.1,
        "test_set": 0.0,
        "final_eval": False,
    }


def run_training(workdir: Path, config: dict, threads: int) -> tuple[float, float]:
    """Run ``mtt train`` once; return (wall seconds, peak RSS in MiB)."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "options.yaml").write_text(yaml.safe_dump(config))
    mtt = Path(sys.executable).parent / "mtt"
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    begin = time.perf_counter()
    process = subprocess.Popen(
        [str(mtt), "train", "options.yaml"],
        cwd=workdir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - begin
    if status != 0:
        raise RuntimeError(
            f"mtt train failed in {workdir}: {process.stderr.read()[-2000:]}"
        )
    return wall, usage.ru_maxrss / 1024


def export(workdir: Path) -> Path:
    mtt = Path(sys.executable).parent / "mtt"
    subprocess.run(
        [str(mtt), "export", "model.ckpt", "-o", "exported.pt"],
        cwd=workdir,
        check=True,
        capture_output=True,
    )
    return workdir / "exported.pt"


def inference_time(model: Path, frames, variant: str) -> float:
    from metatomic_ase import MetatomicCalculator

    calculator = MetatomicCalculator(str(model), variants={"energy": variant})
    for atoms in frames[:3]:  # warm-up (TorchScript compilation)
        atoms.calc = calculator
        atoms.get_forces()
    begin = time.perf_counter()
    for atoms in frames:
        atoms.calc = calculator
        atoms.get_potential_energy()
        atoms.get_forces()
    return time.perf_counter() - begin


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--checkpoint", default=str(SHARED / "checkpoints/pet_xtb.ckpt")
    )
    parser.add_argument("--data", default=str(SHARED / "data/pbe0.xyz"))
    parser.add_argument("--frames", type=int, default=100, help="training frames")
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--epochs", default="1,6", help="short,long epoch budgets")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workdir", default="/tmp/bench_overhead")
    args = parser.parse_args()

    import ase.io

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    frames = ase.io.read(args.data, f":{args.frames}")
    data = workdir / "data.xyz"
    ase.io.write(data, frames)
    checkpoint = str(Path(args.checkpoint).resolve())
    short, long = (int(e) for e in args.epochs.split(","))

    rows = {
        name: {"epoch": [], "total": [], "rss": []} for name in ["pet", "pet_transfer"]
    }
    for pair in range(args.pairs):
        for name in ["pet", "pet_transfer"]:
            walls = {}
            for epochs in (short, long):
                run = workdir / f"{name}-{pair}-{epochs}"
                config = options(name, checkpoint, str(data), epochs)
                walls[epochs], rss = run_training(run, config, args.threads)
                rows[name]["rss"].append(rss)
            rows[name]["epoch"].append((walls[long] - walls[short]) / (long - short))
            rows[name]["total"].append(walls[long])
        print(
            f"pair {pair}: s/epoch native {rows['pet']['epoch'][-1]:.3f} "
            f"plugin {rows['pet_transfer']['epoch'][-1]:.3f}",
            flush=True,
        )

    def ratio(key):
        values = [
            p / n
            for p, n in zip(rows["pet_transfer"][key], rows["pet"][key], strict=True)
        ]
        return statistics.median(values), min(values), max(values)

    exported = {
        name: export(workdir / f"{name}-0-{long}") for name in ["pet", "pet_transfer"]
    }
    inference = {"pet": [], "pet_transfer": []}
    for _ in range(args.pairs):
        for name in ["pet", "pet_transfer"]:
            inference[name].append(inference_time(exported[name], frames, "pbe0"))
    inference_ratios = [
        p / n for p, n in zip(inference["pet_transfer"], inference["pet"], strict=True)
    ]

    print(f"\nplugin / native, median (min-max) of {args.pairs} alternating pairs:")
    for label, key in [
        ("training time per epoch", "epoch"),
        (f"total wall time ({long} epochs)", "total"),
        ("peak RSS", "rss"),
    ]:
        median, low, high = ratio(key)
        print(f"  {label:32s} {median:.3f} ({low:.3f}-{high:.3f})")
    print(
        f"  {'inference (ASE energy+forces)':32s} "
        f"{statistics.median(inference_ratios):.3f} "
        f"({min(inference_ratios):.3f}-{max(inference_ratios):.3f})"
    )
    native = statistics.median(rows["pet"]["epoch"])
    rss = statistics.median(rows["pet"]["rss"])
    print(
        f"\n(native: {native:.2f} s/epoch on {len(frames)} frames, "
        f"{args.threads} thread(s); peak RSS {rss:.0f} MiB)"
    )


if __name__ == "__main__":
    main()
