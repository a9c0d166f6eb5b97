"""What keeping the pretrained heads costs per epoch, measured side by side.

``keep_pretrained_heads`` adds work to every training step of a ``full`` transfer
(the kept head's energy; with ``kept_heads_on_forces`` or replayed forces a second
force computation; with ``training.replay`` more structures per epoch) and to every
validation pass (the kept head's forces: its drift). With ``lora`` it adds nothing
to training (the old level is the backbone without adapters, not trained). The
benchmark campaign's CPU seconds per run mix that with start-up, the teacher pass
and the other jobs of the machine; this script isolates the time per epoch. The same
fine-tuning config as ``overhead.py`` (the plugin's defaults, lr 1e-4, batch 8) is
run in each variant, rotating which goes first in each round, as ``mtt train``
subprocesses timed by their epoch lines (``epoch_clock.py``):

- ``default``: ``full``, no kept head; ``keep``: kept head on the pretrained
  energies; ``keep-forces``: on energies and forces; ``replay-<r>``: on replayed xTB
  frames at ratio r (``bench/data/pretrain_xtb.xyz``);
- ``lora``: ``lora`` (rank 4, alpha 8), no kept head; ``lora-keep``: kept exactly.

Printed: each variant's time per epoch as a ratio to its baseline in the same
round, median over rounds with the order-statistic interval of the median
(``overhead.py``), against the targets of the keep-the-old-level issue.

    python bench/keep_cost.py --rounds 3 | tee bench/results/keep_cost/keep_level.txt
"""

import argparse
import os
import statistics
import sys
from pathlib import Path

# bench/ is on sys.path when this script runs
from overhead import median_interval, options, run_training, verdict


ROOT = Path(__file__).resolve().parents[1]
#: the old-level frames of the replay variants (all of them: timing only)
REPLAY = ROOT / "bench" / "data" / "pretrain_xtb.xyz"
LORA = {"method": "lora", "config": {"rank": 4, "alpha": 8.0}}


def replay(ratio: float) -> dict:
    return {
        "keep_pretrained_heads": True,
        "replay": {
            "systems": {"read_from": str(REPLAY), "length_unit": "angstrom"},
            "targets": {
                "energy": {
                    "key": "energy_xtb",
                    "unit": "eV",
                    "forces": {"key": "forces_xtb"},
                }
            },
            "ratio": ratio,
        },
    }


#: variant -> (training options, the variant it is compared with, target ratio - 1)
VARIANTS = {
    "default": ({}, None, None),
    "keep": ({"keep_pretrained_heads": True}, "default", 0.10),
    "keep-forces": (
        {"keep_pretrained_heads": True, "kept_heads_on_forces": True},
        "default",
        0.30,
    ),
    "replay-0.25": (replay(0.25), "default", 0.30),
    "replay-0.5": (replay(0.5), "default", 0.30),
    "replay-1": (replay(1.0), "default", 0.30),
    "lora": ({"finetune": LORA}, None, None),
    "lora-keep": ({"finetune": LORA, "keep_pretrained_heads": True}, "lora", 0.02),
}


def config(variant: str, checkpoint: str, data: str, epochs: int) -> dict:
    """``overhead.py``'s plugin config with the plugin's alignment (kept heads need
    it, or fixed output scales) and the variant's options."""
    section = options("pet_transfer", checkpoint, data, epochs)
    training = section["architecture"]["training"]
    del training["alignment"]  # the default: on
    extra = dict(VARIANTS[variant][0])
    if "finetune" in extra:
        training["finetune"] = {**training["finetune"], **extra.pop("finetune")}
    training.update(extra)
    return section


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--checkpoint",
        default=str(ROOT.parent / "shared" / "checkpoints" / "pet_xtb.ckpt"),
    )
    parser.add_argument("--data", default=str(ROOT / "bench" / "data" / "pbe0.xyz"))
    parser.add_argument("--frames", type=int, default=100, help="training frames")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of one run each")
    parser.add_argument("--epochs", type=int, default=11, help="epochs per run")
    parser.add_argument("--workdir", default="/tmp/bench_keep_cost")
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=list(VARIANTS),
        default=list(VARIANTS),
        help="variants to time (their baselines are added)",
    )
    args = parser.parse_args(argv)

    import ase.io

    print(f"load average at start (1, 5, 15 min): {os.getloadavg()}", flush=True)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    data = workdir / "data.xyz"
    ase.io.write(data, ase.io.read(args.data, f":{args.frames}"))
    checkpoint = str(Path(args.checkpoint).resolve())

    wanted = set(args.variants) | {
        VARIANTS[name][1] for name in args.variants if VARIANTS[name][1]
    }
    names = [name for name in VARIANTS if name in wanted]
    epochs = {name: [] for name in names}
    for round_ in range(args.rounds):
        # rotate the order, so that a drifting load favours no variant
        shift = round_ % len(names)
        order = names[shift:] + names[:shift]
        for name in order:
            run = workdir / f"{name}-{round_}"
            section = config(name, checkpoint, str(data), args.epochs)
            timing = run_training(run, section, 1)
            epochs[name].append(timing.epoch)
        print(
            f"round {round_}: "
            + ", ".join(f"{n} {epochs[n][-1]:.3f} s/epoch" for n in names),
            flush=True,
        )

    print(f"\ntime per epoch, {args.frames} frames, one thread ({args.rounds} rounds)")
    for name in names:
        _, baseline, target = VARIANTS[name]
        if baseline is None:
            print(f"{name}: {statistics.median(epochs[name]):.3f} s (median)")
            continue
        ratios = [a / b for a, b in zip(epochs[name], epochs[baseline], strict=True)]
        low, high, coverage = median_interval(ratios)
        enough = coverage >= 0.95
        print(
            f"{name} / {baseline}: {statistics.median(ratios):.3f} "
            f"(min-max {min(ratios):.3f}-{max(ratios):.3f}; median in "
            f"[{low:.3f}, {high:.3f}] at {coverage:.1%}) -> "
            f"{verdict(low, high, target, enough)} (target {1 + target:.2f}x)"
        )
    print(f"load average at end (1, 5, 15 min): {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
