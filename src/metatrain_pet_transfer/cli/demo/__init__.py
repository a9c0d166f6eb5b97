"""``mtt-transfer demo``: a complete transfer, on data shipped with the package.

A small PET pre-trained on GFN2-xTB (``demo_data/pretrained_xtb.ckpt``, made by
``scripts/make_demo_checkpoint.py``) is transferred to PBE0/def2-SVP with a few dozen
labelled frames, through the path a user takes:

1. the data and an ``options.yaml`` are written into a new run folder;
2. ``mtt train`` with ``num_epochs: 0`` exports the zero-shot model (the pretrained
   model plus a per-element energy shift, :mod:`.alignment`), in ``zero-shot/``;
3. ``mtt train options.yaml`` transfers the model (its log is streamed);
4. both models are evaluated on held-out PBE0 frames (before/after table);
5. the transferred model runs a short NVE simulation in ASE, selected as
   ``MetatomicCalculator("model.pt", variants={"energy": "pbe0"})``;
6. ``report/`` gets the parity plot, the learning curve and ``summary.md``
   (:mod:`.report`).

Nothing outside the run folder is written, and an existing non-empty folder is
never used: every run goes to a new folder.
"""

import argparse
import contextlib
import copy
import os
import re
import shutil
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import List, Optional

import numpy as np

from .. import report as run_report


DEMO_DATA = Path(__file__).resolve().parent / "data"
CHECKPOINT, TRAIN_XYZ, TEST_XYZ = (
    "pretrained_xtb.ckpt",
    "pbe0_train.xyz",
    "pbe0_test.xyz",
)
TARGET, LEVEL = "mtt::energy_pbe0", "pbe0"

#: epochs of the transfer: the story is visible, the demo stays under ~3 min on
#: 2 CPU cores (see the report of issue 6 for the timing)
DEFAULT_EPOCHS = 60
DEFAULT_MD_STEPS = 400
#: the molecule of the MD run (a held-out geometry of it)
MD_MOLECULE = "CH3CH2OH"
#: force MAE between GFN2-xTB and PBE0/def2-SVP on these geometries (data README)
LEVEL_GAP_FORCES = 320  # meV/A

_TARGETS = {
    TARGET: {
        "quantity": "energy",
        "key": "energy_pbe0",
        "unit": "eV",
        "forces": {"key": "forces_pbe0"},
        "stress": False,
    }
}


def transfer_options(epochs: int) -> dict:
    """The ``options.yaml`` of the transfer, as a user would write it."""
    return {
        "seed": 0,
        "architecture": {
            "name": "pet_transfer",
            "training": {
                "batch_size": 8,
                "num_epochs": epochs,
                "learning_rate": 0.0002,
                "log_interval": 1,
                "checkpoint_interval": 10000,
                "num_workers": 0,
                "finetune": {"method": "full", "read_from": CHECKPOINT},
            },
        },
        "training_set": {
            "systems": {"read_from": TRAIN_XYZ, "length_unit": "angstrom"},
            "targets": copy.deepcopy(_TARGETS),
        },
        "validation_set": 0.2,
        "test_set": {
            "systems": {"read_from": TEST_XYZ, "length_unit": "angstrom"},
            "targets": copy.deepcopy(_TARGETS),
        },
    }


def _with_parent_paths(options: dict) -> dict:
    """The same options, run from a sub-folder of the run folder."""
    options = copy.deepcopy(options)
    finetune = options["architecture"]["training"]["finetune"]
    finetune["read_from"] = f"../{finetune['read_from']}"
    for section in ("training_set", "test_set"):
        systems = options[section]["systems"]
        systems["read_from"] = f"../{systems['read_from']}"
    return options


_HEADER = """\
# Written by `mtt-transfer demo`: transfer of a small PET pre-trained on GFN2-xTB
# to PBE0/def2-SVP labels. The new target {target} gets a new head and
# composition model, started from the pretrained `energy` head plus a per-element
# shift. Re-run it in this folder with:  mtt train options.yaml
"""


def _write_yaml(path: Path, options: dict, header: str = "") -> None:
    import yaml

    path.write_text(header + yaml.safe_dump(options, sort_keys=False))


# --------------------------------------------------------------- running mtt train


def _mtt_command() -> List[str]:
    """``mtt`` of this environment (the launcher where it is not installed)."""
    script = Path(sys.executable).parent / "mtt"
    if script.is_file():
        return [str(script)]
    found = shutil.which("mtt")
    if found:
        return [found]
    return [sys.executable, "-m", "metatrain_pet_transfer"]


_LOG_PREFIX = re.compile(r"^\[[^\]]*\]\[([A-Z]+)\] - ")
_PYTHON_DEPRECATION = re.compile(r"(Deprecation|Future)Warning")
_SHOWN = (
    "Zero-shot",
    "Alignment:",
    "Evaluating",
    "Starting training",
    "Training finished",
    "Running final evaluation",
)


def _maes(text: str) -> str:
    """Only the MAE items of ``a: 1 | b MAE: 2 | ...``, forces named as such."""
    kept = [p.strip() for p in text.split(" | ") if "MAE" in p]
    kept = [re.sub(r"(\S+)_positions_gradients", r"forces[\1]", p) for p in kept]
    return " | ".join(kept)


def _condense(message: str) -> Optional[str]:
    """The line of the training log to show, shortened; ``None`` to hide it."""
    if message.startswith("Epoch:"):
        parts = message.split(" | ")
        epoch = parts[0].replace("Epoch:", "epoch").strip()
        kept = [p for p in parts if p.startswith("validation") and "MAE" in p]
        kept = [p.replace("validation ", "val ") for p in kept]
        return " | ".join([epoch, *kept])
    if message.startswith("Zero-shot"):
        head, _, metrics = message.partition(": ")
        return f"{head}: {_maes(metrics)}"
    if any(word in message for word in _SHOWN):
        return message
    if re.search(r"\bMAE\b", message) and " | " in message:
        return _maes(message)
    return None


def run_mtt_train(cwd: Path, args: List[str], verbose: bool = False) -> None:
    """Run ``mtt train`` in ``cwd``, streaming its log lines (condensed unless
    ``verbose``); raise ``RuntimeError`` with the log's tail if it fails."""
    command = [*_mtt_command(), "train", *args]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    # molecules of a few atoms give OpenMP threads tiny tasks; on a busy machine
    # libgomp's default spin-waiting then makes 2 threads several times slower
    # than 1 (measured on 2 shared cores: 20 s instead of 6 s for 10 epochs)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    print(f"  $ cd {cwd} && mtt train {' '.join(args)}", flush=True)
    tail: List[str] = []
    with subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    ) as process:
        for line in process.stdout:
            line = line.rstrip("\n")
            tail = (tail + [line])[-40:]
            match = _LOG_PREFIX.match(line)
            level = match.group(1) if match else ""
            message = line[match.end() :] if match else line
            if verbose:
                shown = line
            elif _PYTHON_DEPRECATION.search(message):
                # torch.jit deprecations that metatrain logs: noise for a newcomer
                shown = None
            elif level in ("WARNING", "ERROR"):
                shown = f"{level}: {message}"
            elif match:
                shown = _condense(message)
            else:
                shown = None
            if shown:
                print(f"    {shown}", flush=True)
    if process.returncode != 0:
        raise RuntimeError(
            f"`mtt train {' '.join(args)}` failed in {cwd} (exit code "
            f"{process.returncode}); the end of its output:\n" + "\n".join(tail)
        )


# -------------------------------------------------------------------------------- MD


@contextlib.contextmanager
def _one_thread():
    """Evaluate tiny molecules on one thread: more only add synchronization."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@dataclass
class MDResult:
    """Summary of the NVE run."""

    molecule: str
    n_atoms: int
    steps: int
    timestep_fs: float
    mean_temperature: float
    drift: float
    """slope of the total energy, meV/atom/ps"""
    max_deviation: float
    """largest |E_total - E_total(0)|, meV/atom"""
    trajectory: Path

    def markdown(self) -> str:
        return "\n".join(
            [
                "## Molecular dynamics with the transferred model",
                "",
                f"NVE (velocity Verlet) in ASE, {self.molecule} "
                f"({self.n_atoms} atoms), "
                f"{self.steps} steps of {self.timestep_fs} fs "
                f"({self.steps * self.timestep_fs / 1000:.2f} ps), velocities drawn "
                "at 300 K, calculator:",
                "",
                "```python",
                "from metatomic_ase import MetatomicCalculator",
                'atoms.calc = MetatomicCalculator("model.pt", '
                'variants={"energy": "pbe0"})',
                "```",
                "",
                "| mean temperature | total-energy drift | max deviation |",
                "|---|---|---|",
                f"| {self.mean_temperature:.0f} K | {self.drift:.3g} meV/atom/ps "
                f"| {self.max_deviation:.3g} meV/atom |",
                "",
                f"Trajectory (every 10 steps): `{self.trajectory.name}`.",
            ]
        )


def run_md(model: Path, frames: list, out: Path, steps: int) -> MDResult:
    """Short NVE run of the transferred model, selected as ASE users do."""
    import ase.io
    from ase import units
    from ase.md.velocitydistribution import (
        MaxwellBoltzmannDistribution,
        Stationary,
        ZeroRotation,
    )
    from ase.md.verlet import VelocityVerlet
    from metatomic_ase import MetatomicCalculator

    candidates = [f for f in frames if f.info.get("mol") == MD_MOLECULE] or frames
    atoms = candidates[0].copy()
    atoms.info = {"mol": atoms.info.get("mol", atoms.get_chemical_formula())}
    for key in list(atoms.arrays):
        if key not in ("numbers", "positions"):
            del atoms.arrays[key]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        atoms.calc = MetatomicCalculator(str(model), variants={"energy": LEVEL})
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
    Stationary(atoms)
    ZeroRotation(atoms)
    timestep = 0.5
    dynamics = VelocityVerlet(atoms, timestep=timestep * units.fs)
    totals, temperatures, snapshots = [], [], []

    def record():
        totals.append(atoms.get_total_energy())
        temperatures.append(atoms.get_temperature())
        if len(totals) % 10 == 1:
            snapshot = atoms.copy()
            snapshot.calc = None
            snapshots.append(snapshot)

    dynamics.attach(record, interval=1)
    with warnings.catch_warnings():
        # metatomic-ase also symmetrizes an (undefined) stress of a molecule
        warnings.simplefilter("ignore", RuntimeWarning)
        dynamics.run(steps)
    totals = np.array(totals)
    n = len(atoms)
    time_ps = np.arange(len(totals)) * timestep / 1000
    slope = np.polyfit(time_ps, totals, 1)[0] if len(totals) > 1 else 0.0
    trajectory = out / "md.xyz"
    ase.io.write(trajectory, snapshots)
    return MDResult(
        molecule=atoms.info["mol"],
        n_atoms=n,
        steps=steps,
        timestep_fs=timestep,
        mean_temperature=float(np.mean(temperatures)),
        drift=float(1000 * slope / n),
        max_deviation=float(1000 * np.max(np.abs(totals - totals[0])) / n),
        trajectory=trajectory,
    )


# ---------------------------------------------------------------------- the story


def _step(number: int, total: int, text: str, start: float) -> None:
    print(f"\n[{number}/{total}] {text}  ({time.perf_counter() - start:.0f} s)")


def default_out() -> Path:
    return Path(f"pet-transfer-demo-{datetime.now():%Y%m%d-%H%M%S}")


def run_demo(
    out: Path, epochs: int, md_steps: int, verbose: bool = False
) -> run_report.Report:
    """The whole demo in ``out`` (created; it must not hold files yet)."""
    import ase.io

    start = time.perf_counter()
    total = 6
    _step(1, total, f"Run folder {out}: data and options.yaml", start)
    out.mkdir(parents=True, exist_ok=True)
    for name in (CHECKPOINT, TRAIN_XYZ, TEST_XYZ):
        shutil.copy(DEMO_DATA / name, out / name)
    options = transfer_options(epochs)
    _write_yaml(out / "options.yaml", options, _HEADER.format(target=TARGET))
    train_frames = ase.io.read(out / TRAIN_XYZ, ":")
    test_frames = ase.io.read(out / TEST_XYZ, ":")
    print(
        f"  pretrained PET (GFN2-xTB): {CHECKPOINT}; PBE0/def2-SVP frames: "
        f"{len(train_frames)} for training ({TRAIN_XYZ}, 20% of them for "
        f"validation), {len(test_frames)} held out ({TEST_XYZ})"
    )

    _step(2, total, "Zero-shot model: pretrained + per-element shift", start)
    zero_shot = out / "zero-shot"
    zero_shot.mkdir()
    zero_options = _with_parent_paths(options)
    zero_options["architecture"]["training"]["num_epochs"] = 0
    # the demo evaluates this model itself (step 4)
    zero_options["final_eval"] = False
    _write_yaml(
        zero_shot / "options.yaml",
        zero_options,
        "# `num_epochs: 0`: exports the aligned start, the zero-shot model\n",
    )
    run_mtt_train(zero_shot, ["options.yaml", "-o", "model.pt"], verbose)

    _step(3, total, f"Transfer: mtt train options.yaml ({epochs} epochs)", start)
    run_mtt_train(out, ["options.yaml", "-o", "model.pt"], verbose)

    _step(4, total, f"Before vs after on {len(test_frames)} held-out frames", start)
    run = run_report.find_run(out)
    targets, _ = run_report.energy_targets(run.options)
    structures = run_report.Structures(
        f"`{TEST_XYZ}` ({len(test_frames)} held-out PBE0/def2-SVP frames)",
        test_frames,
        {t.name: test_frames for t in targets},
    )
    with _one_thread():
        comparisons = run_report.evaluate(
            zero_shot / "model.pt", structures, targets, "zero-shot"
        )
        comparisons += run_report.evaluate(
            out / "model.pt", structures, targets, "transferred"
        )
    print(_indent(run_report.metrics_table(comparisons)))
    print(
        f"  (GFN2-xTB itself is ~{LEVEL_GAP_FORCES} meV/Å MAE away from PBE0 "
        "forces on these geometries)"
    )

    _step(5, total, f"NVE molecular dynamics in ASE ({md_steps} steps)", start)
    with _one_thread():
        md = run_md(out / "model.pt", test_frames, out, md_steps)
    print(
        f"  {md.molecule}: mean T {md.mean_temperature:.0f} K, total-energy drift "
        f"{md.drift:.3g} meV/atom/ps, max deviation {md.max_deviation:.3g} meV/atom"
    )

    _step(6, total, "Report", start)
    story = "\n".join(
        [
            "## What ran",
            "",
            f"1. `zero-shot/`: `mtt train` with `num_epochs: 0`: the pretrained PET "
            f"(GFN2-xTB) with a new `{TARGET}` head copied from its `energy` head and "
            "a per-element shift fitted on the training frames.",
            f"2. `mtt train options.yaml`: transfer to PBE0/def2-SVP on "
            f"{len(train_frames)} frames ({epochs} epochs, method `full`).",
            f"3. Both exported models evaluated on `{TEST_XYZ}` "
            f"({len(test_frames)} frames of the same 26 molecules, not trained on).",
            "",
            f"For scale: GFN2-xTB forces are ~{LEVEL_GAP_FORCES} meV/Å MAE away from "
            "PBE0 on these geometries.",
        ]
    )
    result = run_report.write_report(
        run,
        out / "report",
        comparisons,
        structures.description,
        intro=story,
        extra_sections=[md.markdown()],
        title="mtt-transfer demo: GFN2-xTB → PBE0/def2-SVP",
    )
    print(f"  parity plot:    {result.parity}")
    print(f"  learning curve: {result.learning_curve}")
    print(f"  summary:        {result.summary}")
    print(
        f"\nDone in {time.perf_counter() - start:.0f} s. Transferred model: "
        f"{out / 'model.pt'}; options to adapt: {out / 'options.yaml'}"
    )
    return result


def _indent(text: str) -> str:
    return "\n".join(f"  {line}" for line in text.splitlines())


# ------------------------------------------------------------------------------ CLI


def register(subparsers) -> None:
    """Add the ``demo`` subcommand to the ``mtt-transfer`` parser."""
    parser = subparsers.add_parser(
        "demo",
        help="transfer a small xTB-pretrained PET to PBE0 on shipped data, "
        "evaluate it, run MD and write a report",
        description="Transfer a small PET pre-trained on GFN2-xTB to PBE0/def2-SVP "
        "with data shipped in the package (`mtt train`, as a user runs it), compare "
        "the zero-shot and transferred models on held-out frames, run a short NVE "
        "simulation in ASE, and write a report (parity plot, learning curve, "
        "summary.md). About 1.5 minutes on 2 CPU cores.",
    )
    parser.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="new run folder (default: ./pet-transfer-demo-<date>-<time>); an "
        "existing folder must be empty",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        metavar="N",
        default=DEFAULT_EPOCHS,
        help=f"epochs of the transfer (default: {DEFAULT_EPOCHS})",
    )
    parser.add_argument(
        "--md-steps",
        type=int,
        metavar="N",
        default=DEFAULT_MD_STEPS,
        help=f"NVE steps of 0.5 fs (default: {DEFAULT_MD_STEPS})",
    )
    parser.add_argument(
        "--verbose", action="store_true", help="show the full training logs"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``mtt-transfer demo``; returns the exit code."""
    out = args.out if args.out is not None else default_out()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        print(
            f"mtt-transfer demo: '{out}' already exists and is not an empty folder; "
            "the demo never overwrites files: choose a new --out",
            file=sys.stderr,
        )
        return 2
    if args.epochs < 1 or args.md_steps < 1:
        print(
            "mtt-transfer demo: --epochs and --md-steps must be >= 1", file=sys.stderr
        )
        return 2
    missing = [
        n for n in (CHECKPOINT, TRAIN_XYZ, TEST_XYZ) if not (DEMO_DATA / n).is_file()
    ]
    if missing:
        print(
            f"mtt-transfer demo: the package's demo data is incomplete (missing "
            f"{', '.join(missing)} in {DEMO_DATA}); reinstall metatrain-pet-transfer",
            file=sys.stderr,
        )
        return 1
    try:
        run_demo(out, args.epochs, args.md_steps, args.verbose)
    except (RuntimeError, run_report.ReportError) as error:
        print(f"\nmtt-transfer demo: {error}", file=sys.stderr)
        return 1
    return 0
