"""What the pretrained PET sees in each structure: per-atom descriptors, no labels.

Selection needs, for every structure of the pool, what the pretrained model makes of
it, never what any label says. PET always offers two per-atom outputs besides its
targets: ``feature`` (node and edge features of every GNN layer, the backbone's view
of an atomic environment) and ``mtt::aux::<energy>_last_layer_features`` (the inputs
of the energy head's last linear layer, the features LLPR builds its uncertainty
on). Both come from one forward pass, without gradients.

The pass runs on the model's device (``--device``; the GPU by default when there
is one); what the selection needs comes back to the host once per batch.

The checkpoint is read with :func:`load_checkpoint_safely` (no code from the file
runs) and turned into a model by metatrain's ``model_from_checkpoint``. Structures
become metatomic systems exactly as metatrain's ASE reader makes them
(``systems_to_torch``), with the model's own neighbor lists.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import numpy as np
import torch

from ...checkpoints import CheckpointError, check_pretrained_checkpoint


@dataclass
class AtomDescriptors:
    """Per-atom descriptors of a list of structures, atoms of all structures stacked.

    ``owner[a]`` is the structure (index in the list) atom ``a`` belongs to.
    """

    backbone: np.ndarray
    """(atoms, features) PET's ``feature`` output: the backbone's environment view"""
    last_layer: np.ndarray
    """(atoms, features) the energy head's last-layer features (LLPR's)"""
    owner: np.ndarray
    """(atoms,) index of the structure of each atom"""
    types: np.ndarray
    """(atoms,) atomic number of each atom"""

    @property
    def n_structures(self) -> int:
        return int(self.owner.max()) + 1 if len(self.owner) else 0


def load_pretrained(path: Path):
    """The PET of checkpoint ``path``, in evaluation mode, and its energy target.

    :raises CheckpointError: the file is unsafe, unreadable, not a PET checkpoint, or
        has no energy target (the last-layer features are the energy head's)
    """
    from metatrain.utils.io import model_from_checkpoint

    checkpoint = check_pretrained_checkpoint(path)
    targets = checkpoint["model_data"]["dataset_info"].targets
    energies = [name for name, info in targets.items() if info.quantity == "energy"]
    if not energies:
        raise CheckpointError(
            f"checkpoint '{path}' has no energy target (targets: {sorted(targets)}); "
            "selection uses the energy head's last-layer features"
        )
    model = model_from_checkpoint(checkpoint, "export")
    return model.eval(), energies[0]


def choose_device(requested: Optional[str]):
    """The ``--device`` asked for, checked; by default the GPU when there is one.

    :raises SelectionError: for a device torch does not know or cannot use
    """
    from .structures import SelectionError

    if requested is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError as error:
        raise SelectionError(f"--device {requested}: {error}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SelectionError(f"--device {requested}: torch sees no CUDA device here")
    return device


def last_layer_output(target: str) -> str:
    """The auxiliary output holding ``target``'s last-layer features."""
    base = target[len("mtt::") :] if target.startswith("mtt::") else target
    return f"mtt::aux::{base}_last_layer_features"


def unsupported_types(model, frames) -> List[int]:
    """Atomic numbers in ``frames`` the model has never seen (PET cannot embed them)."""
    known = {int(t) for t in model.atomic_types}
    return sorted({int(z) for atoms in frames for z in atoms.numbers} - known)


def compute_descriptors(
    model,
    target: str,
    frames: Sequence,
    batch_size: int = 64,
    progress: Optional[Callable[[int], None]] = None,
) -> AtomDescriptors:
    """Run the pretrained ``model`` once over ``frames`` (ASE Atoms, labels already
    removed) and collect both per-atom descriptors.

    :param progress: called with the number of structures done after each batch
    """
    from metatomic.torch import ModelOutput, systems_to_torch
    from metatrain.utils.neighbor_lists import (
        get_requested_neighbor_lists,
        get_system_with_neighbor_lists,
    )

    parameter = next(model.parameters())
    dtype, device = parameter.dtype, parameter.device
    requests = get_requested_neighbor_lists(model)
    outputs = {
        "feature": ModelOutput(sample_kind="atom"),
        last_layer_output(target): ModelOutput(sample_kind="atom"),
    }
    backbone, last_layer, owner = [], [], []
    with torch.no_grad():
        for start in range(0, len(frames), batch_size):
            batch = list(frames[start : start + batch_size])
            systems = [
                get_system_with_neighbor_lists(system, requests)
                for system in systems_to_torch(batch, dtype=torch.float64)
            ]
            systems = [system.to(dtype=dtype, device=device) for system in systems]
            result = model(systems, outputs)
            for name, store in [
                ("feature", backbone),
                (last_layer_output(target), last_layer),
            ]:
                block = result[name].block()
                # one copy to the host per batch (the selection runs in numpy)
                store.append(block.values.detach().to("cpu", torch.float64).numpy())
            samples = result["feature"].block().samples
            owner.append(samples.column("system").cpu().numpy() + start)
            if progress is not None:
                progress(start + len(batch))
    types = np.concatenate([atoms.numbers for atoms in frames])
    owner = np.concatenate(owner)
    if len(owner) != len(types) or np.any(np.diff(owner) < 0):
        # the model must return atoms in input order for owner/types to line up
        raise RuntimeError("the model returned per-atom features out of order")
    return AtomDescriptors(
        backbone=np.concatenate(backbone),
        last_layer=np.concatenate(last_layer),
        owner=owner,
        types=types.astype(int),
    )
