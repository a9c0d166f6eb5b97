"""A short NVE simulation in ASE with the transferred model, selected as users do.

``MetatomicCalculator(model, variants={"energy": "pbe0"})`` on one held-out molecule;
the total-energy drift and largest deviation tell whether the model gives a
conservative, smooth potential.

The held-out geometries come from a 500-800 K MD: started from one of them with
velocities at 300 K, the molecule's excess potential energy turns into kinetic
energy and the run averages far above 300 K. The geometry is therefore relaxed with
the model first, and the velocities are drawn at twice the target temperature: in
NVE, equipartition moves about half of the kinetic energy into the (nearly
harmonic) vibrations' potential energy, so the run averages about the target.
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


#: the temperature the NVE run should average, K
TARGET_TEMPERATURE = 300.0


@dataclass
class MDResult:
    """Summary of the NVE run."""

    molecule: str
    n_atoms: int
    steps: int
    timestep_fs: float
    initial_temperature: float
    """temperature of the drawn velocities, K (twice the target)"""
    relaxation_steps: int
    """optimizer steps of the relaxation before the run"""
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
                f"({self.steps * self.timestep_fs / 1000:.2f} ps), calculator:",
                "",
                "```python",
                "from metatomic_ase import MetatomicCalculator",
                'atoms.calc = MetatomicCalculator("model.pt", '
                'variants={"energy": "pbe0"})',
                "```",
                "",
                f"Start: the held-out geometry relaxed with the model "
                f"({self.relaxation_steps} optimizer steps; the held-out frames come "
                f"from a 500-800 K MD, far from the minimum), velocities drawn at "
                f"{self.initial_temperature:.0f} K. NVE conserves the total energy, "
                "not the temperature: equipartition moves about half of the kinetic "
                "energy into the vibrations' potential energy, so the run averages "
                f"about {self.initial_temperature / 2:.0f} K once the energy has "
                "spread over the modes (a short run is still close to its start). "
                "Started at 300 K on the unrelaxed MD geometry instead, the excess "
                "potential energy would heat the molecule to several hundred K.",
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
    relaxation_steps = _relax(atoms)
    initial_temperature = 2 * TARGET_TEMPERATURE
    MaxwellBoltzmannDistribution(
        atoms, temperature_K=initial_temperature, rng=np.random.default_rng(0)
    )
    Stationary(atoms)
    ZeroRotation(atoms)
    # removing the drift and rotation took kinetic energy away: back to the
    # temperature drawn, so that equipartition lands near the target
    atoms.set_velocities(
        atoms.get_velocities()
        * np.sqrt(initial_temperature / max(atoms.get_temperature(), 1e-8))
    )
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
    with _no_molecule_stress_warning():
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
        initial_temperature=initial_temperature,
        relaxation_steps=relaxation_steps,
        mean_temperature=float(np.mean(temperatures)),
        drift=float(1000 * slope / n),
        max_deviation=float(1000 * np.max(np.abs(totals - totals[0])) / n),
        trajectory=trajectory,
    )


def _relax(atoms, fmax: float = 0.05, max_steps: int = 200) -> int:
    """Relax ``atoms`` with their calculator (BFGS); the number of steps taken."""
    from ase.optimize import BFGS

    optimizer = BFGS(atoms, logfile=None)
    with _no_molecule_stress_warning():
        optimizer.run(fmax=fmax, steps=max_steps)
    return optimizer.nsteps


@contextlib.contextmanager
def _no_molecule_stress_warning():
    """metatomic-ase computes a stress with the energy of a molecule too (its
    ``do_gradients_with_energy``), dividing by a zero cell volume; symmetrizing the
    infinite components warns "invalid value encountered in scalar add". The
    stress is never used here: that one warning is hidden, no other."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore",
            message="invalid value encountered in scalar add",
            category=RuntimeWarning,
        )
        yield
