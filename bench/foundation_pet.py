"""A foundation-sized PET, and what the plugin costs on it.

The PETs users fine-tune are the upet family's (PET-MAD, PET-OMat, ...: sizes XS to
XL, 4.5 to 730 million parameters). ``make`` builds one of the size of the smallest,
**XS** (the upet documentation's "Model sizes" table, from Bigi et al. 2026, Table
IV): node features 512 (``d_node``), edge features 128 (``d_pet``), 2 GNN layers, 1
attention layer, cutoff 7.5 A with 16 adaptive neighbours, PET's defaults elsewhere
(``d_head`` 128, ``d_feedforward`` 256, 8 heads): 4.18 million parameters for H, C,
N, O (4.5 million in upet, whose embeddings cover 102 elements). It is trained a few
epochs only on ``bench/data/pretrain_xtb.xyz`` (GFN2-xTB): accuracy is not the point.

``compare`` fine-tunes it to PBE0 (``bench/data/pbe0.xyz``) with native ``name:
pet`` and with ``name: pet_transfer`` (its defaults), same data, hypers and seed,
in alternating order: seconds per epoch (``epoch_clock.py``), peak GPU memory
(``torch.cuda.max_memory_allocated`` of the training process) and wall time; the
goal is a ratio of at most 1.02 per epoch.

``startup`` measures the plugin's own passes before PET's loop (the run-input
checks, the alignment pass and the teacher labels of ``keep_pretrained_heads``: from
metatrain's "Calling trainer" line to PET's "Training on device" line) against the
time of its first epoch, on 1,000 and 10,000 structures (the xTB frames, rattled and
repeated to reach 10,000; their labels serve as the new level's: timing only); the
goal is passes <= 1 epoch.

``all`` (what ``bench/gpu_check.sh`` runs) does make, one pair, the start-up sizes,
then more pairs, each only while ``--budget`` seconds allow it, and writes
``foundation.md`` and ``foundation.json`` after each step.

    python bench/foundation_pet.py all --device cpu --out /tmp/foundation \\
        --make-frames 200 --make-epochs 1 --compare-frames 60 --epochs 4 --sizes 300
"""

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional


BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from epoch_clock import Timing, timed_training  # noqa: E402


PRETRAIN_DATA = BENCH / "data" / "pretrain_xtb.xyz"
PBE0_DATA = BENCH / "data" / "pbe0.xyz"

#: upet's XS size (PET's defaults for the rest)
XS_HYPERS = {
    "cutoff": 7.5,
    "num_neighbors_adaptive": 16,
    "d_pet": 128,
    "d_node": 512,
    "num_gnn_layers": 2,
    "num_attention_layers": 1,
}
#: the lines between which the plugin's passes run (metatrain's, then PET's)
CALLING_TRAINER, PET_STARTS = "Calling trainer", "Training on device"
#: PET's first epoch runs between these (the first "Epoch:" line ends epoch 0)
STARTING, EPOCH = "Starting training", "Epoch:"
PEAK_MEMORY = "peak GPU memory (MiB):"


# ------------------------------------------------------------------------- options


def _dataset(path: str, energy: str, forces: str, target: str) -> dict:
    return {
        "systems": {"read_from": path, "length_unit": "angstrom"},
        "targets": {
            target: {
                "quantity": "energy",
                "key": energy,
                "unit": "eV",
                "forces": {"key": forces},
                "stress": False,
            }
        },
    }


def pretraining_options(data: str, epochs: int, device: str, batch: int) -> dict:
    return {
        "seed": 0,
        "device": device,
        "architecture": {
            "name": "pet",
            "model": XS_HYPERS,
            "training": {
                "batch_size": batch,
                "num_epochs": epochs,
                "learning_rate": 5e-4,
                "log_interval": 1,
                "checkpoint_interval": 1000,
                "num_workers": 0,
            },
        },
        "training_set": _dataset(data, "energy_xtb", "forces_xtb", "energy"),
        "validation_set": 0.05,
        "test_set": 0.0,
        "final_eval": False,
    }


def finetuning_options(
    architecture: str,
    checkpoint: str,
    data: str,
    epochs: int,
    device: str,
    batch: int,
    labels=("energy_pbe0", "forces_pbe0"),
    **training,
) -> dict:
    """One fine-tuning config; only the architecture name (and ``training``)
    differ between the rows."""
    return {
        "seed": 0,
        "device": device,
        "architecture": {
            "name": architecture,
            "training": {
                "batch_size": batch,
                "num_epochs": epochs,
                "learning_rate": 1e-4,
                "log_interval": 1,  # one line per epoch: the clock
                "checkpoint_interval": 1000,
                "num_workers": 0,
                "finetune": {"method": "full", "read_from": checkpoint},
                **training,
            },
        },
        "training_set": _dataset(data, *labels, "energy/pbe0"),
        "validation_set": 0.1,
        "test_set": 0.0,
        "final_eval": False,
    }


# ------------------------------------------------------------------------- running


def train(folder: Path, options: dict, threads: int, min_epochs: int = 1) -> Timing:
    """``mtt train`` in ``folder``, through this script's ``mtt`` entry (which
    reports the peak GPU memory at exit)."""
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "options.yaml").write_text(yaml.safe_dump(options))
    env = dict(
        os.environ,
        OMP_NUM_THREADS=str(threads),
        PYTHONWARNINGS="ignore",
        PYTHONUNBUFFERED="1",
    )
    command = [sys.executable, __file__, "mtt", "train", "options.yaml"]
    marks = [CALLING_TRAINER, PET_STARTS, STARTING, EPOCH]
    timing = timed_training(command, folder, env, marks, min_epochs=min_epochs)
    (folder / "output.log").write_text("".join(timing.lines))
    return timing


def peak_memory(timing: Timing) -> float:
    for line in reversed(timing.lines):
        if line.startswith(PEAK_MEMORY):
            return float(line.split(":")[1])
    return float("nan")


def mtt_with_peak_memory() -> None:
    """``mtt`` (argv after ``mtt``), then the peak GPU memory of this process."""
    import atexit

    import torch

    def report():
        if torch.cuda.is_available():
            print(f"{PEAK_MEMORY} {torch.cuda.max_memory_allocated() / 2**20:.1f}")
        else:
            print(f"{PEAK_MEMORY} nan")

    atexit.register(report)
    from metatrain.__main__ import main

    sys.argv = ["mtt", *sys.argv[2:]]
    sys.exit(main())


def parameter_count(checkpoint: Path) -> int:
    import metatomic.torch  # noqa: F401 (classes stored in the checkpoint)
    import torch

    state = torch.load(checkpoint, weights_only=False, map_location="cpu")
    return sum(
        value.numel()
        for name, value in state["best_model_state_dict"].items()
        if torch.is_tensor(value) and value.is_floating_point()
    )


def write_frames(path: Path, count: int, rattle: float = 0.0, seed: int = 0) -> Path:
    """``count`` frames of the xTB data: spread evenly over the file (every
    molecule, every element) when it has enough, else all of them repeated, the
    repeats rattled (Gaussian, ``rattle`` A); labels kept (timing only)."""
    import ase.io
    import numpy as np

    frames = ase.io.read(PRETRAIN_DATA, ":")
    rng = np.random.default_rng(seed)
    if count <= len(frames):
        indices = [index * len(frames) // count for index in range(count)]
    else:
        indices = [index % len(frames) for index in range(count)]
    chosen = []
    for position, index in enumerate(indices):
        atoms = frames[index].copy()
        if position >= len(frames) and rattle > 0:
            atoms.positions += rng.normal(0, rattle, atoms.positions.shape)
        chosen.append(atoms)
    ase.io.write(path, chosen)
    return path


# ------------------------------------------------------------------------ the steps


class Results:
    """What was measured so far, written after every step."""

    def __init__(self, out: Path, device: str, args: dict):
        self.out, self.device = out, device
        self.data: Dict = {"device": device, "arguments": args, "pairs": []}

    def save(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "foundation.json").write_text(json.dumps(self.data, indent=1))
        (self.out / "foundation.md").write_text(self.markdown())

    def markdown(self) -> str:
        data = self.data
        lines = [f"# Foundation-sized PET on `{self.device}`", ""]
        if "make" in data:
            make = data["make"]
            lines.append(
                f"Checkpoint: upet XS hypers, {make['parameters'] / 1e6:.2f} M "
                f"parameters, {make['epochs']} epoch(s) on {make['frames']} xTB "
                f"frames in {make['wall']:.0f} s."
            )
        pairs = data["pairs"]
        if pairs:
            lines += [
                "",
                f"Fine-tuning to PBE0 ({data['compare']['frames']} frames, "
                f"{data['compare']['epochs']} epochs), plugin / native, "
                f"{len(pairs)} alternating pair(s):",
                "",
                "| | native `pet` | `pet_transfer` | ratio (median, min-max) |",
                "|---|---|---|---|",
            ]
            for key, label, unit in [
                ("epoch", "time per epoch", "s"),
                ("gpu", "peak GPU memory", "MiB"),
                ("rss", "peak host memory (RSS)", "MiB"),
                ("wall", "wall time, whole run", "s"),
                ("passes", "before PET's loop (checks, alignment)", "s"),
            ]:
                native = [p["pet"][key] for p in pairs]
                plugin = [p["pet_transfer"][key] for p in pairs]
                ratios = [b / a for a, b in zip(native, plugin, strict=True) if a > 0]
                ratio = (
                    f"{statistics.median(ratios):.3f} "
                    f"({min(ratios):.3f}-{max(ratios):.3f})"
                    if ratios
                    and key != "passes"  # native: PET's set-up only, ~0 s
                    and not any(math.isnan(r) for r in ratios)
                    else "-"
                )
                lines.append(
                    f"| {label} ({unit}) | {statistics.median(native):.3g} | "
                    f"{statistics.median(plugin):.3g} | {ratio} |"
                )
            passes = [
                p["pet_transfer"]["passes"] / p["pet_transfer"]["epoch"] for p in pairs
            ]
            lines += [
                "",
                "The plugin's passes before PET's loop: "
                f"{statistics.median(passes):.2f} of its epochs (median).",
            ]
        if data.get("startup"):
            lines += [
                "",
                "The plugin's passes before PET's loop (checks, alignment, teacher "
                "labels of `keep_pretrained_heads`) against its first epoch:",
                "",
                "| structures | passes (s) | epoch 0 (s) | passes / epoch | wall (s) |",
                "|---|---|---|---|---|",
            ]
            for row in data["startup"]:
                lines.append(
                    f"| {row['structures']} | {row['passes']:.1f} | "
                    f"{row['epoch0']:.1f} | {row['passes'] / row['epoch0']:.2f} | "
                    f"{row['wall']:.0f} |"
                )
        if data.get("skipped"):
            lines += ["", "Not run (budget): " + "; ".join(data["skipped"])]
        return "\n".join(lines) + "\n"


def make(args, results: Results) -> Path:
    folder = Path(args.workdir) / "make"
    data = write_frames(Path(args.workdir) / "pretrain.xyz", args.make_frames)
    options = pretraining_options(str(data), args.make_epochs, args.device, args.batch)
    timing = train(folder, options, args.threads)
    checkpoint = folder / "model.ckpt"
    results.data["make"] = {
        "frames": args.make_frames,
        "epochs": args.make_epochs,
        "wall": timing.wall,
        "parameters": parameter_count(checkpoint),
        "checkpoint": str(checkpoint),
    }
    results.save()
    return checkpoint


def _row(timing: Timing) -> dict:
    marks = timing.marks
    passes = marks.get(PET_STARTS, math.nan) - marks.get(CALLING_TRAINER, math.nan)
    return {
        "epoch": timing.epoch,
        "wall": timing.wall,
        "rss": timing.rss,
        "gpu": peak_memory(timing),
        "passes": passes,
    }


def compare_pair(args, checkpoint: Path, results: Results) -> None:
    pair = len(results.data["pairs"])
    data = Path(args.workdir) / "pbe0.xyz"
    if not data.exists():
        import ase.io

        ase.io.write(data, ase.io.read(PBE0_DATA, f":{args.compare_frames}"))
    results.data["compare"] = {"frames": args.compare_frames, "epochs": args.epochs}
    row = {}
    order = ["pet", "pet_transfer"] if pair % 2 == 0 else ["pet_transfer", "pet"]
    for name in order:
        options = finetuning_options(
            name, str(checkpoint), str(data), args.epochs, args.device, args.batch
        )
        folder = Path(args.workdir) / f"{name}-{pair}"
        row[name] = _row(train(folder, options, args.threads, min_epochs=3))
    results.data["pairs"].append(row)
    results.save()


def startup(args, checkpoint: Path, structures: int, results: Results) -> None:
    folder = Path(args.workdir) / f"startup-{structures}"
    folder.mkdir(parents=True, exist_ok=True)
    data = write_frames(folder / "frames.xyz", structures, rattle=0.02)
    options = finetuning_options(
        "pet_transfer",
        str(checkpoint),
        str(data),
        1,
        args.device,
        args.batch,
        labels=("energy_xtb", "forces_xtb"),
        keep_pretrained_heads=True,
    )
    timing = train(folder / "run", options, args.threads)
    row = _row(timing)
    epoch0 = timing.marks.get(EPOCH, math.nan) - timing.marks.get(STARTING, math.nan)
    row.update(structures=structures, epoch0=epoch0)
    results.data.setdefault("startup", []).append(row)
    results.save()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("step", choices=["make", "compare", "startup", "all"])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", default="/tmp/foundation_out")
    parser.add_argument("--workdir", default="/tmp/foundation_runs")
    parser.add_argument("--checkpoint", help="skip make: this XS checkpoint")
    parser.add_argument("--make-frames", type=int, default=2990)
    parser.add_argument("--make-epochs", type=int, default=2)
    parser.add_argument("--compare-frames", type=int, default=356)
    parser.add_argument("--epochs", type=int, default=6, help="fine-tuning epochs")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="*", default=[1000, 10000])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--budget", type=float, default=math.inf, help="seconds; nothing new after"
    )
    args = parser.parse_args()
    if args.threads is None:
        args.threads = 4 if args.device == "cuda" else 1
    deadline = time.monotonic() + args.budget
    results = Results(Path(args.out), args.device, vars(args))
    skipped = results.data.setdefault("skipped", [])

    def fits(seconds: float, what: str) -> bool:
        if time.monotonic() + seconds < deadline:
            return True
        left = deadline - time.monotonic()
        skipped.append(f"{what} (needs ~{seconds:.0f} s, {left:.0f} s left)")
        results.save()
        return False

    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    checkpoint: Optional[Path] = Path(args.checkpoint) if args.checkpoint else None
    if checkpoint is None:
        if not fits(60, "make"):
            return 0
        begin = time.monotonic()
        checkpoint = make(args, results)
        run_cost = time.monotonic() - begin
    else:
        run_cost = 60.0
    if args.step == "make":
        return 0
    pair_cost = 2 * run_cost
    steps: List = []
    if args.step in ("compare", "all"):
        steps.append(("pair", None))
    if args.step in ("startup", "all"):
        steps += [("startup", size) for size in args.sizes]
    if args.step in ("compare", "all"):
        steps += [("pair", None)] * (args.pairs - 1)
    startup_cost: Optional[float] = None
    for kind, size in steps:
        if kind == "pair":
            if not fits(pair_cost, "a pair"):
                continue
            begin = time.monotonic()
            compare_pair(args, checkpoint, results)
            pair_cost = time.monotonic() - begin
        else:
            estimate = pair_cost / 2 if startup_cost is None else startup_cost[1] * size
            if not fits(estimate, f"start-up on {size} structures"):
                continue
            begin = time.monotonic()
            startup(args, checkpoint, size, results)
            # seconds per structure above a fixed cost of half a fine-tuning run
            per_structure = max(time.monotonic() - begin - pair_cost / 4, 1) / size
            startup_cost = (size, per_structure)
    results.save()
    print(results.markdown())
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "mtt":
        mtt_with_peak_memory()
    sys.exit(main())
