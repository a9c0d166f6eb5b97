"""The labels of a run, structure by structure.

metatrain reads NaN as "no label here" (its loss, metrics and scaler skip NaN values)
and lets every other number reach the loss. The rules checked before training:

- no label is infinite;
- no energy is NaN: the composition fit and the alignment use every energy;
- any other label (forces, stress, virial, other targets) of a structure is either
  complete or entirely NaN, metatrain's mark of a structure without that label (the
  stress of a molecule among crystals); partly NaN is a broken label;
- forces have one row per atom;
- stress and virial are only given for structures with a periodic direction;
- an atom with no neighbour within the model's cutoff gets an exactly zero predicted
  force: a force label on it larger than 10% of the RMS force of the set cannot be
  learned and means a broken structure (or positions in another unit than
  ``systems.length_unit``).
"""

import math
from collections import defaultdict
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from .guard import Guard


#: an isolated atom's force label above this fraction of the RMS force is an error
ISOLATED_FORCE_FRACTION = 0.1

_MAX_LISTED = 5
#: what a skipped rule gives back (``None`` is a finding)
_SKIPPED = object()


def check_labels(section, model, guard: Optional[Guard] = None) -> List[str]:
    """Problems with the labels of the datasets read with one options section.

    Each rule runs on its own (:class:`.guard.Guard`): one that fails on an
    unforeseen input is skipped, the findings of the others are kept.

    :param section: a :class:`.run_inputs.DatasetSection`
    :param model: the model after ``restart`` (its targets and cutoff)
    :param guard: the guard running the rules (a new one if not given)
    :return: one message per kind of problem and target, naming the structures
    """
    guard = guard or Guard()
    targets = model.dataset_info.targets
    cutoff = float(getattr(model, "cutoff", 0.0))
    found: Dict[Tuple[str, str, str], List[int]] = defaultdict(list)
    isolated: Dict[str, List[Tuple[int, int, int, float]]] = defaultdict(list)
    force_sum_sq: Dict[str, float] = defaultdict(float)
    force_count: Dict[str, int] = defaultdict(int)

    for dataset, k in section.structures():
        sample = guard.run("reading the structures", _read_sample, dataset, k)
        if sample is None:
            continue
        system = sample["system"]
        index = file_index(dataset, k)
        for name, tensor_map in sample.items():
            info = targets.get(name)
            if info is None:
                continue
            for block in tensor_map.blocks():
                nan_allowed = info.quantity != "energy"
                rule = guard.run(
                    "finite labels", _bad_values, block.values, nan_allowed, default=""
                )
                if rule:
                    found[(name, "values", rule)].append(index)
                for parameter in block.gradients_list():
                    values = block.gradient(parameter).values
                    label = _gradient_label(section, name, parameter)
                    rule = guard.run(
                        "finite labels", _bad_values, values, True, default=""
                    )
                    if rule:
                        found[(name, label, rule)].append(index)
                    if torch.isnan(values).all():
                        continue  # no label for this structure
                    if parameter == "strain":
                        periodic = guard.run(
                            "stress of periodic structures",
                            _is_periodic,
                            system,
                            default=True,
                        )
                        if not periodic:
                            found[(name, label, "not periodic")].append(index)
                    if parameter != "positions":
                        continue
                    norms = guard.run(
                        "force rows", _force_norms, values, system, default=_SKIPPED
                    )
                    if norms is _SKIPPED:
                        continue
                    if norms is None:
                        found[(name, label, "rows")].append(index)
                        continue
                    force_sum_sq[name] += float(np.nansum(norms**2))
                    force_count[name] += int(np.sum(~np.isnan(norms)))
                    lonely = guard.run(
                        "isolated atoms",
                        _isolated_atoms,
                        system,
                        cutoff,
                        default=np.zeros(0, dtype=int),
                    )
                    for atom in lonely:
                        if not np.isnan(norms[atom]):
                            atomic_type = int(system.types[atom])
                            isolated[name].append(
                                (index, int(atom), atomic_type, float(norms[atom]))
                            )

    problems = [
        _message(section, name, label, rule, indices)
        for (name, label, rule), indices in found.items()
    ]
    for name, atoms in isolated.items():
        rms = math.sqrt(force_sum_sq[name] / max(force_count[name], 1))
        flagged = [a for a in atoms if a[3] > ISOLATED_FORCE_FRACTION * rms]
        if flagged:
            length = model.dataset_info.length_unit
            unit = targets[name].unit if name in targets else ""
            force_unit = f" {unit}/{length}" if unit else ""
            problems.append(
                _isolated_message(
                    section,
                    name,
                    sorted(flagged),
                    rms,
                    f"{cutoff:g} {length}",
                    force_unit,
                )
            )
    return problems


def _read_sample(dataset, k: int) -> dict:
    return dataset[k]._asdict()


def _is_periodic(system) -> bool:
    return bool(system.pbc.any())


def _force_norms(values: torch.Tensor, system) -> Optional[np.ndarray]:
    """Per atom, the largest norm over the force components; ``None`` when the
    forces do not have one row per atom."""
    if values.shape[0] != len(system):
        return None
    norms = values.detach().reshape(len(system), 3, -1).norm(dim=1)
    return norms.amax(dim=-1).double().cpu().numpy()


def file_index(dataset, k: int) -> int:
    """Index in its file (0-based, as ``ase.io.read``) of structure ``k`` of a
    dataset that may be a subset of a subset of the file."""
    while isinstance(dataset, torch.utils.data.Subset):
        k = int(dataset.indices[k])
        dataset = dataset.dataset
    return k


def _bad_values(values: torch.Tensor, nan_allowed: bool) -> str:
    if torch.isinf(values).any():
        return "infinite"
    nan = torch.isnan(values)
    if nan.any() and (not nan_allowed or not nan.all()):
        return "NaN" if not nan_allowed else "partly NaN"
    return ""


def _gradient_label(section, name: str, parameter: str) -> str:
    if parameter == "positions":
        return "forces"
    if section.options is not None:
        target = section.options.get("targets", {}).get(name, {})
        for kind in ("stress", "virial"):
            if target.get(kind):
                return kind
    return "stress/virial"


def _isolated_atoms(system, cutoff: float) -> np.ndarray:
    if cutoff <= 0:
        return np.zeros(0, dtype=int)
    from vesin import NeighborList

    n_atoms = len(system)
    if n_atoms == 0:
        return np.zeros(0, dtype=int)
    periodic = system.pbc.cpu().numpy().astype(bool)
    (first,) = NeighborList(cutoff=cutoff, full_list=True).compute(
        points=system.positions.detach().cpu().double().numpy(),
        box=system.cell.detach().cpu().double().numpy(),
        periodic=periodic if periodic.any() else False,
        quantities="i",
    )
    has_neighbour = np.zeros(n_atoms, dtype=bool)
    has_neighbour[np.asarray(first, dtype=int)] = True
    return np.nonzero(~has_neighbour)[0]


def _where(section, name: str, label: str) -> str:
    if section.options is None:
        base = f"target '{name}' of the {section.option}"
    else:
        base = f"{section.option}.targets['{name}']"
    return base if label == "values" else f"{base}.{label}"


def list_structures(indices: List[int]) -> str:
    """``structures 3, 7, ... (12 more)``: the first few of ``indices``."""
    indices = sorted(set(indices))
    shown = ", ".join(str(i) for i in indices[:_MAX_LISTED])
    more = (
        f", ... ({len(indices) - _MAX_LISTED} more)"
        if len(indices) > _MAX_LISTED
        else ""
    )
    word = "structure" if len(indices) == 1 else "structures"
    return f"{word} {shown}{more}"


def _message(section, name: str, label: str, rule: str, indices: List[int]) -> str:
    where = _where(section, name, label)
    structures = f"{list_structures(indices)} of '{section.filename}'"
    if rule == "infinite":
        return f"{where}: infinite label in {structures}; fix or remove them"
    if rule == "NaN":
        return (
            f"{where}: the energy is NaN in {structures}. Every structure needs an "
            "energy (the composition and alignment fits use all of them): remove "
            "these structures, or give them an energy"
        )
    if rule == "partly NaN":
        return (
            f"{where}: the label is partly NaN in {structures}. A structure's label "
            "is either complete or entirely NaN (metatrain's mark of 'no label for "
            "this structure'): fix or remove these structures"
        )
    if rule == "rows":
        return (
            f"{where}: the forces of {structures} do not have one row per atom: "
            "the forces key must name an (n_atoms, 3) array"
        )
    assert rule == "not periodic"
    return (
        f"{where}: {label} given for {structures}, which have no periodic direction. "
        f"Write `{label.split('/')[0]}: false` for molecules and clusters, or set "
        "these structures' values to NaN to mark them as having none"
    )


def _isolated_message(
    section, name, flagged, rms: float, cutoff: str, unit: str = ""
) -> str:
    """``unit``: the force labels' declared unit (`` Hartree/angstrom``), or empty"""
    listed = "; ".join(
        f"structure {index}, atom {atom} (Z={atomic_type}): |F| = {norm:.3g}{unit}"
        for index, atom, atomic_type, norm in flagged[:_MAX_LISTED]
    )
    more = (
        f"; ... ({len(flagged) - _MAX_LISTED} more)"
        if len(flagged) > _MAX_LISTED
        else ""
    )
    return (
        f"{_where(section, name, 'forces')}: {len(flagged)} atom(s) of "
        f"'{section.filename}' have no neighbour within the model's cutoff "
        f"({cutoff}), so PET predicts exactly zero force on them, but their force "
        f"labels are large (RMS force of the set: {rms:.3g}{unit}): {listed}{more}. "
        "Check "
        "these structures (broken or unwrapped? positions in another unit than "
        "systems.length_unit?), or remove them"
    )
