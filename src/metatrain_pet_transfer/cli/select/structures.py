"""The pool, the excluded structures and the output file of ``mtt-transfer select``.

The selection must never see a label: :func:`geometry_only` gives the model fresh
``Atoms`` holding only atomic numbers, positions, cell and periodicity, so energies,
forces or any other entry of the input (in ``info``, ``arrays`` or a calculator)
cannot reach it. The chosen structures are written from the *original* objects, so
every ``info``/``arrays`` entry and calculator result of the input is kept and a
user can match them back.

The output is written to a temporary file next to it and linked into place only if
no file of that name exists by then: an existing file is never overwritten, and an
interrupted run leaves no half-written output.
"""

import os
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np


class SelectionError(ValueError):
    """Bad input to ``mtt-transfer select``, with the file or option at fault."""


def read_structures(path: Path, what: str) -> list:
    """Every structure of an ASE-readable file.

    :param what: how the file is called in error messages (``pool``, ``--exclude``)
    """
    import ase.io

    if not path.is_file():
        raise SelectionError(f"{what} file '{path}' does not exist")
    try:
        frames = ase.io.read(path, ":")
    except Exception as error:  # noqa: BLE001 (ASE raises many kinds)
        raise SelectionError(
            f"{what} file '{path}' could not be read by ASE: {error}"
        ) from error
    if not isinstance(frames, list):
        frames = [frames]
    if not frames:
        raise SelectionError(f"{what} file '{path}' holds no structure")
    return frames


def label_entries(frames: Sequence) -> List[str]:
    """Names of what the input holds besides geometry (labels and tags), as a
    reminder in the printout that none of it was used."""
    names = set()
    for atoms in frames:
        names.update(atoms.info)
        names.update(k for k in atoms.arrays if k not in ("numbers", "positions"))
        if atoms.calc is not None:
            names.update(getattr(atoms.calc, "results", {}))
    return sorted(names)


def geometry_only(frames: Sequence) -> list:
    """Copies of ``frames`` with nothing but numbers, positions, cell and pbc."""
    from ase import Atoms

    return [
        Atoms(
            numbers=atoms.numbers.copy(),
            positions=atoms.positions.copy(),
            cell=atoms.cell.array.copy(),
            pbc=atoms.pbc.copy(),
        )
        for atoms in frames
    ]


def geometry_key(atoms, decimals: int = 5) -> Tuple:
    """What identifies a structure across files: its atomic numbers and its
    positions rounded to 1e-5 Å (extended XYZ keeps 8 decimals)."""
    positions = np.round(atoms.positions, decimals) + 0.0  # no negative zeros
    return (tuple(int(z) for z in atoms.numbers), positions.tobytes())


def match(pool: Sequence, others: Sequence) -> Dict[int, int]:
    """``{index in others: index in pool}`` for the structures of ``others`` that
    are also in ``pool`` (same atoms at the same positions)."""
    where = {}
    for index, atoms in enumerate(pool):
        where.setdefault(geometry_key(atoms), index)
    found = {}
    for index, atoms in enumerate(others):
        position = where.get(geometry_key(atoms))
        if position is not None:
            found[index] = position
    return found


def check_output(path: Path) -> None:
    """Refuse an output that exists, or whose folder does not, before any work."""
    if path.exists():
        raise SelectionError(
            f"output file '{path}' already exists: refusing to overwrite it "
            "(remove it or choose another -o)"
        )
    if not path.parent.is_dir():
        raise SelectionError(f"the folder of the output file '{path}' does not exist")


def write_new_file(path: Path, frames: Sequence) -> None:
    """Write ``frames`` as extended XYZ to ``path``, which must not exist.

    :raises SelectionError: if ``path`` appeared meanwhile (it is left untouched)
    """
    import ase.io

    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        ase.io.write(temporary, list(frames), format="extxyz")
        try:
            os.link(temporary, path)  # fails if path exists: never overwrites
        except FileExistsError as error:
            raise SelectionError(
                f"output file '{path}' appeared while selecting: refusing to "
                "overwrite it"
            ) from error
    finally:
        temporary.unlink(missing_ok=True)
