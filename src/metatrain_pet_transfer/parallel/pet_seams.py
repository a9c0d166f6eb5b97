"""Hand an open process group to metatrain's PET training loop.

PET's trainer already has a complete distributed branch (``is_distributed``): a
``DistributedSampler`` per dataset, distributed composition and scaler fits, the
model wrapped in DDP, losses and metrics all-reduced, checkpoints written by rank
0, the group destroyed at the end. It enters that branch only under SLURM, and
opens an NCCL group on CUDA itself. :func:`distributed_pet_training` reuses the
branch unchanged by substituting, for the duration of one ``train`` call, the
three names of ``metatrain.pet.trainer`` that decide it: ``resolve_distributed``
(yes, this run is distributed), ``initialize_slurm_nccl_process_group`` (here is
the group already open, on this device) and ``DistributedDataParallel`` (no
``device_ids`` for a CPU module, which DDP requires). Nothing is copied from the
loop, and the names are restored afterwards.

Frozen parameters (``finetune.method: heads`` and ``lora``) need nothing special:
DDP only synchronises parameters with ``requires_grad``, and PET adds
``0 * sum(trainable parameters)`` to every loss so each of them gets a gradient.
"""

from contextlib import contextmanager
from typing import Optional

from metatrain.utils.distributed.distributed_data_parallel import (
    DistributedDataParallel,
)

from .environment import DistributedRun


def ddp_class(run: DistributedRun):
    """metatrain's DDP wrapper (it forwards ``supported_outputs``), placed on the
    run's device: ``device_ids`` only for a CUDA module, as DDP requires."""

    class RunDistributedDataParallel(DistributedDataParallel):
        def __init__(self, module, device_ids=None, **kwargs):
            if run.device.type != "cuda":
                device_ids = None
            super().__init__(module, device_ids=device_ids, **kwargs)

    return RunDistributedDataParallel


@contextmanager
def distributed_pet_training(run: Optional[DistributedRun]):
    """Within this block, ``metatrain.pet.Trainer.train`` trains on ``run``'s
    process group (a no-op when ``run`` is ``None``)."""
    if run is None:
        yield
        return
    import metatrain.pet.trainer as pet_trainer

    replacements = {
        "resolve_distributed": lambda distributed: True,
        "initialize_slurm_nccl_process_group": lambda port: (
            run.device,
            run.world_size,
            run.rank,
        ),
        "DistributedDataParallel": ddp_class(run),
    }
    saved = {name: getattr(pet_trainer, name) for name in replacements}
    for name, value in replacements.items():
        setattr(pet_trainer, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(pet_trainer, name, value)
