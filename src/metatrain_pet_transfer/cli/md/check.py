"""The MD stability check: short NVT runs of many structures, then NVE, judged.

Each structure runs at each temperature (one Langevin run for all of them,
:mod:`.dynamics`), then continues without the thermostat (``nve_fs``) to measure
how well the model conserves energy. Per structure and temperature:

- bonds lost or formed, atoms that left (:mod:`.topology`), each lasting >= 150 fs;
- the temperature reached (mean over the second half of the NVT part);
- the largest force met (a model that blows up shows it first here);
- the total-energy drift of the NVE part (slope, meV/atom/ps) and its largest
  deviation from the start of that part;
- ``exploded``: the forces or positions stopped being finite (the structure is then
  frozen, the others go on).
"""

import math
import time
from dataclasses import dataclass
from typing import List, Optional

import numpy as np
import torch

from .dynamics import BatchedModel, batch_of, step
from .topology import topology_changes


#: forces above this (eV/Å) count as a blow-up: the structure is frozen
EXPLODED_FORCE = 1.0e3


@dataclass
class Settings:
    temperatures: List[float]
    time_fs: float = 500.0
    timestep_fs: float = 0.5
    friction: float = 0.01  # per fs, ASE Langevin's usual value
    nve_fs: float = 100.0
    min_change_fs: float = 150.0
    record_fs: float = 5.0
    seed: int = 0


@dataclass
class StructureResult:
    name: str
    n_atoms: int
    temperature: float
    reached: float
    """mean temperature over the second half of the NVT part, K"""
    max_force: float
    """largest force component norm met, eV/Å"""
    lost: List[str]
    formed: List[str]
    left: List[str]
    drift: float
    """NVE total-energy slope, meV/atom/ps"""
    deviation: float
    """NVE largest |E_total - E_total(start)|, meV/atom"""
    exploded_fs: Optional[float] = None

    @property
    def intact(self) -> bool:
        return self.exploded_fs is None and not (self.lost or self.formed or self.left)


@dataclass
class CheckResult:
    model: str
    output: str
    settings: Settings
    structures: List[StructureResult]
    wall_s: float

    def intact(self, temperature: float) -> str:
        rows = [r for r in self.structures if r.temperature == temperature]
        return f"{sum(r.intact for r in rows)}/{len(rows)}"


def run_check(model_path: str, output: str, frames, names, settings: Settings):
    """The check of ``frames`` (ASE Atoms, molecules) with ``model_path``."""
    started = time.time()
    torch.manual_seed(settings.seed)
    temperatures = [t for t in settings.temperatures for _ in frames]
    structures = [atoms for _ in settings.temperatures for atoms in frames]
    labels = [name for _ in settings.temperatures for name in names]
    batch = batch_of(structures, temperatures, settings.seed)
    model = BatchedModel(model_path, output)
    model(batch)
    n = len(structures)
    every = max(1, int(round(settings.record_fs / settings.timestep_fs)))
    steps = int(round(settings.time_fs / settings.timestep_fs))
    trajectories = [[p.copy()] for p in batch.per_structure(batch.positions)]
    max_force = np.zeros(n)
    exploded: List[Optional[float]] = [None] * n
    kinetic_temperatures = []

    def check_finite(step_index):
        forces = batch.per_structure(batch.forces)
        positions = batch.per_structure(batch.positions)
        offsets = batch.offsets
        for i in range(n):
            if exploded[i] is not None:
                continue
            norm = np.linalg.norm(forces[i], axis=1).max()
            if not np.isfinite(norm) or not np.isfinite(positions[i]).all():
                norm = math.inf
            if norm > EXPLODED_FORCE:
                exploded[i] = step_index * settings.timestep_fs
            else:
                max_force[i] = max(max_force[i], norm)
        for i in range(n):  # frozen where they were last recorded
            if exploded[i] is not None:
                o = slice(offsets[i], offsets[i + 1])
                batch.positions[o] = torch.tensor(trajectories[i][-1])
                batch.velocities[o] = 0.0
                batch.forces[o] = 0.0

    for k in range(1, steps + 1):
        step(batch, model, settings.timestep_fs, settings.friction)
        check_finite(k)
        if k % every == 0:
            for i, p in enumerate(batch.per_structure(batch.positions)):
                trajectories[i].append(p.copy())
            if k > steps // 2:
                kinetic_temperatures.append(batch.temperature())
    totals = []
    nve_steps = int(round(settings.nve_fs / settings.timestep_fs))
    for k in range(nve_steps + 1):
        if k > 0:
            step(batch, model, settings.timestep_fs, friction=0.0)
            check_finite(steps + k)
        totals.append(batch.kinetic() + batch.energies.numpy())
    totals = np.array(totals)
    time_ps = np.arange(len(totals)) * settings.timestep_fs / 1000
    reached = (
        np.mean(kinetic_temperatures, axis=0) if kinetic_temperatures else np.zeros(n)
    )
    results = []
    for i, atoms in enumerate(structures):
        changes = topology_changes(
            atoms.get_chemical_symbols(),
            atoms.numbers,
            np.array(trajectories[i]),
            frame_fs=every * settings.timestep_fs,
            min_fs=settings.min_change_fs,
        )
        size = len(atoms)
        slope = np.polyfit(time_ps, totals[:, i], 1)[0] if len(totals) > 1 else 0.0
        results.append(
            StructureResult(
                name=labels[i],
                n_atoms=size,
                temperature=temperatures[i],
                reached=float(reached[i]),
                max_force=float(max_force[i]),
                lost=changes.lost,
                formed=changes.formed,
                left=changes.left,
                drift=float(1000 * slope / size),
                deviation=float(
                    1000 * np.abs(totals[:, i] - totals[0, i]).max() / size
                ),
                exploded_fs=exploded[i],
            )
        )
    return CheckResult(model_path, output, settings, results, time.time() - started)
