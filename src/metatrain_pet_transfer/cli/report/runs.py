"""Finding the pieces of a finished ``mtt train`` run: outputs folder, options, model.

``RUN_DIR`` is either the folder where ``mtt train`` ran (its newest
``outputs/<date>/<time>/`` that logged epochs is used) or such an outputs folder.
The options are read from ``options_restart.yaml`` (else ``options.yaml``) with
metatrain's dataset expansion, so every later step sees datasets in one form. A run
continued with ``mtt train --restart`` is found back across its outputs folders
(:func:`restart_chain`).
"""

import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional


class ReportError(ValueError):
    """A run folder the report cannot use; the message names the missing piece."""


# ------------------------------------------------------------------------- the run


@dataclass
class Run:
    """The pieces of a finished ``mtt train`` run the report reads."""

    outputs: Path
    """metatrain's outputs folder (``train.csv``, ``train.log``, ...)"""
    base: Path
    """where ``mtt train`` ran: relative data paths start here"""
    options: dict
    """the run's options, datasets expanded by metatrain"""
    model: Optional[Path]
    """the exported model, if one was found"""
    choice: str = ""
    """why this outputs folder was used, when ``RUN_DIR`` held several"""

    @property
    def train_csv(self) -> Path:
        return self.outputs / "train.csv"

    @property
    def train_log(self) -> Path:
        return self.outputs / "train.log"


def _is_outputs_folder(path: Path) -> bool:
    return (path / "train.csv").is_file() or (path / "options_restart.yaml").is_file()


def logged_epochs(train_csv: Path) -> int:
    """How many epoch rows ``train.csv`` holds (0 if it is missing or empty)."""
    if not train_csv.is_file():
        return 0
    with open(train_csv, errors="replace") as file:
        rows = [line for line in file.read().splitlines() if line.strip()]
    return max(len(rows) - 2, 0)  # a header and a unit row come first


def _choose_outputs(run_dir: Path, candidates: list) -> tuple:
    """The newest outputs folder that logged epochs, and a sentence saying so.

    A restart after the last epoch (``mtt train --restart`` with nothing left to
    train) writes a newer outputs folder with an empty ``train.csv``: the report
    is about the run that trained, so such folders are passed over.
    """
    newest = candidates[-1]
    trained = [c for c in candidates if logged_epochs(c / "train.csv") > 0]
    if not trained:
        return newest, (
            f"the newest of {len(candidates)} outputs folders; none logged an epoch"
        )
    chosen = trained[-1]
    skipped = [c for c in candidates if c > chosen]
    if not skipped:
        return chosen, ""
    names = ", ".join(f"'{c.relative_to(run_dir)}'" for c in skipped)
    return chosen, (
        f"the newest outputs folder with logged epochs; newer {names} logged none "
        "(e.g. a restart with no epoch left) and "
        f"{'was' if len(skipped) == 1 else 'were'} passed over"
    )


def find_run(run_dir, model: Optional[Path] = None) -> Run:
    """Locate the outputs folder, options and exported model of a run.

    :param run_dir: the folder where ``mtt train`` ran, or its outputs folder
    :param model: the exported model to use instead of the run's own
    :raises ReportError: naming the folder and the file that is missing
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ReportError(f"run folder '{run_dir}' does not exist")
    choice = ""
    if _is_outputs_folder(run_dir):
        outputs = run_dir
        # `mtt train` writes into <where it ran>/outputs/<date>/<time>
        if outputs.parent.parent.name == "outputs":
            base = outputs.parents[2]
        else:
            base = outputs
    else:
        candidates = sorted(
            {
                p.parent
                for p in run_dir.glob("outputs/*/*/*")
                if p.name in ("train.csv", "options_restart.yaml")
            }
        )
        if not candidates:
            raise ReportError(
                f"'{run_dir}' is not a metatrain run: it has no 'train.csv' (a "
                "metatrain outputs folder) and no 'outputs/<date>/<time>/train.csv' "
                "(a folder where `mtt train` ran)"
            )
        outputs, choice = _choose_outputs(run_dir, candidates)
        base = run_dir

    options = _read_options(outputs, base)
    if model is None:
        model = _find_model(outputs, base)
    elif not Path(model).is_file():
        raise ReportError(f"model file '{model}' does not exist")
    return Run(outputs=outputs, base=base, options=options, model=model, choice=choice)


_RESTART = re.compile(r"Restarting training from '([^']+)'")


def restart_chain(outputs: Path, base: Path) -> List[Path]:
    """The outputs folders of a run across its restarts, oldest first.

    A restarted run's ``train.log`` names its checkpoint ("Restarting training
    from '...'"): an epoch checkpoint lies in the outputs folder of the part it
    continues; a final checkpoint (``-o``, beside the options) names that folder in
    the record pet_transfer writes into it (``run_folder``).
    """
    chain = [outputs]
    while len(chain) < 100:
        previous = _continued_from(chain[0], base)
        if previous is None or previous.resolve() in [c.resolve() for c in chain]:
            break
        chain.insert(0, previous)
    return chain


def _continued_from(outputs: Path, base: Path) -> Optional[Path]:
    log = outputs / "train.log"
    if not log.is_file():
        return None
    match = _RESTART.search(log.read_text(errors="replace"))
    if match is None:
        return None
    checkpoint = Path(match.group(1))
    if not checkpoint.is_absolute():
        checkpoint = base / checkpoint
    folder = checkpoint.parent.resolve()
    if folder != outputs.resolve() and (folder / "train.csv").is_file():
        return folder
    from ...checkpoints import load_checkpoint_safely
    from ...resume import RECORD_KEY

    try:
        record = load_checkpoint_safely(checkpoint).get(RECORD_KEY) or {}
    except Exception:
        return None  # moved or deleted since: the report shows this part alone
    folder = record.get("run_folder")
    if folder and (Path(folder) / "train.csv").is_file():
        return Path(folder)
    return None


def _read_options(outputs: Path, base: Path) -> dict:
    import yaml

    for path in (outputs / "options_restart.yaml", base / "options.yaml"):
        if path.is_file():
            with open(path) as file:
                options = yaml.safe_load(file)
            return _expand_datasets(options)
    raise ReportError(
        f"no options for the run in '{outputs}': expected 'options_restart.yaml' "
        f"there (written by `mtt train`) or 'options.yaml' in '{base}'"
    )


def _expand_datasets(options: dict) -> dict:
    """The dataset sections in metatrain's expanded form (lists of datasets)."""
    from omegaconf import OmegaConf

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from metatrain.utils.omegaconf import expand_dataset_config

    options = dict(options)
    for section in ("training_set", "validation_set", "test_set"):
        value = options.get(section)
        if isinstance(value, (dict, list)):
            expanded = expand_dataset_config(OmegaConf.create(value))
            options[section] = OmegaConf.to_container(expanded, resolve=True)
    return options


def _find_model(outputs: Path, base: Path) -> Optional[Path]:
    exported = sorted(outputs.glob("*.pt"))
    for path in [outputs / "model.pt", *exported, base / "model.pt"]:
        if path.is_file():
            return path
    return None
