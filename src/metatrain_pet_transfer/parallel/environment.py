"""Who launched this process, and the process group every rank of the run joins.

The launcher is read from the environment, as metatrain reads SLURM's: torchrun
(and anything following its convention) sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; ``srun`` sets ``SLURM_PROCID``,
``SLURM_NTASKS`` and friends, which metatrain's own ``DistributedEnvironment``
turns into the same variables. Nothing has to be set in ``options.yaml``. The
backend follows the device: NCCL on CUDA, gloo on CPU (which metatrain refuses
today). The group has a timeout, so a rank that dies or hangs makes the others
stop with an error instead of waiting forever.
"""

import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import List, Optional

import torch
import torch.distributed


logger = logging.getLogger(__name__)

#: what torchrun sets for every worker (also enough for a hand-made launch)
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistributedRun:
    """One process of a multi-process run, its process group open."""

    launcher: str  # "torchrun" or "slurm"
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str  # "gloo" or "nccl"

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def detect_launcher() -> Optional[str]:
    """``"torchrun"``, ``"slurm"`` or ``None`` (a single process).

    torchrun wins over SLURM: inside an allocation, ``srun torchrun ...`` starts one
    torchrun per node, whose workers all see ``SLURM_PROCID`` of their node but
    their own ``RANK``. Under torchrun even one worker counts (``--nproc_per_node=1``
    samples like any other world size); under SLURM only more than one task, as in
    metatrain.
    """
    if all(name in os.environ for name in TORCHRUN_VARIABLES):
        return "torchrun"
    if (
        "SLURM_JOB_ID" in os.environ
        and "SLURM_PROCID" in os.environ
        and int(os.environ.get("SLURM_NTASKS", "1")) > 1
    ):
        return "slurm"
    return None


def start_distributed_run(
    hypers: dict, devices: List[torch.device]
) -> Optional[DistributedRun]:
    """Join the run's process group, or return ``None`` for a single process.

    :param hypers: the trainer hypers (``distributed``, ``distributed_port``,
        ``distributed_timeout``)
    :param devices: the devices metatrain picked for the run (``device:`` option)
    :raises ValueError: if ``training.distributed`` contradicts the launcher
    """
    launcher = detect_launcher()
    requested = hypers.get("distributed")
    if requested is True and launcher is None:
        raise ValueError(
            "training.distributed is true, but this process was started neither by "
            "torchrun nor by srun with several tasks: launch it with "
            "`torchrun --nproc_per_node=K $(which mtt) train options.yaml` or "
            "`srun mtt train options.yaml`, or remove training.distributed"
        )
    if launcher is None:
        return None
    if requested is False:
        raise ValueError(
            f"training.distributed is false, but {launcher} started this process as "
            "one of several: every process would train alone and write the same "
            "files. Launch one process, or remove training.distributed"
        )
    if len(devices) > 1:
        raise ValueError(
            "several processes with device 'multi-gpu': use `device: cuda`; each "
            "process takes the GPU of its local rank"
        )
    if launcher == "slurm":
        from metatrain.utils.distributed.slurm import DistributedEnvironment

        # metatrain's own translation: MASTER_ADDR is the first node of the job
        DistributedEnvironment(hypers["distributed_port"])

    rank = int(os.environ["RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    if devices[0].type == "cuda":
        # as metatrain: works whether each rank sees all GPUs of the node or one
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    timeout = timedelta(seconds=hypers.get("distributed_timeout", 1800))
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(
            backend=backend,
            timeout=timeout,
            device_id=device if backend == "nccl" else None,
        )
    if torch.distributed.get_world_size() != world_size:
        raise RuntimeError(
            f"the process group has {torch.distributed.get_world_size()} processes, "
            f"{launcher} announced {world_size}"
        )
    logger.info(
        f"Process {rank} of {world_size} ({launcher}, {backend} on {device}); "
        f"collectives time out after {timeout.total_seconds():.0f} s"
    )
    return DistributedRun(launcher, rank, world_size, local_rank, device, backend)
