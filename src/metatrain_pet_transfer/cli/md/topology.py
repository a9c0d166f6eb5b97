"""What a chemist looks for in a trajectory: bonds broken or formed, atoms gone.

A bond is a pair closer than ``BOND_FACTOR`` times the sum of their covalent radii
(ASE's ``covalent_radii``, the rule of ``ase.neighborlist.natural_cutoffs`` with
some slack for hot vibrations). A change of the starting topology counts when it
lasts at least ``min_fs`` (150 fs by default: longer than a bond vibration, so a
stretched bond that comes back is not a broken one). An atom has left when no
other atom is within ``LEAVE_DISTANCE`` for as long.
"""

from dataclasses import dataclass
from typing import List

import numpy as np
from ase.data import covalent_radii


#: a pair is bonded below this factor times the sum of the covalent radii
BOND_FACTOR = 1.3
#: an atom with no neighbour closer than this (Å) has left the molecule
LEAVE_DISTANCE = 3.0


def bonds(numbers: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Boolean (n, n) bond matrix of one geometry."""
    radii = covalent_radii[numbers]
    distances = np.linalg.norm(positions[:, None] - positions[None], axis=-1)
    bonded = distances < BOND_FACTOR * (radii[:, None] + radii[None])
    np.fill_diagonal(bonded, False)
    return bonded


def isolated(positions: np.ndarray) -> np.ndarray:
    """Atoms with no neighbour within ``LEAVE_DISTANCE``."""
    distances = np.linalg.norm(positions[:, None] - positions[None], axis=-1)
    np.fill_diagonal(distances, np.inf)
    return distances.min(axis=1) > LEAVE_DISTANCE


def _lasting(flags: np.ndarray, frames: int) -> np.ndarray:
    """For each column of ``flags`` (time x items), whether it is true for at
    least ``frames`` consecutive rows."""
    run = np.zeros(flags.shape[1], dtype=int)
    longest = np.zeros(flags.shape[1], dtype=int)
    for row in flags:
        run = np.where(row, run + 1, 0)
        longest = np.maximum(longest, run)
    return longest >= frames


@dataclass
class TopologyChanges:
    lost: List[str]
    formed: List[str]
    left: List[str]

    @property
    def intact(self) -> bool:
        return not (self.lost or self.formed or self.left)


def topology_changes(
    symbols: List[str],
    numbers: np.ndarray,
    trajectory: np.ndarray,
    frame_fs: float,
    min_fs: float = 150.0,
) -> TopologyChanges:
    """Changes against the first geometry of ``trajectory`` (frames x atoms x 3,
    one frame every ``frame_fs``) that last at least ``min_fs``."""
    frames = max(1, int(np.ceil(min_fs / frame_fs)))
    start = bonds(numbers, trajectory[0])
    upper = np.triu_indices(len(numbers), k=1)
    matrices = np.array([bonds(numbers, x)[upper] for x in trajectory])
    lost = _lasting(start[upper][None] & ~matrices, frames)
    formed = _lasting(~start[upper][None] & matrices, frames)
    left = _lasting(np.array([isolated(x) for x in trajectory]), frames)

    def pair(k):
        i, j = upper[0][k], upper[1][k]
        return f"{symbols[i]}{i}-{symbols[j]}{j}"

    return TopologyChanges(
        lost=[pair(k) for k in np.flatnonzero(lost)],
        formed=[pair(k) for k in np.flatnonzero(formed)],
        left=[f"{symbols[i]}{i}" for i in np.flatnonzero(left)],
    )
