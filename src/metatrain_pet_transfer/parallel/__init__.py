"""Several processes for one run: torchrun and SLURM, gloo on CPU, NCCL on CUDA.

metatrain 2026.4 trains PET on several processes only under SLURM, with NCCL on
CUDA. This package makes ``pet_transfer`` run on torch.distributed wherever it is
launched: ``environment`` reads the launcher's variables and opens the process
group (with a timeout, so a dead rank cannot hang the others), ``rank_zero`` runs
the plugin's own passes (input checks, alignment) once on rank 0 and gives every
rank the same result or the same error, and ``pet_seams`` hands the open process
group to metatrain's PET training loop, which shards the data, wraps the model in
DDP and writes checkpoints on rank 0 only. No communication layer of its own:
everything goes through ``torch.distributed``.
"""

from .environment import DistributedRun, start_distributed_run
from .pet_seams import distributed_pet_training
from .rank_zero import leave_process_group, on_rank_zero


__all__ = [
    "DistributedRun",
    "distributed_pet_training",
    "leave_process_group",
    "on_rank_zero",
    "start_distributed_run",
]
