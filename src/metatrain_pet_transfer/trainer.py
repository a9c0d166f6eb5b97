"""The trainer: metatrain's PET fine-tuning, wrapped at its seams."""

import contextlib
import copy
import logging
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Union

import torch
from metatrain.pet import Trainer as PETTrainer
from metatrain.utils.abc import ModelInterface
from metatrain.utils.data import Dataset
from metatrain.utils.io import check_file_extension

from .checks.run_inputs import CheckedRun, RunInputError, check_run_inputs
from .checks.stop import stop_run
from .documentation import with_method_defaults
from .host_log import tidy_host_log
from .model import PETTransfer
from .parallel import (
    distributed_pet_training,
    leave_process_group,
    on_rank_zero,
    start_distributed_run,
)
from .recipe.alignment import align, set_existing_compositions
from .recipe.datasets import trained_targets
from .recipe.distillation import EnergiesOnlyTraining, keep_pretrained_heads
from .recipe.lora import start_lora_at_pretrained
from .recipe.probe import (
    ProbeStart,
    pretrained_targets,
    probe_targets,
    start_hidden_layers,
)
from .recipe.readouts import any_periodic, choose_readouts, with_readout_targets
from .recipe.replay import ReplayError, check_replay_options
from .recipe.species import prepare_new_types
from .recipe.strategies import (
    MAX_EPOCHS_WITHOUT_NUM_EPOCHS,
    StopTraining,
    WeightAveraging,
    training_strategies,
    watch_pet_loop,
)
from .resume import (
    RECORD_KEY,
    capture_random_state,
    make_record,
    read_record,
    restore_learning_rate_at_first_step,
)


logger = logging.getLogger(__name__)


#: ``early_stopping_patience`` when ``num_epochs`` is left out and it is not given
DEFAULT_PATIENCE = 20
#: checkpoint key of the weight averaging's state (the trained weights beside the
#: averaged ones the checkpoint holds), for an exact ``--restart``
AVERAGING_KEY = "pet_transfer_weight_averaging"


def training_device(devices: List[torch.device], run) -> torch.device:
    """The device PET's loop trains on: this process's GPU under torchrun or srun,
    else the first of metatrain's ``devices`` (as PET's trainer picks it)."""
    return run.device if run is not None else devices[0]


class Trainer(PETTrainer):
    """Transfers a pretrained PET to new targets with metatrain's PET trainer.

    The recipe: take over the model loaded from ``training.finetune.read_from``,
    check the run's inputs (:mod:`.checks`), start the rows of atomic types the
    checkpoint did not know (:mod:`.recipe.species`), align the new energy heads
    with the pretrained ones (:mod:`.recipe.alignment`), start LoRA adapters as a no-op
    (:mod:`.recipe.lora`), keep the old energy heads valid if asked
    (:mod:`.recipe.distillation`), run PET's training loop with the training
    strategies the options ask for (:mod:`.recipe.strategies`), and write checkpoints
    atomically under this architecture's name, with what a restart needs to go on
    exactly where the run stopped (:mod:`.resume`).
    """

    #: subfolder of the checkpoint folder for the composition and scaler fits
    FITS_FOLDER = "fits"
    _epoch_checkpoint_dir = None  # where the epoch checkpoints go, set by `train`
    _checked_run: Optional[CheckedRun] = None  # seed and splits, set by `train`
    _restart_record: Optional[Dict[str, Any]] = None  # of the checkpoint continued
    _averaging_state: Optional[Dict[str, Any]] = None  # of the checkpoint continued
    _averaging: Optional[WeightAveraging] = None  # the run's, with `ema_decay`
    _planned_epochs: Optional[int] = None  # num_epochs of the checkpoint continued

    @classmethod
    def load_checkpoint(
        cls,
        checkpoint: Dict[str, Any],
        hypers: Dict[str, Any],
        context: Literal["restart", "finetune"],
    ) -> "Trainer":
        trainer = super().load_checkpoint(checkpoint, hypers, context)
        if context == "restart":
            trainer._restart_record = read_record(checkpoint)
            trainer._averaging_state = checkpoint.get(AVERAGING_KEY)
            planned = checkpoint.get("train_hypers", {}).get("num_epochs")
            trainer._planned_epochs = planned
        return trainer

    def __init__(self, hypers) -> None:
        # `method: heads` or `lora` without `config`: metatrain validated a copy of
        # the options with the method's defaults filled in (documentation.py); the
        # trainer gets them as written, so it fills them in again
        if "finetune" in hypers:
            hypers = {**hypers, "finetune": with_method_defaults(hypers["finetune"])}
        if hypers.get("num_epochs", 0) is None:
            # no epoch count: train until validation stops improving
            hypers = {**hypers, "num_epochs": MAX_EPOCHS_WITHOUT_NUM_EPOCHS}
            if hypers.get("early_stopping_patience") is None:
                hypers["early_stopping_patience"] = DEFAULT_PATIENCE
        super().__init__(hypers)
        self.kept_heads: List[str] = []  # `keep_pretrained_heads` (set by `train`)

    def train(
        self,
        model: ModelInterface,
        dtype: torch.dtype,
        devices: List[torch.device],
        train_datasets: List[Union[Dataset, torch.utils.data.Subset]],
        val_datasets: List[Union[Dataset, torch.utils.data.Subset]],
        checkpoint_dir: str,
    ) -> None:
        model = PETTransfer.adopt(model)
        # several processes (torchrun, srun): the plugin's passes run on rank 0 and
        # every rank gets their result or their error (`parallel`)
        run = start_distributed_run(self.hypers, devices)
        checkpoint_dir = on_rank_zero(str, checkpoint_dir)  # rank 0's run folder
        is_restart = self.optimizer_state_dict is not None
        if is_restart and self._restart_record is None:
            logger.warning(
                "The --restart checkpoint was written before pet_transfer recorded "
                "splits and random states in its checkpoints: the run continues, but "
                "its splits cannot be compared with the first run's (use that run's "
                "options_restart.yaml), and the resumed epochs draw other random "
                "numbers than an uninterrupted run would"
            )
        try:
            self._checked_run = on_rank_zero(
                check_run_inputs,
                model,
                self.hypers,
                train_datasets,
                val_datasets,
                checkpoint_dir,
                restart_record=self._restart_record,
            )
            check_replay_options(self.hypers)
        except (RunInputError, ReplayError) as error:
            leave_process_group()  # every rank got the error: all stop together
            stop_run(error)  # the message alone, not "an architecture's bug"
        if self._restart_record is not None:
            # put back when PET restores the optimizer state, after its set-up
            model.resume_random_state(self._restart_record["random_state"])
            self._say_when_resume_is_not_exact(len(train_datasets))
        if is_restart:
            restore_learning_rate_at_first_step(model, self.optimizer_state_dict)
            self._say_when_the_schedule_was_shorter()
        is_finetune = self.hypers["finetune"]["read_from"] is not None
        self._set_readouts(model, train_datasets, val_datasets)
        # the plugin's passes (new rows, alignment, teacher labels) run where PET's
        # loop will train: the model goes there first, as PET's loop would take it
        model.to(device=training_device(devices, run))
        new_rows_hooks = []
        if is_finetune:
            # after a `--restart`, the rows exist: only heads/lora need their hooks
            new_rows_hooks = prepare_new_types(
                model, self.hypers, is_fresh_start=self.optimizer_state_dict is None
            )
        # a restarted run has its optimizer state, and its start was aligned already
        if is_finetune and not is_restart:
            self.hypers, self.aligned_targets = on_rank_zero(
                align, model, self.hypers, train_datasets, val_datasets, dtype
            )
            set_existing_compositions(model, self.aligned_targets)  # other ranks
        probed = []
        if is_finetune and not is_restart:
            pretrained = pretrained_targets(self.hypers["finetune"]["read_from"])
            probed = probe_targets(model, self.hypers, train_datasets, pretrained)
            if probed:
                source = start_hidden_layers(model, probed, pretrained)
                if source is not None:
                    logger.info(
                        "Probe start: the hidden layers of "
                        + ", ".join(f"'{name}'" for name in probed)
                        + f" start from the pretrained '{source}' head"
                    )
        finetune = self.hypers["finetune"]
        if is_finetune and finetune["method"] == "lora":
            start_lora_at_pretrained(model, finetune)
        kept = None
        if is_finetune and self.hypers.get("keep_pretrained_heads", False):
            # on a restart too: the kept heads need their labels again
            try:
                kept = keep_pretrained_heads(
                    model,
                    self.hypers,
                    train_datasets,
                    val_datasets,
                    dtype,
                    fresh_start=not is_restart,
                )
            except ReplayError as error:  # the replay file, read on every rank
                leave_process_group()
                stop_run(error)
            train_datasets, val_datasets = kept.train, kept.val
            self.kept_heads = kept.kept
        # PET's composition and scaler fits save `composition_model.ckpt` and
        # `scaler.ckpt` in the folder they are given, before the first epoch. `mtt
        # train --restart auto` takes the newest `outputs/*/*/*.ckpt`: a run killed
        # during its first epoch would "resume" from one of them, and fail. They go
        # one folder down; `save_checkpoint` brings the epoch checkpoints back up.
        self._epoch_checkpoint_dir = Path(checkpoint_dir)
        fits = self._epoch_checkpoint_dir / self.FITS_FOLDER
        fits.mkdir(parents=True, exist_ok=True)
        strategies = training_strategies(
            model, self.hypers, self.best_epoch, self.best_metric
        )
        if probed:
            # first: the weights it sets are those averaging and L2-SP start from
            probe = ProbeStart(
                model,
                probed,
                model.readouts,
                train_datasets,
                val_datasets,
                self.hypers["batch_size"],
                dtype,
            )
            strategies.insert(0, probe)
        kept_heads = contextlib.nullcontext()
        if kept is not None:
            strategies.extend(kept.strategies)
            if kept.energies_only:
                kept_heads = EnergiesOnlyTraining(model, kept.energies_only)
                strategies.append(kept_heads)
        averaging = [s for s in strategies if isinstance(s, WeightAveraging)]
        self._averaging = averaging[0] if averaging else None
        if self._averaging is not None and is_restart:
            self._averaging.resume(self._averaging_state)
        start_epoch = 0 if self.epoch is None else self.epoch + 1
        try:
            with (
                tidy_host_log(),
                kept_heads,
                distributed_pet_training(run),
                watch_pet_loop(strategies, start_epoch) as watch,
            ):
                try:
                    super().train(
                        model=model,
                        dtype=dtype,
                        devices=devices,
                        train_datasets=train_datasets,
                        val_datasets=val_datasets,
                        checkpoint_dir=str(fits),
                    )
                except StopTraining as stop:
                    self._stopped_early(stop, watch, distributed=run is not None)
        finally:
            for hook in new_rows_hooks:
                hook.remove()

    def _set_readouts(self, model: PETTransfer, train_datasets, val_datasets) -> None:
        # how each property is read out of PET's per-atom predictions
        # (recipe/readouts.py); checked with the run's inputs (checks/run_inputs.py)
        targets = trained_targets(model, train_datasets)
        asked = {**model.readouts, **(self.hypers.get("readouts") or {})}
        readouts = choose_readouts(
            targets,
            asked,
            [name for name in targets if name not in model.readouts],
            periodic=any_periodic(train_datasets + val_datasets),
        )
        model.readouts = readouts
        if readouts:
            self.hypers = with_readout_targets(self.hypers, readouts)
        # every per-structure property says how it is read out, PET's sum included
        summed = [
            name
            for name, info in targets.items()
            if info.quantity != "energy" and not info.per_atom and name not in readouts
        ]
        if readouts or summed:
            logger.info(
                "Readouts: "
                + ", ".join(
                    [f"'{name}' {kind}" for name, kind in readouts.items()]
                    + [f"'{name}' sum" for name in summed]
                )
                + " (sum: PET's sum over atoms, the default for energies and for "
                "every property without another readout; training.readouts)"
            )

    def _stopped_early(self, stop: StopTraining, watch, distributed: bool) -> None:
        # what PET's loop does after its last epoch, for the epoch training ended at
        self.epoch = stop.last_epoch
        self.optimizer_state_dict = watch.optimizer.state_dict()
        self.scheduler_state_dict = watch.scheduler.state_dict()
        if distributed and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

    def save_checkpoint(self, model: ModelInterface, path: Union[str, Path]) -> None:
        """Write the checkpoint in a hidden temporary folder beside ``path``, then
        rename it over ``path``.

        A run killed while saving leaves the previous file intact, never a
        truncated one under the final name. What it may leave is the folder
        ``.<name>.<random>.tmp/``: not a ``.ckpt`` file, so ``mtt train --restart
        auto`` (which takes the newest ``outputs/*/*/*.ckpt``, dot-files included)
        never picks it up. Safe to delete.
        """
        path = Path(check_file_extension(path, ".ckpt"))
        if self._epoch_checkpoint_dir is not None and path.parent == (
            self._epoch_checkpoint_dir / self.FITS_FOLDER
        ):
            path = self._epoch_checkpoint_dir / path.name  # see `train`
        if self.best_model_state_dict is None:
            # `num_epochs: 0` ran no epoch: the aligned start is the model to export
            self.best_model_state_dict = copy.deepcopy(model.state_dict())
        folder = Path(
            tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        )
        # metatrain's save appends `.ckpt` to any other name: keep the final name,
        # one folder down
        temporary = folder / path.name
        try:
            self._save_with_record(PETTransfer.adopt(model), temporary)
            with open(temporary, "rb") as file:
                os.fsync(file.fileno())  # the data is on disk before the rename
            os.replace(temporary, path)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _say_when_the_schedule_was_shorter(self) -> None:
        # `--restart` continues the run's learning-rate schedule where it stopped:
        # with more epochs than the run planned, the added ones train near the
        # schedule's end (PET's cosine decays to 0 at the planned last epoch)
        planned, now = self._planned_epochs, self.hypers.get("num_epochs")
        if isinstance(planned, int) and isinstance(now, int) and now > planned:
            # PET's cosine over `now` epochs, at the first added one (warm-up aside)
            fraction = 0.5 * (1 + math.cos(math.pi * planned / now))
            logger.warning(
                f"training.num_epochs is {now}, the run this restart continues "
                f"planned {planned}: --restart goes on with that run's learning-rate "
                f"schedule, stretched to {now} epochs, so the added epochs train at "
                f"about {fraction:.0%} of training.learning_rate, falling to 0. "
                "To train longer with a useful learning rate, start a new transfer "
                "from the run's checkpoint (training.finetune.read_from: the .ckpt, "
                "another -o): docs/transfer.md, 'Training longer'"
            )

    def _say_when_resume_is_not_exact(self, n_training_sets: int) -> None:
        # what the record cannot reproduce (docs/reliability.md): the random state of
        # data-loading workers, and the batch order of several training sets, are
        # drawn at the end of an epoch, before its checkpoint is written
        from metatrain.utils.data import get_num_workers

        workers = self.hypers.get("num_workers")
        workers = get_num_workers() if workers is None else workers
        reasons = []
        if workers > 0:
            reasons.append(f"{workers} data-loading workers (num_workers: 0 avoids it)")
        if n_training_sets > 1:
            reasons.append(f"{n_training_sets} training sets")
        if reasons:
            logger.info(
                "The checkpoint's random state is put back, but with "
                + " and ".join(reasons)
                + " the first resumed epoch draws other augmentations or batch order "
                "than an uninterrupted run would"
            )

    def _save_with_record(self, model: PETTransfer, path: Path) -> None:
        # PET's save, plus the record a restart needs (:mod:`.resume`). The random
        # state is captured first: PET writes epoch checkpoints as the last step of
        # an epoch, so this is the state the next epoch starts from.
        random_state = capture_random_state()
        checked = self._checked_run
        folder = self._epoch_checkpoint_dir
        record = make_record(
            seed=None if checked is None else checked.seed,
            run_folder=None if folder is None else str(folder.resolve()),
            splits=None if checked is None else checked.splits,
            random_state=random_state,
        )
        # PET's save builds the checkpoint with `model.get_checkpoint()`
        model.attach_to_next_checkpoint(RECORD_KEY, record)
        if self._averaging is not None:
            model.attach_to_next_checkpoint(AVERAGING_KEY, self._averaging.state())
        super().save_checkpoint(model, path)
