"""Finding the pieces of a finished ``mtt train`` run: outputs folder, options, model.

``RUN_DIR`` is either the folder where ``mtt train`` ran (its latest
``outputs/<date>/<time>/`` is used) or such an outputs folder. The options are read
from ``options_restart.yaml`` (else ``options.yaml``) with metatrain's dataset
expansion, so every later step sees datasets in one form.
"""

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional


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

    @property
    def train_csv(self) -> Path:
        return self.outputs / "train.csv"

    @property
    def train_log(self) -> Path:
        return self.outputs / "train.log"


def _is_outputs_folder(path: Path) -> bool:
    return (path / "train.csv").is_file() or (path / "options_restart.yaml").is_file()


def find_run(run_dir, model: Optional[Path] = None) -> Run:
    """Locate the outputs folder, options and exported model of a run.

    :param run_dir: the folder where ``mtt train`` ran, or its outputs folder
    :param model: the exported model to use instead of the run's own
    :raises ReportError: naming the folder and the file that is missing
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ReportError(f"run folder '{run_dir}' does not exist")
    if _is_outputs_folder(run_dir):
        outputs = run_dir
        # `mtt train` writes into <where it ran>/outputs/<date>/<time>
        if outputs.parent.parent.name == "outputs":
            base = outputs.parents[2]
        else:
            base = outputs
    else:
        candidates = sorted(
            p.parent
            for p in run_dir.glob("outputs/*/*/*")
            if p.name in ("train.csv", "options_restart.yaml")
        )
        if not candidates:
            raise ReportError(
                f"'{run_dir}' is not a metatrain run: it has no 'train.csv' (a "
                "metatrain outputs folder) and no 'outputs/<date>/<time>/train.csv' "
                "(a folder where `mtt train` ran)"
            )
        outputs = candidates[-1]
        base = run_dir

    options = _read_options(outputs, base)
    if model is None:
        model = _find_model(outputs, base)
    elif not Path(model).is_file():
        raise ReportError(f"model file '{model}' does not exist")
    return Run(outputs=outputs, base=base, options=options, model=model)


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
