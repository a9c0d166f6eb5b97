"""``mtt train`` as a subprocess, its log condensed to what a newcomer needs.

The demo runs the same command a user would type; the log is streamed one line per
epoch (validation MAEs only), zero-shot and alignment lines and warnings are kept,
and a failure raises with the end of the log.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import List, Optional


def _mtt_command() -> List[str]:
    """``mtt`` of this environment (the launcher where it is not installed)."""
    script = Path(sys.executable).parent / "mtt"
    if script.is_file():
        return [str(script)]
    found = shutil.which("mtt")
    if found:
        return [found]
    return [sys.executable, "-m", "metatrain_pet_transfer"]


_LOG_PREFIX = re.compile(r"^\[[^\]]*\]\[([A-Z]+)\] - ")
_PYTHON_DEPRECATION = re.compile(r"(Deprecation|Future)Warning")
_SHOWN = (
    "Zero-shot",
    "Alignment:",
    "Evaluating",
    "Starting training",
    "Training finished",
    "Running final evaluation",
)


def _maes(text: str) -> str:
    """Only the MAE items of ``a: 1 | b MAE: 2 | ...``, forces named as such."""
    kept = [p.strip() for p in text.split(" | ") if "MAE" in p]
    kept = [re.sub(r"(\S+)_positions_gradients", r"forces[\1]", p) for p in kept]
    return " | ".join(kept)


def _condense(message: str) -> Optional[str]:
    """The line of the training log to show, shortened; ``None`` to hide it."""
    if message.startswith("Epoch:"):
        parts = message.split(" | ")
        epoch = parts[0].replace("Epoch:", "epoch").strip()
        kept = [p for p in parts if p.startswith("validation") and "MAE" in p]
        kept = [p.replace("validation ", "val ") for p in kept]
        return " | ".join([epoch, *kept])
    if message.startswith("Zero-shot"):
        head, _, metrics = message.partition(": ")
        return f"{head}: {_maes(metrics)}"
    if any(word in message for word in _SHOWN):
        return message
    if re.search(r"\bMAE\b", message) and " | " in message:
        return _maes(message)
    return None


def run_mtt_train(cwd: Path, args: List[str], verbose: bool = False) -> None:
    """Run ``mtt train`` in ``cwd``, streaming its log lines (condensed unless
    ``verbose``); raise ``RuntimeError`` with the log's tail if it fails."""
    command = [*_mtt_command(), "train", *args]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    # molecules of a few atoms give OpenMP threads tiny tasks; on a busy machine
    # libgomp's default spin-waiting then makes 2 threads several times slower
    # than 1 (measured on 2 shared cores: 20 s instead of 6 s for 10 epochs)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    print(f"  $ cd {cwd} && mtt train {' '.join(args)}", flush=True)
    tail: List[str] = []
    with subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    ) as process:
        for line in process.stdout:
            line = line.rstrip("\n")
            tail = (tail + [line])[-40:]
            match = _LOG_PREFIX.match(line)
            level = match.group(1) if match else ""
            message = line[match.end() :] if match else line
            if verbose:
                shown = line
            elif _PYTHON_DEPRECATION.search(message):
                # torch.jit deprecations that metatrain logs: noise for a newcomer
                shown = None
            elif level in ("WARNING", "ERROR"):
                shown = f"{level}: {message}"
            elif match:
                shown = _condense(message)
            else:
                shown = None
            if shown:
                print(f"    {shown}", flush=True)
    if process.returncode != 0:
        raise RuntimeError(
            f"`mtt train {' '.join(args)}` failed in {cwd} (exit code "
            f"{process.returncode}); the end of its output:\n" + "\n".join(tail)
        )
