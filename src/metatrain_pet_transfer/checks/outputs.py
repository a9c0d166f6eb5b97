"""No run writes over its own inputs.

``mtt train`` writes, after training, the exported model ``-o/--output`` (default
``model.pt``) and its checkpoint beside it (the same name ending in ``.ckpt``). A run
whose output names one of its inputs would destroy it: ``-o pretrained.pt`` next to
``pretrained.ckpt`` overwrites the pretrained model, ``--restart model.ckpt`` with the
default output overwrites the checkpoint it continues. :func:`check_outputs` compares
both outputs with every file the run reads (the pretrained and ``--restart``
checkpoints, every data and indices file of every split, ``atomic_baseline`` and
``fixed_scaling_weights`` checkpoints) before training.
"""

import os
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

from .command_line import MttTrainCall


def check_outputs(options: dict, call: Optional[MttTrainCall]) -> List[str]:
    """Problems if an output of ``mtt train`` is one of the run's inputs.

    :param options: the expanded options (``options_restart.yaml``)
    :param call: the ``mtt train`` command line (``None``: not run by ``mtt train``,
        the outputs are unknown and nothing is checked)
    """
    if call is None:
        return []
    inputs = list(_inputs(options))
    if call.restart_from is not None:
        inputs.append(("the --restart checkpoint", str(call.restart_from)))
    problems = []
    for output, what in [
        (call.output, "its exported model"),
        (call.checkpoint, "its final checkpoint"),
    ]:
        for name, path in inputs:
            if _same_file(output, Path(path)):
                problems.append(
                    f"-o/--output: this run would write {what} to '{output}', which "
                    f"is {name} ('{path}'): it would overwrite its own input. Give "
                    "the run another output name with -o (the checkpoint takes the "
                    "same name ending in .ckpt), e.g. -o "
                    f"{_free_name(call.output, [Path(p) for _, p in inputs])}"
                )
                break
    return problems


def _inputs(options: dict) -> Iterator[Tuple[str, str]]:
    training = options.get("architecture", {}).get("training", {})
    read_from = (training.get("finetune") or {}).get("read_from")
    if read_from:
        yield "training.finetune.read_from", str(read_from)
    for key in ["atomic_baseline", "fixed_scaling_weights"]:
        if isinstance(training.get(key), str):
            yield f"training.{key}", training[key]
    for split in ["training_set", "validation_set", "test_set"]:
        sections = options.get(split)
        if isinstance(sections, dict):
            sections = [sections]
        if not isinstance(sections, list):
            continue  # a fraction
        for i, section in enumerate(sections):
            where = split if len(sections) == 1 else f"{split}[{i}]"
            yield from _section_files(where, section)


def _section_files(where: str, section: dict) -> Iterator[Tuple[str, str]]:
    if isinstance(section.get("indices"), str):
        yield f"{where}.indices", section["indices"]
    systems = section.get("systems") or {}
    if systems.get("read_from"):
        yield f"{where}.systems.read_from", str(systems["read_from"])
    for group in ["targets", "extra_data"]:
        for name, target in (section.get(group) or {}).items():
            if not isinstance(target, dict):
                continue
            if target.get("read_from"):
                yield f"{where}.{group}['{name}'].read_from", str(target["read_from"])
            for gradient in ["forces", "stress", "virial"]:
                request = target.get(gradient)
                if isinstance(request, dict) and request.get("read_from"):
                    yield (
                        f"{where}.{group}['{name}'].{gradient}.read_from",
                        str(request["read_from"]),
                    )


def _same_file(first: Path, second: Path) -> bool:
    try:
        if first.exists() and second.exists():
            return os.path.samefile(first, second)
        return first.resolve() == second.resolve()
    except OSError:
        return False


def _free_name(output: Path, inputs: List[Path]) -> str:
    """An output name next to ``output`` that names no input nor existing file."""
    for n in range(1, 1000):
        candidate = output.with_name(f"{output.stem}-{n}.pt")
        if not candidate.exists() and not candidate.with_suffix(".ckpt").exists():
            written = [candidate, candidate.with_suffix(".ckpt")]
            if not any(_same_file(w, path) for w in written for path in inputs):
                return str(candidate)
    return "another.pt"
