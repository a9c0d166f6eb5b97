"""How a per-structure property is read out of PET's per-atom predictions.

PET predicts every target atom by atom and sums over the atoms of a structure. That
is right for extensive properties (energies) and wrong, or weak, for two common
kinds of new property:

- ``mean``: intensive targets (a HOMO-LUMO gap, a mean per-atom quantity) are the
  *average* of the per-atom contributions, so a model trained on small molecules
  does not grow its prediction with the size of the molecule;
- ``charges``: a dipole moment built from per-atom charges, ``mu = sum_i q_i (r_i -
  r_mean)`` with the charges shifted to sum to zero (a neutral molecule). It rotates
  with the molecule as far as the charges are invariant, and it does not depend on
  the origin. PET's own Cartesian head is a linear map of per-atom features: from a
  backbone pre-trained on energies it gives near-invariant vectors, which cannot
  rotate (docs/properties.md measures both). The charge of atom ``i`` is the mean
  of the three channels PET predicts for it.

``sum`` is PET's own readout. The readouts are linear in the per-atom predictions,
so PET's scaler, which multiplies them, commutes with them.

:func:`apply_readout` is TorchScript-compatible: :class:`ReadoutModel` wraps the
exported model with it, and :class:`~metatrain_pet_transfer.model.PETTransfer`
applies it in training and in ``mtt eval`` on a checkpoint.
"""

from typing import Any, Dict, List, Optional

import torch
from metatensor.torch import Labels, TensorBlock, TensorMap
from metatomic.torch import ModelOutput, System

from .datasets import systems_of


#: checkpoint key of the model's readouts (``{target: readout}``, ``sum`` left out)
READOUTS_KEY = "pet_transfer_readouts"


def apply_readout(kind: str, atomic: TensorMap, systems: List[System]) -> TensorMap:
    """The per-structure prediction of ``kind`` from PET's per-atom one.

    :param kind: ``mean`` or ``charges``
    :param atomic: per-atom predictions, one block, samples ``(system, atom)``
    :param systems: the systems the samples index
    """
    block = atomic.block()
    structure = block.samples.column("system")
    atom = block.samples.column("atom")
    n_structures = len(systems)
    device = block.values.device
    counts = torch.zeros(n_structures, dtype=block.values.dtype, device=device)
    counts.index_add_(0, structure, torch.ones_like(structure, dtype=counts.dtype))
    if kind == "mean":
        values = block.values.reshape(block.values.shape[0], -1)
        sums = torch.zeros(
            [n_structures, values.shape[1]], dtype=values.dtype, device=device
        )
        sums.index_add_(0, structure, values)
        shape = [n_structures]
        for size in block.values.shape[1:]:
            shape.append(size)
        result = (sums / counts.clamp(min=1.0).unsqueeze(1)).reshape(shape)
    elif kind == "charges":
        # one charge per atom: the mean of its three Cartesian channels
        charges = block.values.mean(dim=1)  # [n_atoms, properties]
        total = torch.zeros(
            [n_structures, charges.shape[1]], dtype=charges.dtype, device=device
        )
        total.index_add_(0, structure, charges)
        mean_charge = total / counts.clamp(min=1.0).unsqueeze(1)
        charges = charges - mean_charge[structure]  # each structure sums to zero
        positions = atom_positions(systems, structure, atom).to(charges.dtype)
        centers = torch.zeros([n_structures, 3], dtype=charges.dtype, device=device)
        centers.index_add_(0, structure, positions)
        centers = centers / counts.clamp(min=1.0).unsqueeze(1)
        relative = positions - centers[structure]  # [n_atoms, 3]
        dipoles = torch.zeros(
            [n_structures, 3, charges.shape[1]], dtype=charges.dtype, device=device
        )
        dipoles.index_add_(0, structure, relative.unsqueeze(2) * charges.unsqueeze(1))
        result = dipoles
    else:
        raise ValueError(f"unknown readout '{kind}'")
    samples = Labels(
        ["system"], torch.arange(n_structures, device=device).reshape(-1, 1)
    )
    return TensorMap(
        atomic.keys,
        [
            TensorBlock(
                values=result,
                samples=samples,
                components=block.components,
                properties=block.properties,
            )
        ],
    )


def atom_positions(
    systems: List[System], structure: torch.Tensor, atom: torch.Tensor
) -> torch.Tensor:
    """Positions of the samples ``(system, atom)``, whatever their order."""
    lengths = [len(system) for system in systems]
    starts = torch.zeros(len(systems), dtype=torch.long, device=structure.device)
    if len(lengths) > 1:
        starts[1:] = torch.cumsum(
            torch.tensor(lengths[:-1], device=structure.device), dim=0
        )
    positions = torch.cat([system.positions for system in systems])
    return positions[starts[structure] + atom]


def per_atom_requests(
    outputs: Dict[str, ModelOutput], readouts: Dict[str, str]
) -> Dict[str, ModelOutput]:
    """``outputs`` with the targets read out by ``readouts`` asked per atom."""
    requested: Dict[str, ModelOutput] = {}
    for name, output in outputs.items():
        if name in readouts and output.sample_kind != "atom":
            requested[name] = ModelOutput(
                unit=output.unit,
                sample_kind="atom",
                explicit_gradients=output.explicit_gradients,
                description=output.description,
            )
        else:
            requested[name] = output
    return requested


def finish_readouts(
    results: Dict[str, TensorMap],
    outputs: Dict[str, ModelOutput],
    readouts: Dict[str, str],
    systems: List[System],
) -> Dict[str, TensorMap]:
    """Replace the per-atom predictions of the read-out targets by the readout."""
    for name, kind in readouts.items():
        if name in results and name in outputs:
            if outputs[name].sample_kind != "atom":
                results[name] = apply_readout(kind, results[name], systems)
    return results


class ReadoutModel(torch.nn.Module):
    """The exported model: PET, with the readouts applied to its predictions."""

    readouts: Dict[str, str]

    def __init__(self, model: torch.nn.Module, readouts: Dict[str, str]):
        super().__init__()
        self.model = model
        self.readouts = readouts

    def forward(
        self,
        systems: List[System],
        outputs: Dict[str, ModelOutput],
        selected_atoms: Optional[Labels] = None,
    ) -> Dict[str, TensorMap]:
        requested = per_atom_requests(outputs, self.readouts)
        results = self.model(systems, requested, selected_atoms)
        return finish_readouts(results, outputs, self.readouts, systems)


# ------------------------------------------------------------ choosing the readouts


def any_periodic(datasets) -> bool:
    """Whether a structure of ``datasets`` has a periodic direction."""
    return any(bool(system.pbc.any()) for system in systems_of(datasets))


def is_dipole_like(target) -> bool:
    """A per-structure Cartesian vector (one block, three components)."""
    return (
        target.is_cartesian
        and not target.per_atom
        and len(target.layout.block().components) == 1
        and len(target.layout.block().components[0]) == 3
    )


def choose_readouts(
    targets: Dict[str, Any],
    asked: Dict[str, str],
    new_targets: List[str],
    periodic: bool,
) -> Dict[str, str]:
    """``{target: readout}`` of the run, ``sum`` left out.

    A readout given in the options is kept (:func:`readout_problems` checks it).
    Otherwise a new per-structure Cartesian vector of non-periodic data (a dipole)
    gets ``charges``; everything else PET's ``sum``.

    :param targets: the model's targets (``TargetInfo``)
    :param asked: the ``readouts`` option
    :param new_targets: the targets the checkpoint does not have
    :param periodic: whether any structure of the data is periodic
    """
    chosen = {}
    for name, target in targets.items():
        if name in asked:
            kind = asked[name]
        elif name in new_targets and not periodic and is_dipole_like(target):
            kind = "charges"
        else:
            kind = "sum"
        if kind != "sum":
            chosen[name] = kind
    return chosen


def readout_problems(
    targets: Dict[str, Any], asked: Dict[str, str], periodic: bool
) -> List[str]:
    """What is wrong with the ``readouts`` option, one sentence per target."""
    problems = []
    for name, kind in asked.items():
        where = f"training.readouts.{name}"
        if name not in targets:
            problems.append(
                f"{where}: the run has no target '{name}' (its targets: "
                + ", ".join(sorted(targets))
                + ")"
            )
            continue
        target = targets[name]
        if kind == "sum":
            continue
        if target.per_atom:
            problems.append(
                f"{where}: '{name}' is a per-atom target; readouts apply to "
                "per-structure targets only"
            )
        elif target.quantity == "energy" or target.gradients:
            problems.append(
                f"{where}: '{name}' is an energy (or has gradients); energies are "
                "extensive and keep PET's 'sum'"
            )
        elif kind == "charges" and not is_dipole_like(target):
            problems.append(
                f"{where}: 'charges' builds a dipole, a Cartesian vector with 3 "
                f"components; '{name}' is not one (type: cartesian, rank: 1)"
            )
        elif kind == "charges" and periodic:
            problems.append(
                f"{where}: 'charges' needs molecules; the data hold periodic "
                "structures, where a dipole from charges depends on the cell's "
                "origin. Use 'sum'"
            )
        elif kind == "mean" and not (target.is_scalar or target.is_cartesian):
            problems.append(
                f"{where}: 'mean' applies to scalar and Cartesian targets only"
            )
    return problems


def with_readout_targets(hypers: Dict[str, Any], readouts: Dict[str, str]) -> dict:
    """The trainer options the readouts need.

    - the read-out targets join ``per_structure_targets``: PET divides the loss of
      other per-structure targets by the number of atoms, right for a sum, wrong
      for a mean or a dipole;
    - a ``mean`` target gets a zero ``atomic_baseline`` (unless the options set
      one): metatrain fits its composition model for a sum of atoms, and adds it
      atom by atom at evaluation, which a mean would divide by the atom count.
    """
    hypers = dict(hypers)
    present = list(hypers.get("per_structure_targets") or [])
    hypers["per_structure_targets"] = present + [
        n for n in readouts if n not in present
    ]
    baseline = hypers.get("atomic_baseline")
    if isinstance(baseline, dict) or baseline is None:
        baseline = dict(baseline or {})
        for name, kind in readouts.items():
            if kind == "mean":
                baseline.setdefault(name, 0.0)
        hypers["atomic_baseline"] = baseline
    return hypers
