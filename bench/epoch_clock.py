"""Time one ``mtt train`` subprocess by the epoch lines of its log, as they arrive.

Shared by ``overhead.py``, ``keep_cost.py``, ``distributed_scaling.py`` and
``foundation_pet.py``: they compare seconds per epoch of runs that differ in one
thing (plugin vs native, one vs two processes), so they must measure them the same
way.
"""

import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Sequence


@dataclass
class Timing:
    """One training: wall seconds, peak RSS of the child (MiB), seconds per epoch;
    when asked, the seconds (from the start) at which the first line holding each
    mark arrived, and every line of the output."""

    wall: float
    rss: float
    epoch: float
    marks: Dict[str, float] = field(default_factory=dict)
    lines: List[str] = field(default_factory=list)


def timed_training(
    command: List[str],
    workdir: Path,
    env: Dict[str, str],
    marks: Sequence[str] = (),
    min_epochs: int = 3,
) -> Timing:
    """Run ``command`` (an ``mtt train``, possibly under a launcher) in ``workdir``.

    The time per epoch runs from the end of epoch 0 (warm-up included) to the end
    of the last epoch, divided by the epochs in between (``nan`` with one epoch).
    Raises with the log's tail when the training fails or logs fewer than
    ``min_epochs`` epochs.
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
    epoch_lines, lines, seen = [], [], {}
    for line in process.stdout:
        now = time.perf_counter()
        if "Epoch:" in line:
            epoch_lines.append(now)
        for mark in marks:
            if mark in line and mark not in seen:
                seen[mark] = now - begin
        lines.append(line)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - begin
    if status != 0:
        raise RuntimeError(f"training failed in {workdir}: {''.join(lines[-40:])}")
    if len(epoch_lines) < min_epochs:
        raise RuntimeError(
            f"{workdir}: fewer than {min_epochs} epoch lines, use more epochs"
        )
    epoch = float("nan")
    if len(epoch_lines) > 1:
        epoch = (epoch_lines[-1] - epoch_lines[0]) / (len(epoch_lines) - 1)
    return Timing(wall, usage.ru_maxrss / 1024, epoch, seen, lines)
