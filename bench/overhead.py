"""Cost of the plugin over native metatrain: training time per epoch, peak memory,
and inference time, measured side by side in one run.

Training: the same fine-tuning config (same checkpoint, data, hypers, seed) is run
with ``name: pet`` and ``name: pet_transfer``, alternating, as ``mtt train``
subprocesses. The time per epoch is read from the log as it is written: metatrain
logs one line per epoch, and this process notes when each line arrives
(``perf_counter``, sub-millisecond), so an epoch's time is the gap between two epoch
lines. Epoch 0 (warm-up) is left out; start-up work (imports, data loading, the
plugin's checks) and the final export are only in the total wall time. Peak RSS
comes from the kernel's rusage of each child. Inference: the two exported models
compute energies and forces of the same structures through
``metatomic_ase.MetatomicCalculator``, alternating.

Every figure is a ratio plugin/native: the median over pairs, its min-max, and a
distribution-free confidence interval of the median (order statistics of the pair
ratios, no assumption on the noise). A target ("within 3 %") is called met only when
the whole interval is below 1 + target, missed when it is entirely above, and not
resolved otherwise: then run more pairs, on a quiet machine (the load average is
printed before and after).

    python bench/overhead.py --pairs 20
"""

import argparse
import math
import os
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import yaml


# run as a script or loaded from its path (tests/test_bench_smoke.py): its
# neighbour epoch_clock.py must be importable either way
BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from epoch_clock import Timing, timed_training  # noqa: E402


ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def options(architecture: str, checkpoint: str, data: str, epochs: int) -> dict:
    """One fine-tuning config; only the architecture name differs between rows."""
    training = {
        "batch_size": 8,
        "num_epochs": epochs,
        "learning_rate": 1e-4,
        "log_interval": 1,  # one line per epoch: the clock
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


def run_training(workdir: Path, config: dict, threads: int) -> Timing:
    """Run ``mtt train`` once, timing the epoch lines as they arrive."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "options.yaml").write_text(yaml.safe_dump(config))
    mtt = Path(sys.executable).parent / "mtt"
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore")
    return timed_training([str(mtt), "train", "options.yaml"], workdir, env)


def median_interval(values, confidence: float = 0.95) -> tuple:
    """Order-statistic confidence interval of the median of ``values``.

    The interval between the k-th smallest and the k-th largest value holds the
    median with probability ``1 - 2 P(Binomial(n, 1/2) < k)``, whatever the noise;
    the largest k reaching ``confidence`` is used (with few values, k = 1, min-max,
    and the coverage it actually has).

    :return: (low, high, coverage)
    """
    ordered, n = sorted(values), len(values)

    def coverage(k: int) -> float:
        return 1 - 2 * sum(math.comb(n, i) for i in range(k)) / 2**n

    k = 1
    while k + 1 <= (n + 1) // 2 and coverage(k + 1) >= confidence:
        k += 1
    return ordered[k - 1], ordered[n - k], coverage(k)


def verdict(low: float, high: float, target: float, enough: bool = True) -> str:
    """Whether the interval says the ratio is within ``1 + target``; ``enough``:
    whether it reaches the confidence asked for (too few pairs resolve nothing)."""
    if not enough:
        return f"within {target:.0%}: not resolved by this interval, too few pairs"
    if high <= 1 + target:
        return f"within {target:.0%}: met"
    if low > 1 + target:
        return f"within {target:.0%}: missed"
    return f"within {target:.0%}: not resolved by this interval, run more pairs"


def export(workdir: Path) -> Path:
    mtt = Path(sys.executable).parent / "mtt"
    subprocess.run(
        [str(mtt), "export", "model.ckpt", "-o", "exported.pt"],
        cwd=workdir,
        check=True,
        capture_output=True,
    )
    return workdir / "exported.pt"


def inference_time(model: Path, frames, variant: str, repeats: int) -> float:
    """Seconds for ``repeats`` passes of energy + forces over ``frames`` in ASE."""
    from metatomic_ase import MetatomicCalculator

    calculator = MetatomicCalculator(str(model), variants={"energy": variant})
    with warnings.catch_warnings():
        # metatomic-ase symmetrises a NaN stress for molecules: harmless here
        warnings.simplefilter("ignore", RuntimeWarning)
        for atoms in frames[:3]:  # warm-up (TorchScript compilation)
            atoms.calc = calculator
            atoms.get_forces()
        begin = time.perf_counter()
        for _ in range(repeats):
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
    parser.add_argument(
        "--pairs",
        type=int,
        default=20,
        help="alternating pairs; 20 give a 95 %% interval between the 6th smallest "
        "and 6th largest ratio",
    )
    parser.add_argument("--epochs", type=int, default=11, help="epochs per run")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--inference-repeats", type=int, default=3, help="passes over the frames"
    )
    parser.add_argument("--workdir", default="/tmp/bench_overhead")
    parser.add_argument(
        "--confidence", type=float, default=0.95, help="of the median's interval"
    )
    args = parser.parse_args()

    import ase.io

    print(f"load average at start (1, 5, 15 min): {os.getloadavg()}", flush=True)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    frames = ase.io.read(args.data, f":{args.frames}")
    data = workdir / "data.xyz"
    ase.io.write(data, frames)
    checkpoint = str(Path(args.checkpoint).resolve())

    rows = {
        name: {"epoch": [], "total": [], "rss": []} for name in ["pet", "pet_transfer"]
    }
    for pair in range(args.pairs):
        # alternate which one goes first, so that a drifting load favours neither
        order = ["pet", "pet_transfer"] if pair % 2 == 0 else ["pet_transfer", "pet"]
        for name in order:
            run = workdir / f"{name}-{pair}"
            config = options(name, checkpoint, str(data), args.epochs)
            timing = run_training(run, config, args.threads)
            rows[name]["epoch"].append(timing.epoch)
            rows[name]["total"].append(timing.wall)
            rows[name]["rss"].append(timing.rss)
        native, plugin = rows["pet"], rows["pet_transfer"]
        print(
            f"pair {pair}: s/epoch native {native['epoch'][-1]:.3f} plugin "
            f"{plugin['epoch'][-1]:.3f}; wall native {native['total'][-1]:.1f} "
            f"plugin {plugin['total'][-1]:.1f}",
            flush=True,
        )

    def ratios(key):
        return [
            p / n
            for p, n in zip(rows["pet_transfer"][key], rows["pet"][key], strict=True)
        ]

    exported = {name: export(workdir / f"{name}-0") for name in ["pet", "pet_transfer"]}
    inference = {"pet": [], "pet_transfer": []}
    for pair in range(args.pairs):
        for name in ["pet", "pet_transfer"][:: 1 if pair % 2 == 0 else -1]:
            inference[name].append(
                inference_time(exported[name], frames, "pbe0", args.inference_repeats)
            )
    inference_ratios = [
        p / n for p, n in zip(inference["pet_transfer"], inference["pet"], strict=True)
    ]

    print(
        f"\nplugin / native, median (min-max) [confidence interval of the median] "
        f"of {args.pairs} alternating pairs:"
    )
    targets = {"epoch": 0.03, "rss": 0.05}
    for label, values, key in [
        ("training time per epoch", ratios("epoch"), "epoch"),
        (f"total wall time ({args.epochs} epochs)", ratios("total"), "total"),
        ("peak RSS", ratios("rss"), "rss"),
        ("inference (ASE energy+forces)", inference_ratios, "inference"),
    ]:
        low, high, coverage = median_interval(values, args.confidence)
        line = (
            f"  {label:32s} {statistics.median(values):.3f} "
            f"({min(values):.3f}-{max(values):.3f}) "
            f"[{low:.3f}-{high:.3f} at {coverage:.1%}]"
        )
        if key in targets:
            enough = coverage >= args.confidence
            line += f"  {verdict(low, high, targets[key], enough)}"
        print(line)
    native = statistics.median(rows["pet"]["epoch"])
    rss = statistics.median(rows["pet"]["rss"])
    print(
        f"\n(native: {native:.2f} s/epoch on {len(frames)} frames, "
        f"{args.threads} thread(s); peak RSS {rss:.0f} MiB)"
    )
    print(f"load average at end (1, 5, 15 min): {os.getloadavg()}")


if __name__ == "__main__":
    main()
