"""Which frames to label: ``mtt-transfer select`` against random picks, on PBE0.

The question a user asks: with a budget of N new-level labels, does choosing the N
frames with the pretrained model beat choosing them at random? On the project's
split of ``bench/data/pbe0.xyz`` (``bench/results/accuracy/splits.json``: the
fixed test and validation frames; the rest is the pool), for each row ``METHOD:N``:

- ``random:N``: the first N frames of the learning curve's random orders (seeds 0,
  1, 2 by default: random draws going round-robin over the molecules, so they are a
  stratified, hence strong, random baseline);
- ``mix:N``, ``fps:N``, ``uncertainty:N``: ``mtt-transfer select`` run as a user
  runs it, on the pool written *without any label* (geometry and a ``pool_index``
  tag only), with that method and ``-n N``.

Each training set then goes through the plugin's transfer as its default was when
these results were made (``name: pet_transfer``, ``method: full``, no learning
rate, batch 8, 80 epochs, from the pretrained checkpoint; MSE loss and no weight
averaging: row ``plugin-v1`` of ``bench/campaigns/accuracy.yaml``) with ``mtt
train``, and the exported model is scored with ``mtt eval`` on the fixed test
frames: energy MAE per atom, force MAE, and the force MAE on the MD frames and on
the rattled frames of the test split separately.

``--speed`` times ``mtt-transfer select`` on a pool of 10,000 structures made by
rattling (σ 0.02 Å, seeded) copies of ``bench/data/pretrain_xtb.xyz`` frames.

Usage (see bench/README.md)::

    python bench/select_labels.py --rows mix:50,random:100
    python bench/select_labels.py --rows mix:25,mix:100,random:25,random:50,fps:50
    python bench/select_labels.py --speed
"""

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import numpy as np

# bench/ is on sys.path when this script runs
from select_labels_tables import (
    METHODS,
    load,
    markdown,
    save,
    spread,
)
from transfer_campaign.settings import STRATEGIES_OFF


REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "bench" / "data" / "pbe0.xyz"
PRETRAIN_DATA = REPO / "bench" / "data" / "pretrain_xtb.xyz"
SPLITS = REPO / "bench" / "results" / "accuracy" / "splits.json"
CHECKPOINT = REPO.parent / "shared" / "checkpoints" / "pet_xtb.ckpt"
OUT = REPO / "bench" / "results" / "select"

TARGET = "energy/pbe0"
ENERGY_KEY, FORCES_KEY = "energy_pbe0", "forces_pbe0"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def bin_tool(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def children_cpu_seconds() -> float:
    """User + system seconds of the finished child processes so far."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_logged(command: List[str], folder: Path, log: str) -> float:
    """Run ``command`` in ``folder`` with one thread, output to ``folder/log``;
    :return: wall seconds. Raises with the log's last line if it fails."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    start = time.perf_counter()
    with open(folder / log, "w") as stream:
        result = subprocess.run(
            command, cwd=folder, env=env, stdout=stream, stderr=subprocess.STDOUT
        )
    if result.returncode != 0:
        lines = (folder / log).read_text(errors="replace").strip().splitlines()
        raise RuntimeError(f"{command[0]} failed: {(lines or ['?'])[-1][:300]}")
    return time.perf_counter() - start


def write_yaml(path: Path, content: dict) -> None:
    import yaml

    path.write_text(yaml.safe_dump(content, sort_keys=False))


def dataset_section(path: Path) -> dict:
    return {
        "systems": {"read_from": str(path), "length_unit": "angstrom"},
        "targets": {
            TARGET: {
                "quantity": "energy",
                "key": ENERGY_KEY,
                "unit": "eV",
                "forces": {"key": FORCES_KEY},
                "stress": False,
            }
        },
    }


def write_if_changed(path: Path, frames) -> None:
    """Replace ``path`` atomically, and only if its content changes (another
    process of this benchmark may be reading it)."""
    import ase.io

    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    ase.io.write(temporary, frames, format="extxyz")
    if path.exists() and path.read_bytes() == temporary.read_bytes():
        temporary.unlink()
    else:
        os.replace(temporary, path)


class Benchmark:
    """The data, the split and the files every row shares."""

    def __init__(self, args):
        import ase.io

        self.args = args
        self.frames = ase.io.read(DATA, ":")
        split = json.loads(SPLITS.read_text())
        if split["data_sha256"] != sha256(DATA):
            raise SystemExit(f"{DATA} is not the file {SPLITS} was made from")
        self.test, self.val = split["test"], split["val"]
        self.orders = split["train_order"]
        self.pool = sorted(self.orders["0"])  # every frame neither test nor val
        pretrain = ase.io.read(PRETRAIN_DATA, ":")
        # the rattle σ of each frame, from the pre-training frame it was copied from
        self.sigma = np.array(
            [
                float(pretrain[a.info["pretrain_index"]].info.get("rattle_sigma", 0))
                for a in self.frames
            ]
        )
        self.runs = args.runs
        self.runs.mkdir(parents=True, exist_ok=True)
        self.files = {
            name: self.write(f"{name}.xyz", indices)
            for name, indices in [("test", self.test), ("val", self.val)]
        }
        self.pool_file = self.runs / "pool_unlabelled.xyz"
        self.write_unlabelled_pool()

    def write(self, name: str, indices) -> Path:

        path = self.runs / name
        write_if_changed(path, [self.frames[i] for i in indices])
        return path

    def write_unlabelled_pool(self) -> None:
        """The pool as the selector sees it: geometry and ``pool_index`` only."""
        from ase import Atoms

        unlabelled = []
        for index in self.pool:
            atoms = self.frames[index]
            copy = Atoms(numbers=atoms.numbers, positions=atoms.positions)
            copy.info["pool_index"] = index
            unlabelled.append(copy)
        write_if_changed(self.pool_file, unlabelled)

    def selected(self, method: str, n: int, seed: int) -> tuple:
        """``mtt-transfer select`` on the unlabelled pool: frame indices, seconds."""
        import ase.io

        folder = self.runs / "select" / f"{method}_N{n}_s{seed}"
        folder.mkdir(parents=True, exist_ok=True)
        output = folder / "selected.xyz"
        output.unlink(missing_ok=True)
        command = [bin_tool("mtt-transfer"), "select", str(self.args.checkpoint)]
        command += [str(self.pool_file), "-n", str(n), "-o", str(output)]
        command += ["--method", method, "--seed", str(seed)]
        seconds = run_logged(command, folder, "select.log")
        picked = [int(a.info["pool_index"]) for a in ase.io.read(output, ":")]
        return picked, seconds

    def train_and_score(self, indices, name: str, train_seed: int) -> Dict:
        """The plugin's default transfer on ``indices``, scored on the test frames."""
        import ase.io

        folder = self.runs / "train" / f"{name}_t{train_seed}"
        folder.mkdir(parents=True, exist_ok=True)
        train_file = self.write(f"train_{name}.xyz", indices)
        training = {
            "batch_size": 8,
            "num_epochs": self.args.epochs,
            "num_workers": 0,
            "finetune": {"read_from": str(self.args.checkpoint)},
            **STRATEGIES_OFF,  # the default these results were made with (plugin-v1)
        }
        write_yaml(
            folder / "options.yaml",
            {
                "seed": train_seed,
                "architecture": {"name": "pet_transfer", "training": training},
                "training_set": dataset_section(train_file),
                "validation_set": dataset_section(self.files["val"]),
                "test_set": 0.0,
            },
        )
        mtt = bin_tool("mtt")
        train_s = run_logged(
            [mtt, "train", "options.yaml", "-o", "model.pt"], folder, "train.log"
        )
        write_yaml(folder / "eval.yaml", dataset_section(self.files["test"]))
        run_logged(
            [mtt, "eval", "model.pt", "eval.yaml", "-o", "predictions.xyz"]
            + ["-b", "8", "--no-warm-up"],
            folder,
            "eval.log",
        )
        predicted = ase.io.read(folder / "predictions.xyz", ":")
        return {**self.errors(predicted), "train_s": train_s}

    def errors(self, predicted) -> Dict[str, float]:
        """Test MAEs: energy per atom (meV/atom), forces over components (meV/Å),
        and forces on the MD and the rattled test frames apart."""
        reference = [self.frames[i] for i in self.test]
        if len(predicted) != len(reference):
            raise RuntimeError("mtt eval wrote a different number of frames")
        energy, force, md, rattled = [], [], [], []
        for atoms, ref, index in zip(predicted, reference, self.test, strict=True):
            if not np.allclose(atoms.positions, ref.positions, atol=1e-5):
                raise RuntimeError("predictions are not in the order of the test set")
            value = atoms.info.get(TARGET, None)
            if value is None:
                value = atoms.calc.results[TARGET]
            energy.append(abs(float(value) - ref.info[ENERGY_KEY]) / len(ref))
            gradient = np.asarray(atoms.info[f"{TARGET}_positions_gradients"])
            error = np.abs(-gradient.reshape(-1, 3) - ref.arrays[FORCES_KEY]).ravel()
            force.append(error)
            (rattled if self.sigma[index] > 0 else md).append(error)
        return {
            "test_energy_mae_meV_atom": 1000 * float(np.mean(energy)),
            "test_force_mae_meV_A": 1000 * float(np.concatenate(force).mean()),
            "test_force_mae_md_meV_A": 1000 * float(np.concatenate(md).mean()),
            "test_force_mae_rattled_meV_A": 1000
            * float(np.concatenate(rattled).mean()),
        }

    def describe(self, indices) -> Dict:
        return {
            "sigma01_frames": int(np.sum(self.sigma[indices] >= 0.1)),
            "rattled_frames": int(np.sum(self.sigma[indices] > 0)),
            "molecules": len({self.frames[i].info["mol"] for i in indices}),
        }


def run_rows(args) -> int:
    bench = Benchmark(args)
    args.out.mkdir(parents=True, exist_ok=True)
    csv_path = args.out / "results.csv"
    for spec in args.rows.split(","):
        method, n = spec.split(":")
        n = int(n)
        seeds = args.seeds if method == "random" else args.select_seeds
        for seed in seeds:
            for train_seed in [seed] if method == "random" else args.train_seeds:
                key = (method, str(n), str(seed), str(train_seed))
                results = load(csv_path)
                done = [r for r in results if r["status"] == "ok"]
                if any(
                    (r["method"], r["N"], r["seed"], r["train_seed"]) == key
                    for r in done
                ):
                    continue
                record = dict(
                    zip(("method", "N", "seed", "train_seed"), key, strict=True)
                )
                try:
                    select_s = 0.0
                    if method == "random":
                        indices = bench.orders[str(seed)][:n]
                    else:
                        indices, select_s = bench.selected(method, n, seed)
                    record.update(bench.describe(indices), select_s=select_s)
                    name = f"{method}_N{n}_s{seed}"
                    record.update(bench.train_and_score(indices, name, train_seed))
                    record.update(status="ok", error="")
                except Exception as error:  # noqa: BLE001 (record, go on)
                    record.update(status="failed", error=str(error)[:300])
                results = [
                    r
                    for r in load(csv_path)
                    if (r["method"], r["N"], r["seed"], r["train_seed"]) != key
                ]
                results.append(record)
                save(csv_path, results)
                (args.out / "results.md").write_text(
                    markdown(load(csv_path), args.epochs, bench)
                )
                print(
                    f"{spec} seed={seed} train_seed={train_seed}: {record['status']} "
                    f"force {record.get('test_force_mae_meV_A', float('nan')):.1f} "
                    f"meV/Å energy "
                    f"{record.get('test_energy_mae_meV_atom', float('nan')):.1f} "
                    f"meV/atom {record.get('error', '')}",
                    flush=True,
                )
    return 0


def run_speed(args) -> int:
    """Time ``mtt-transfer select`` on a 10,000-structure pool (one thread)."""
    import ase.io

    frames = ase.io.read(PRETRAIN_DATA, ":")
    rng = np.random.default_rng(0)
    pool = []
    while len(pool) < args.speed_pool:
        for atoms in frames[: args.speed_pool - len(pool)]:
            copy = atoms.copy()
            copy.positions += rng.normal(0.0, 0.02, copy.positions.shape)
            pool.append(copy)
    folder = args.runs / "speed"
    folder.mkdir(parents=True, exist_ok=True)
    pool_file = folder / "pool.xyz"
    ase.io.write(pool_file, pool, format="extxyz")
    lines = []
    for method in args.speed_methods.split(","):
        output = folder / f"selected_{method}.xyz"
        output.unlink(missing_ok=True)
        command = [bin_tool("mtt-transfer"), "select", str(args.checkpoint)]
        command += [str(pool_file), "-n", "100", "-o", str(output), "--method", method]
        cpu_before = children_cpu_seconds()
        seconds = run_logged(command, folder, f"select_{method}.log")
        cpu = children_cpu_seconds() - cpu_before
        log = (folder / f"select_{method}.log").read_text()
        rate = re.search(r"\(([0-9.]+) structures/s\)", log)
        choose = re.search(r"with '\w+' \(seed \d+\) in ([0-9.]+) s", log)
        lines.append(
            f"| {method} | {len(pool)} | {seconds:.0f} | {cpu:.0f} | "
            f"{rate.group(1) if rate else '?'} | {choose.group(1) if choose else '?'} |"
        )
        print(lines[-1], flush=True)
    n_atoms = sum(len(a) for a in pool)
    text = "\n".join(
        [
            "# `mtt-transfer select` speed",
            "",
            f"Pool: {len(pool)} structures ({n_atoms} atoms), copies of "
            "`bench/data/pretrain_xtb.xyz` frames rattled by σ 0.02 Å (seed 0); "
            "`-n 100`, `OMP_NUM_THREADS=1`, on a 2-core machine shared with other "
            "jobs. Command: `python bench/select_labels.py --speed`.",
            "",
            "| method | pool | wall, whole command (s) | CPU, whole command (s) | "
            "forward pass (structures/s, wall) | choosing 100 (s, wall) |",
            "|---|---|---|---|---|---|",
            *lines,
        ]
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "speed.md").write_text(text + "\n")
    return 0


def run_picks(args) -> int:
    """What each method picks from the pool (no training): frames rattled by
    σ = 0.1 Å and in all, and molecules, among its first 25, 50 and 100 picks
    (``select`` writes its picks in order: the first k are what ``-n k`` picks)."""
    bench = Benchmark(args)
    rows = []
    for method in METHODS:
        picked, seconds = bench.selected(method, 100, 0)
        for n in (25, 50, 100):
            d = bench.describe(picked[:n])
            rows.append(
                f"| {method} | {n} | {d['sigma01_frames']} | "
                f"{d['rattled_frames']} | {d['molecules']} |"
            )
    for n in (25, 50, 100):
        counts = [bench.describe(bench.orders[s][:n]) for s in ("0", "1", "2")]
        cells = [
            spread([float(c[k]) for c in counts], 0)
            for k in ("sigma01_frames", "rattled_frames", "molecules")
        ]
        rows.append(f"| random (3 draws) | {n} | " + " | ".join(cells) + " |")
    text = "\n".join(
        [
            "# What `mtt-transfer select` picks from the PBE0 pool",
            "",
            "Pool: the 231 training-pool frames of "
            "`bench/results/accuracy/splits.json` (200 MD, 31 rattled of which "
            "6 by σ = 0.1 Å; 26 molecules), labels removed; `select -n 100 --seed 0`, "
            "first N picks. Random: the learning curve's orders, median [min-max] "
            "over seeds 0-2. Command: `python bench/select_labels.py --picks`.",
            "",
            "| method | N | σ = 0.1 Å frames | rattled frames | molecules |",
            "|---|---|---|---|---|",
            *rows,
        ]
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "picks.md").write_text(text + "\n")
    print(text)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="mix:50,random:100")
    parser.add_argument("--seeds", default="0,1,2", help="random draws")
    parser.add_argument("--select-seeds", default="0", help="seeds of select")
    parser.add_argument("--train-seeds", default="0", help="mtt train seeds (select)")
    parser.add_argument("--epochs", type=int, default=80)
    parser.add_argument("--checkpoint", type=Path, default=CHECKPOINT)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--runs", type=Path, default=Path("/tmp/bench_runs/select"))
    parser.add_argument("--speed", action="store_true")
    parser.add_argument(
        "--picks", action="store_true", help="only what each method picks"
    )
    parser.add_argument("--report", action="store_true", help="only rewrite results.md")
    parser.add_argument("--speed-pool", type=int, default=10000)
    parser.add_argument("--speed-methods", default="mix")
    args = parser.parse_args(argv)
    for name in ("seeds", "select_seeds", "train_seeds"):
        setattr(args, name, [int(s) for s in getattr(args, name).split(",")])
    args.checkpoint, args.out = args.checkpoint.resolve(), args.out.resolve()
    args.runs = args.runs.resolve()
    if args.report:
        bench = Benchmark(args)
        text = markdown(load(args.out / "results.csv"), args.epochs, bench)
        (args.out / "results.md").write_text(text)
        return 0
    if args.picks:
        return run_picks(args)
    return run_speed(args) if args.speed else run_rows(args)


if __name__ == "__main__":
    sys.exit(main())
