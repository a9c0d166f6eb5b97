"""A short NVE simulation in ASE with the transferred model, selected as users do.

``MetatomicCalculator(model, variants={"energy": "pbe0"})`` on one held-out molecule;
the total-energy drift and largest deviation tell whether the model gives a
conservative, smooth potential.
"""

import contextlib
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .options import LEVEL, MD_MOLECULE


@contextlib.contextmanager
def one_thread():
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
