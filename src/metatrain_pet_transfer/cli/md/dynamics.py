"""Many small molecules in one Langevin run: one model call per step for all.

ASE integrates one structure per calculator call; a check of 26 molecules at two
temperatures would make 52 times more model calls than needed. TorchSim batches
structures (``metatomic-torchsim``), but it is not installable next to metatrain
2026.4 here (its ``torch-sim-atomistic`` has no matching wheel). This module
integrates every structure of the check together, in ASE's units (Å, eV, amu, ASE
time): each step evaluates the exported model once, on the list of systems, as
``metatomic_ase.MetatomicCalculator`` evaluates it on one (same neighbour lists from
vesin, forces as minus the gradient of the energy).

The integrator is BAOAB Langevin (Leimkuhler & Matthews), the splitting used by
``ase.md.langevinbaoab``; ``friction=0`` gives velocity Verlet (NVE).
"""

from dataclasses import dataclass
from typing import List, Optional

import numpy as np
import torch
from ase import units


@dataclass
class Batch:
    """The structures of one run, concatenated atom by atom (float64)."""

    types: List[torch.Tensor]
    positions: torch.Tensor  # (n_atoms, 3), Å
    velocities: torch.Tensor  # (n_atoms, 3), Å / ASE time
    masses: torch.Tensor  # (n_atoms, 1), amu
    temperatures: torch.Tensor  # (n_atoms, 1), K, the thermostat's per structure
    sizes: List[int]
    energies: Optional[torch.Tensor] = None  # (n_structures,), eV
    forces: Optional[torch.Tensor] = None  # (n_atoms, 3), eV/Å

    @property
    def offsets(self) -> List[int]:
        return list(np.cumsum([0] + self.sizes))

    def per_structure(self, tensor: torch.Tensor) -> List[np.ndarray]:
        o = self.offsets
        return [tensor[o[i] : o[i + 1]].numpy() for i in range(len(self.sizes))]

    def kinetic(self) -> np.ndarray:
        """Kinetic energy per structure, eV."""
        per_atom = 0.5 * (self.masses * self.velocities**2).sum(dim=1)
        return np.array([part.sum() for part in self.per_structure(per_atom)])

    def temperature(self) -> np.ndarray:
        """Instantaneous temperature per structure, K, over 3N degrees of freedom
        (as ``Atoms.get_temperature``: the thermostat acts on all of them)."""
        dof = 3 * np.array(self.sizes)
        return 2 * self.kinetic() / (dof * units.kB)


def batch_of(frames, temperatures: List[float], seed: int) -> Batch:
    """``frames`` with Maxwell-Boltzmann velocities at their temperatures (no
    net translation or rotation, rescaled to the exact temperature, as ASE's
    ``MaxwellBoltzmannDistribution``, ``Stationary`` and ``ZeroRotation`` do)."""
    from ase.md.velocitydistribution import (
        MaxwellBoltzmannDistribution,
        Stationary,
        ZeroRotation,
    )

    rng = np.random.default_rng(seed)
    positions, velocities, masses, thermostat, types = [], [], [], [], []
    for atoms, temperature in zip(frames, temperatures, strict=True):
        atoms = atoms.copy()
        MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=rng)
        Stationary(atoms)
        ZeroRotation(atoms)
        current = atoms.get_temperature()
        if current > 0:  # what removing the drift took: back to the temperature
            atoms.set_velocities(
                atoms.get_velocities() * np.sqrt(temperature / current)
            )
        positions.append(atoms.positions)
        velocities.append(atoms.get_velocities())
        masses.append(atoms.get_masses()[:, None])
        thermostat.append(np.full((len(atoms), 1), temperature))
        types.append(torch.tensor(atoms.numbers, dtype=torch.int32))
    return Batch(
        types=types,
        positions=torch.tensor(np.concatenate(positions)),
        velocities=torch.tensor(np.concatenate(velocities)),
        masses=torch.tensor(np.concatenate(masses)),
        temperatures=torch.tensor(np.concatenate(thermostat)),
        sizes=[len(atoms) for atoms in frames],
    )


class BatchedModel:
    """An exported model evaluated on all structures at once: energies and forces
    of one energy output (``energy`` or ``energy/<variant>``)."""

    def __init__(self, path: str, output: str):
        from metatomic.torch import ModelOutput, load_atomistic_model
        from vesin.metatomic import neighbor_lists_for_model

        self.model = load_atomistic_model(path)
        capabilities = self.model.capabilities()
        self.dtype = getattr(torch, capabilities.dtype)
        self.output = output
        self.outputs = {output: ModelOutput(unit="eV")}
        self.neighbors = neighbor_lists_for_model("angstrom", self.model)

    def __call__(self, batch: Batch) -> None:
        from metatomic.torch import ModelEvaluationOptions, System

        positions = batch.positions.to(self.dtype).requires_grad_(True)
        systems = []
        offsets = batch.offsets
        for i, types in enumerate(batch.types):
            systems.append(
                System(
                    types=types,
                    positions=positions[offsets[i] : offsets[i + 1]],
                    cell=torch.zeros((3, 3), dtype=self.dtype),
                    pbc=torch.zeros(3, dtype=torch.bool),
                )
            )
        for calculator in self.neighbors:
            calculator.add_neighbor_list(systems)
        options = ModelEvaluationOptions(length_unit="angstrom", outputs=self.outputs)
        result = self.model(systems, options, check_consistency=False)
        energies = result[self.output].block().values.reshape(-1)
        (gradient,) = torch.autograd.grad(energies.sum(), positions)
        batch.energies = energies.detach().to(torch.float64)
        batch.forces = -gradient.detach().to(torch.float64)


def step(batch: Batch, model: BatchedModel, timestep_fs: float, friction: float):
    """One BAOAB step (``friction`` per fs; 0: velocity Verlet), every structure
    at once (:mod:`.check` freezes those whose forces stopped being finite)."""
    dt = timestep_fs * units.fs
    inverse_mass = 1.0 / batch.masses
    batch.velocities += 0.5 * dt * batch.forces * inverse_mass
    batch.positions += 0.5 * dt * batch.velocities
    if friction > 0:
        c1 = np.exp(-friction * timestep_fs)
        sigma = torch.sqrt(units.kB * batch.temperatures * inverse_mass)
        noise = torch.randn(batch.velocities.shape, dtype=torch.float64)
        batch.velocities = c1 * batch.velocities + np.sqrt(1 - c1**2) * sigma * noise
    batch.positions += 0.5 * dt * batch.velocities
    model(batch)
    batch.velocities += 0.5 * dt * batch.forces * inverse_mass
