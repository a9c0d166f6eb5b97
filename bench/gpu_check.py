"""The device check: every path of the plugin on one device, against the CPU's numbers.

Run by ``bench/gpu_check.sh`` (which installs the project first on the GPU machine);
docs/benchmarks.md ("GPU") has the table and the command. Each check is the command a
user runs, on ``--device`` (``cuda`` on the GPU machine, ``cpu`` here):

- ``default``: ``mtt train`` from ``pet_xtb.ckpt`` to PBE0 energies and forces
  (``full``, alignment on), ``heads``, ``lora``, ``keep`` (``keep_pretrained_heads``),
  ``new-element`` (``pet_xtb_hco.ckpt``, which never saw N, on frames with N), and
  ``torchrun`` (the default under ``torchrun --nproc_per_node=1``: NCCL on CUDA, gloo
  on CPU);
- ``eval``: ``mtt eval`` of the default run's ``model.pt``; ``export``: ``mtt export``
  of its ``model.ckpt``, then the exported model in ASE on the device;
- ``report``: ``mtt-transfer report`` of the default run (its models in ASE, on the
  GPU when there is one);
- ``select``: ``mtt-transfer select --device`` on 100 pool structures.

Every training runs one epoch at a learning rate of 1e-12 (PET's warm-up starts it at
0): the weights do not move, so the numbers logged at epoch 0 are those of the aligned
start, computed by the device. They are compared with the same run on CPU
(``gpu_check_reference.json``, written by ``--write-reference`` with ``--device
cpu``): the plugin's zero-shot errors, PET's epoch-0 training and validation errors,
``mtt eval``'s errors, the exported model's energies and forces in ASE, the selected
structures. Metrics are logged to 4-5 digits: they agree when within 1e-3 relative
(+0.01 meV absolute, for the kept head's near-zero drift); raw ASE energies and forces
within 1e-4 eV (eV/A) + 1e-5 relative. Device bugs give differences of order one.

    python bench/gpu_check.py --device cpu --out /tmp/gpu_check   # here
"""

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List

import yaml


BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
REFERENCE = BENCH / "gpu_check_reference.json"
#: checkpoints that travel with the repository to the GPU machine (git-ignored; made
#: by `bash bench/gpu_check.sh prepare` from ../shared/checkpoints)
INPUTS = ROOT / ".gpu_inputs"
DATA = BENCH / "data" / "pbe0.xyz"

#: agreement of logged metrics (4-5 significant digits) and of raw numbers
METRIC_RTOL, METRIC_ATOL = 1e-3, 0.01
RAW_RTOL, RAW_ATOL = 1e-5, 1e-4
LEARNING_RATE = 1e-12  # the weights stay those of the aligned start

TARGET = {
    "quantity": "energy",
    "key": "energy_pbe0",
    "unit": "eV",
    "forces": {"key": "forces_pbe0"},
    "stress": False,
}


@dataclass
class Check:
    """One check: did it finish, in how long, with which numbers."""

    name: str
    finished: bool = False
    seconds: float = 0.0
    numbers: Dict[str, float] = field(default_factory=dict)
    facts: Dict[str, str] = field(default_factory=dict)  # device, backend, ...
    error: str = ""
    # filled by `compare`
    compared: int = 0
    worst: float = 0.0  # largest |difference| / tolerance (<= 1: agree)
    worst_key: str = ""
    missing: List[str] = field(default_factory=list)

    @property
    def agrees(self) -> bool:
        return self.finished and self.worst <= 1.0 and not self.missing


# ----------------------------------------------------------------------------- data


def write_data(workdir: Path) -> None:
    """Fixed splits of ``bench/data/pbe0.xyz``: 48 training, 16 validation frames,
    100 pool frames for ``select``, 4 frames for ASE (the same on every machine)."""
    import ase.io
    import numpy as np

    frames = ase.io.read(DATA, ":")
    order = np.random.default_rng(0).permutation(len(frames))
    parts = {"train": order[:48], "val": order[48:64], "pool": order[64:164]}
    for name, indices in parts.items():
        ase.io.write(workdir / f"{name}.xyz", [frames[i] for i in indices])
    ase.io.write(workdir / "ase.xyz", [frames[i] for i in parts["val"][:4]])


def training_options(read_from: Path, device: str, **training) -> dict:
    finetune = {"method": "full", "read_from": str(read_from)}
    finetune.update(training.pop("finetune", {}))
    return {
        "seed": 0,
        "device": device,
        "base_precision": 32,
        "architecture": {
            "name": "pet_transfer",
            "training": {
                "batch_size": 8,
                "num_epochs": 1,
                "learning_rate": LEARNING_RATE,
                "log_interval": 1,
                "checkpoint_interval": 1000,
                "num_workers": 0,
                "finetune": finetune,
                **training,
            },
        },
        "training_set": {
            "systems": {"read_from": "../train.xyz", "length_unit": "angstrom"},
            "targets": {"mtt::energy_pbe0": TARGET},
        },
        "validation_set": {
            "systems": {"read_from": "../val.xyz", "length_unit": "angstrom"},
            "targets": {"mtt::energy_pbe0": TARGET},
        },
        "test_set": 0.0,
        "final_eval": False,
    }


def trainings(inputs: Path, device: str) -> Dict[str, dict]:
    xtb, hco = inputs / "pet_xtb.ckpt", inputs / "pet_xtb_hco.ckpt"
    return {
        "default": training_options(xtb, device),
        "heads": training_options(xtb, device, finetune={"method": "heads"}),
        "lora": training_options(
            xtb, device, finetune={"method": "lora", "config": {"rank": 4, "alpha": 8}}
        ),
        "keep": training_options(xtb, device, keep_pretrained_heads=True),
        "new-element": training_options(hco, device),
        "torchrun": training_options(xtb, device),
    }


# -------------------------------------------------------------------------- parsing

_METRIC = re.compile(r"^\s*(.+?):\s*([-+0-9.eE]+|nan|inf)\s*(\S*)\s*$")


def metrics(text: str, prefix: str) -> Dict[str, float]:
    """``name: value unit | ...`` pairs of a log line, keyed ``prefix name``."""
    numbers = {}
    for part in text.split("|"):
        match = _METRIC.match(part)
        if match and match.group(1) != "learning rate":
            numbers[f"{prefix} {match.group(1)}"] = float(match.group(2))
    return numbers


def training_numbers(log: str) -> Dict[str, float]:
    """The plugin's zero-shot errors and PET's epoch-0 errors."""
    numbers = {}
    for split, text in re.findall(r"Zero-shot (training|validation) errors: (.*)", log):
        numbers.update(metrics(text, f"zero-shot {split}"))
    epoch = re.search(r"Epoch:\s+0 \|(.*)", log)
    if epoch:
        numbers.update(metrics(epoch.group(1), "epoch 0"))
    return numbers


def training_facts(log: str) -> Dict[str, str]:
    facts = {}
    device = re.search(r"Training on device (\S+) with dtype", log)
    if device:
        facts["device"] = device.group(1)
    process = re.search(r"Process 0 of (\d+) \((\w+), (\w+) on (\S+)\)", log)
    if process:
        facts["backend"] = f"{process.group(3)} on {process.group(4)}"
    return facts


# ------------------------------------------------------------------------- running


class Runner:
    def __init__(self, workdir: Path, device: str, threads: int):
        self.workdir, self.device = workdir, device
        self.bin = Path(sys.executable).parent
        self.env = dict(
            os.environ,
            OMP_NUM_THREADS=str(threads),
            PYTHONWARNINGS="ignore",
            PYTHONUNBUFFERED="1",
        )

    def run(self, name: str, command: List[str], folder: Path) -> tuple:
        """Run ``command`` in ``folder``; its output goes to ``<folder>/<name>.log``."""
        folder.mkdir(parents=True, exist_ok=True)
        log = folder / f"{name}.log"
        begin = time.perf_counter()
        with open(log, "w") as file:
            status = subprocess.run(
                command, cwd=folder, env=self.env, stdout=file, stderr=subprocess.STDOUT
            ).returncode
        return status, time.perf_counter() - begin, log.read_text(errors="replace")

    def training(self, name: str, options: dict) -> Check:
        folder = self.workdir / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "options.yaml").write_text(yaml.safe_dump(options))
        mtt = str(self.bin / "mtt")
        command = [mtt, "train", "options.yaml"]
        if name == "torchrun":
            command = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc_per_node=1",
                mtt,
                "train",
                "options.yaml",
            ]
        status, seconds, log = self.run("train", command, folder)
        check = Check(name, seconds=seconds)
        check.finished = status == 0 and (folder / "model.pt").exists()
        check.numbers = training_numbers(log)
        check.facts = training_facts(log)
        if not check.finished:
            check.error = _tail(log)
        return check

    def evaluation(self) -> Check:
        folder = self.workdir / "default"
        (folder / "eval.yaml").write_text(
            yaml.safe_dump(
                {
                    "systems": {"read_from": "../val.xyz", "length_unit": "angstrom"},
                    "targets": {"mtt::energy_pbe0": TARGET},
                }
            )
        )
        command = [str(self.bin / "mtt"), "eval", "model.pt", "eval.yaml", "-b", "8"]
        command += ["-o", "eval_predictions.xyz"]
        status, seconds, log = self.run("eval", command, folder)
        check = Check("eval", finished=status == 0, seconds=seconds)
        for line in log.splitlines():
            if "MAE" in line and "mtt::energy_pbe0" in line:
                check.numbers.update(metrics(line.split(" - ", 1)[-1], "validation"))
        device = re.search(r"Running on device (\S+) with dtype", log)
        if device:
            check.facts["device"] = device.group(1)
        if not check.finished:
            check.error = _tail(log)
        return check

    def export(self) -> Check:
        folder = self.workdir / "default"
        command = [str(self.bin / "mtt"), "export", "model.ckpt", "-o", "exported.pt"]
        status, seconds, log = self.run("export", command, folder)
        check = Check("export", seconds=seconds)
        if status != 0:
            check.error = _tail(log)
            return check
        command = [sys.executable, __file__, "ase", "exported.pt", "--device"]
        status, more, log = self.run("ase", command + [self.device], folder)
        check.seconds += more
        check.finished = status == 0
        if check.finished:
            result = json.loads(log.strip().splitlines()[-1])
            check.facts["device"] = result.pop("device")
            check.numbers = result
        else:
            check.error = _tail(log)
        return check

    def report(self) -> Check:
        folder = self.workdir / "default"
        command = [str(self.bin / "mtt-transfer"), "report", "."]
        command += ["--data", "../val.xyz", "--out", "report"]
        status, seconds, log = self.run("report", command, folder)
        check = Check("report", finished=status == 0, seconds=seconds)
        summary = folder / "report" / "summary.md"
        if check.finished and summary.exists():
            # | target | model | energy MAE | force MAE |
            row = re.search(
                r"^\| mtt::energy_pbe0 \| model \| (.*)$", summary.read_text(), re.M
            )
            cells = [cell for cell in row.group(1).split("|") if cell.strip()]
            for label, cell in zip(["energy MAE", "force MAE"], cells, strict=True):
                check.numbers[f"report {label}"] = float(cell.split()[0])
        else:
            check.finished = False
            check.error = _tail(log)
        return check

    def select(self, inputs: Path) -> Check:
        folder = self.workdir / "select"
        command = [
            str(self.bin / "mtt-transfer"),
            "select",
            str(inputs / "pet_xtb.ckpt"),
            "../pool.xyz",
            "-n",
            "10",
            "-o",
            "chosen.xyz",
            "--device",
            self.device,
        ]
        status, seconds, log = self.run("select", command, folder)
        check = Check("select", finished=status == 0, seconds=seconds)
        if check.finished:
            import ase.io

            chosen = ase.io.read(folder / "chosen.xyz", ":")
            for rank, atoms in enumerate(chosen):
                check.numbers[f"chosen {rank}"] = float(atoms.info["pretrain_index"])
            device = re.search(r", on (\S+)\) in", log)
            if device:
                check.facts["device"] = device.group(1)
        else:
            check.error = _tail(log)
        return check


def _tail(log: str, lines: int = 12) -> str:
    return "\n".join(log.strip().splitlines()[-lines:])


def ase_numbers(model: str, device: str) -> None:
    """Energies and forces of ``ase.xyz`` with the exported model (one JSON line)."""
    import warnings

    import ase.io
    from metatomic_ase import MetatomicCalculator

    calculator = MetatomicCalculator(model, device=device, variants={"energy": "pbe0"})
    numbers = {"device": str(getattr(calculator, "_device", device))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for index, atoms in enumerate(ase.io.read("../ase.xyz", ":")):
            atoms.calc = calculator
            numbers[f"energy {index} (eV)"] = float(atoms.get_potential_energy())
            for atom, force in enumerate(atoms.get_forces()):
                for axis, value in zip("xyz", force, strict=True):
                    numbers[f"force {index}.{atom}{axis} (eV/A)"] = float(value)
    print(json.dumps(numbers))


# ------------------------------------------------------------------------ comparing


def compare(check: Check, reference: Dict[str, float]) -> None:
    """How far ``check``'s numbers are from the CPU's, in units of the tolerance."""
    check.missing = sorted(set(reference) - set(check.numbers))
    for key, expected in reference.items():
        if key not in check.numbers:
            continue
        value = check.numbers[key]
        raw = key.startswith(("energy", "force"))
        rtol, atol = (RAW_RTOL, RAW_ATOL) if raw else (METRIC_RTOL, METRIC_ATOL)
        if key.startswith("chosen"):
            rtol, atol = 0.0, 0.5  # the same structure, at the same rank
        if key.startswith("report"):
            atol = 0.1  # printed to 0.1 meV
        tolerance = atol + rtol * max(abs(value), abs(expected))
        if math.isnan(value) or math.isnan(expected):
            distance = 0.0 if math.isnan(value) and math.isnan(expected) else math.inf
        else:
            distance = abs(value - expected) / tolerance
        check.compared += 1
        if distance > check.worst:
            check.worst, check.worst_key = distance, key


def table(checks: List[Check], device: str, environment: Dict[str, str]) -> str:
    lines = [
        f"# GPU check on `{device}`",
        "",
        "| | |",
        "|---|---|",
        *[f"| {key} | {value} |" for key, value in environment.items()],
        "",
        "| check | finished | s | ran on | numbers compared | worst / tolerance "
        "| agrees with CPU |",
        "|---|---|---|---|---|---|---|",
    ]
    for check in checks:
        ran_on = ", ".join(check.facts.values()) or "(not logged)"
        worst = "-"
        if check.compared:
            worst = f"{check.worst:.3g} ({check.worst_key or 'all equal'})"
        if check.missing:
            worst += f"; missing: {', '.join(check.missing[:3])}"
        lines.append(
            f"| {check.name} | {'yes' if check.finished else '**NO**'} | "
            f"{check.seconds:.0f} | {ran_on} | {check.compared} | {worst} | "
            f"{'yes' if check.agrees else '**NO**'} |"
        )
    failed = [check for check in checks if not check.finished]
    for check in failed:
        lines += ["", f"## {check.name} failed", "", "```", check.error, "```"]
    return "\n".join(lines) + "\n"


def environment() -> Dict[str, str]:
    import metatrain
    import torch

    facts = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "metatrain": metatrain.__version__,
        "host cores": str(os.cpu_count()),
    }
    if torch.cuda.is_available():
        facts["gpu"] = torch.cuda.get_device_name(0)
    return facts


def run_checks(args) -> List[Check]:
    workdir = Path(args.workdir)
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    write_data(workdir)
    inputs = Path(args.inputs)
    runner = Runner(workdir, args.device, args.threads)
    options = trainings(inputs, args.device)
    first = [lambda name=name: runner.training(name, options[name]) for name in options]
    first.append(lambda: runner.select(inputs))
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        checks = list(pool.map(lambda job: job(), first))
        # these use the default run's files
        second = [runner.evaluation, runner.export, runner.report]
        checks += list(pool.map(lambda job: job(), second))
    return checks


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda or cpu")
    parser.add_argument("--out", default="/tmp/gpu_check_out")
    parser.add_argument("--workdir", default="/tmp/gpu_check_runs")
    parser.add_argument("--inputs", default=str(INPUTS), help="the two checkpoints")
    parser.add_argument("--jobs", type=int, default=1, help="checks at a time")
    parser.add_argument("--threads", type=int, default=1, help="OMP threads per check")
    parser.add_argument(
        "--write-reference",
        action="store_true",
        help=f"write the numbers to {REFERENCE.relative_to(ROOT)} (with --device cpu)",
    )
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    checks = run_checks(args)
    reference = json.loads(REFERENCE.read_text()) if REFERENCE.exists() else {}
    if args.write_reference:
        if args.device != "cpu" or not all(check.finished for check in checks):
            sys.exit("the reference is written from a complete run with --device cpu")
        reference = {check.name: check.numbers for check in checks}
        REFERENCE.write_text(json.dumps(reference, indent=1, sort_keys=True) + "\n")
    for check in checks:
        compare(check, reference.get(check.name, {}))
    facts = environment()
    (out / "gpu_check.md").write_text(table(checks, args.device, facts))
    (out / "gpu_check.json").write_text(
        json.dumps(
            {"environment": facts, "checks": [asdict(check) for check in checks]},
            indent=1,
        )
    )
    print((out / "gpu_check.md").read_text())
    return 0 if all(check.agrees for check in checks) else 1


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "ase":
        ase_numbers(sys.argv[2], sys.argv[sys.argv.index("--device") + 1])
    else:
        sys.exit(main())
