"""Time one ``mtt train`` subprocess by the epoch lines of its log, as they arrive.

Shared by ``overhead.py`` and ``distributed_scaling.py``: both compare seconds per
epoch of runs that differ in one thing (plugin vs native, one vs two processes), so
both must measure them the same way.
"""

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List


@dataclass
class Timing:
    """One training: wall seconds, peak RSS of the child (MiB), seconds per epoch."""

    wall: float
    rss: float
    epoch: float


def timed_training(command: List[str], workdir: Path, env: Dict[str, str]) -> Timing:
    """Run ``command`` (an ``mtt train``, possibly under a launcher) in ``workdir``.

    The time per epoch runs from the end of epoch 0 (warm-up included) to the end
    of the last epoch, divided by the epochs in between. Raises with the log's tail
    when the training fails or logs fewer than 3 epochs.
    """
    begin = time.perf_counter()
    process = subprocess.Popen(
        command,
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    epoch_lines, tail = [], []
    for line in process.stdout:
        if "Epoch:" in line:
            epoch_lines.append(time.perf_counter())
        tail = (tail + [line])[-40:]
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - begin
    if status != 0:
        raise RuntimeError(f"training failed in {workdir}: {''.join(tail)}")
    if len(epoch_lines) < 3:
        raise RuntimeError(f"{workdir}: fewer than 3 epoch lines, use more epochs")
    epoch = (epoch_lines[-1] - epoch_lines[0]) / (len(epoch_lines) - 1)
    return Timing(wall, usage.ru_maxrss / 1024, epoch)
