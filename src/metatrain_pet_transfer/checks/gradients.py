"""Forces, stress and virial that the options ask for, but the data does not hold.

metatrain's readers catch every error while reading a gradient, log "No forces found
in section ..." and go on without it: a wrong key, a key missing in a few structures,
an array of the wrong shape, or stress of a non-periodic structure all end as a
training on energies only that exits 0. Here the gradients each target asked for
(``forces`` -> ``positions``, ``stress``/``virial`` -> ``strain``) are compared with
those the dataset holds; for each one missing, the file is read again to say why.

metatrain enables ``forces: {key: forces}`` and ``stress: {key: stress}`` for every
energy target unless told otherwise. A file without any ``stress`` entry under that
default is taken as "no stress" (the case of every molecular data set; it is logged);
a default ``forces`` that the file does not hold is an error that says to write
``forces: false``: training a force field on energies alone should be a choice.
"""

import logging
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from .guard import Guard
from .labels import list_structures


logger = logging.getLogger(__name__)

#: gradient section of the options -> gradient of the target
GRADIENTS = {"forces": "positions", "stress": "strain", "virial": "strain"}


def check_requested_gradients(
    section, files: Dict[str, object], guard: Optional[Guard] = None
) -> List[str]:
    """Problems with the gradients that ``section``'s options request.

    Each requested gradient is checked on its own (:class:`.guard.Guard`): one
    whose check fails on an unforeseen input is skipped, the others are kept.

    :param section: a :class:`.run_inputs.DatasetSection` with options
    :param files: frames already read, by file name (filled here; ``None`` for a
        file ASE cannot read)
    :param guard: the guard running the rules (a new one if not given)
    :return: one message per requested gradient that the dataset does not hold
    """
    guard = guard or Guard()
    sample = section.first_sample()._asdict()
    problems = []
    for name, target in section.options.get("targets", {}).items():
        if name not in sample:
            continue
        present = set()
        for block in sample[name].blocks():
            present.update(block.gradients_list())
        for kind, parameter in GRADIENTS.items():
            request = target.get(kind)
            if not request or parameter in present:
                continue
            problem = guard.run(
                f"requested {kind}",
                _why_missing,
                section,
                name,
                target,
                kind,
                request,
                files,
            )
            if problem is not None:
                problems.append(problem)
    return problems


def _why_missing(
    section, name: str, target: dict, kind: str, request: dict, files: dict
):
    option = f"{section.option}.targets['{name}'].{kind}"
    filename, key = str(request["read_from"]), request["key"]
    is_default = (
        key == kind
        and request.get("reader") is None
        and filename == str(target["read_from"])
    )
    if filename not in files:
        files[filename] = _ase_frames(filename, request.get("reader"))
    frames = files[filename]
    if frames is None:  # not a file ASE reads: metatrain's reader could not say more
        if is_default and kind != "forces":
            return None
        return (
            f"{option}: metatrain could not read the {kind} '{key}' from "
            f"'{filename}' and would train without them. Fix the key or the file, or "
            f"write `{kind}: false`"
        )

    def holder(atoms):
        return atoms.arrays if kind == "forces" else atoms.info

    missing = [i for i, atoms in enumerate(frames) if key not in holder(atoms)]
    if len(missing) == len(frames):
        if is_default and kind != "forces":
            logger.info(
                f"'{name}' is trained without {kind}: '{filename}' has no '{key}' "
                f"entry (metatrain's default `{kind}: {{key: {kind}}}`); write "
                f"`{kind}: false` to say so"
            )
            return None
        default = (
            f" (metatrain asks for `{kind}: {{key: {kind}}}` for every energy target "
            "unless told otherwise)"
            if is_default
            else ""
        )
        where = "(n_atoms, 3) arrays" if kind == "forces" else "9-number info entries"
        return (
            f"{option}: no structure of '{filename}' has the key '{key}'{default}. "
            f"{where[0].upper()}{where[1:]} in the file: {_candidates(frames, kind)}. "
            f"Give the key with `{kind}: {{key: ...}}`, or write `{kind}: false` to "
            f"train without {kind}"
        )
    if missing:
        return (
            f"{option}: '{key}' is missing in {len(missing)} of the {len(frames)} "
            f"structures of '{filename}' ({list_structures(missing)}). Add it there "
            f"(NaN values mark a structure without {kind}), remove these structures, "
            f"or write `{kind}: false`"
        )

    for i, atoms in enumerate(frames):
        shape = np.shape(holder(atoms)[key])
        if kind == "forces" and shape != (len(atoms), 3):
            return (
                f"{option}: '{key}' in '{filename}' has shape {shape} in structure "
                f"{i} ({len(atoms)} atoms); forces must be an (n_atoms, 3) array. Is "
                f"'{key}' the forces? (n_atoms, 3) arrays in the file: "
                f"{_candidates(frames, kind)}"
            )
        if kind != "forces" and shape not in [(3, 3), (9,)]:
            return (
                f"{option}: '{key}' in '{filename}' has shape {shape} in structure "
                f"{i}; {kind} must be a 3x3 matrix or 9 numbers"
            )

    flat = [
        i
        for i, atoms in enumerate(frames)
        if (not atoms.pbc.any() or atoms.cell.volume == 0)
        and not np.all(np.isnan(np.asarray(atoms.info[key], dtype=float)))
    ]
    if flat:
        return (
            f"{option}: {kind} needs periodic structures, but {len(flat)} of the "
            f"{len(frames)} structures of '{filename}' have no periodic cell "
            f"({list_structures(flat)}). Write `{kind}: false` for molecules and "
            f"clusters, or set their '{key}' to NaN to mark them as having no {kind}"
        )
    return (
        f"{option}: metatrain could not read the {kind} '{key}' from '{filename}' "
        f"(see its warning 'No {kind} found' above) and would train without them. "
        f"Fix the file, or write `{kind}: false`"
    )


def _ase_frames(filename: str, reader: Optional[str]):
    if reader not in (None, "ase"):
        return None
    path = Path(filename)
    if path.is_dir() or path.suffix == ".zip" or not path.is_file():
        return None
    from metatrain.utils.data.readers.ase import read

    try:
        return read(filename, ":")
    except ValueError:
        return None


def _candidates(frames, kind: str) -> str:
    names = set()
    for atoms in frames:
        if kind == "forces":
            names.update(
                k
                for k, v in atoms.arrays.items()
                if k not in ("numbers", "positions") and np.shape(v) == (len(atoms), 3)
            )
        else:
            names.update(k for k, v in atoms.info.items() if np.size(v) == 9)
    return ", ".join(f"'{n}'" for n in sorted(names)) or "none"
