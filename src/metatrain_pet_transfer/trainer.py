"""The trainer: metatrain's PET fine-tuning, wrapped at its seams."""

import copy
import os
import shutil
import tempfile
from pathlib import Path
from typing import List, Union

import torch
from metatrain.pet import Trainer as PETTrainer
from metatrain.utils.abc import ModelInterface
from metatrain.utils.data import Dataset
from metatrain.utils.io import check_file_extension

from .checks.run_inputs import check_run_inputs
from .model import PETTransfer
from .parallel import distributed_pet_training, on_rank_zero, start_distributed_run
from .recipe.alignment import align, set_existing_compositions
from .recipe.distillation import keep_pretrained_heads
from .recipe.lora import start_lora_at_pretrained


class Trainer(PETTrainer):
    """Transfers a pretrained PET to new targets with metatrain's PET trainer.

    The recipe: take over the model loaded from ``training.finetune.read_from``,
    check the run's inputs (:mod:`.checks`), align the new energy heads with the
    pretrained ones (:mod:`.recipe.alignment`), start LoRA adapters as a no-op
    (:mod:`.recipe.lora`), keep the old energy heads valid if asked
    (:mod:`.recipe.distillation`), run PET's training loop, and write checkpoints
    atomically under this architecture's name.
    """

    #: subfolder of the checkpoint folder for the composition and scaler fits
    FITS_FOLDER = "fits"
    _epoch_checkpoint_dir = None  # where the epoch checkpoints go, set by `train`

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
        on_rank_zero(
            check_run_inputs,
            model,
            self.hypers,
            train_datasets,
            val_datasets,
            checkpoint_dir,
        )
        is_finetune = self.hypers["finetune"]["read_from"] is not None
        # a restarted run has its optimizer state, and its start was aligned already
        if is_finetune and self.optimizer_state_dict is None:
            self.hypers, self.aligned_targets = on_rank_zero(
                align, model, self.hypers, train_datasets, val_datasets, dtype
            )
            set_existing_compositions(model, self.aligned_targets)  # other ranks
        finetune = self.hypers["finetune"]
        if is_finetune and finetune["method"] == "lora":
            start_lora_at_pretrained(model, finetune)
        if is_finetune and self.hypers.get("keep_pretrained_heads", False):
            # on a restart too: the kept heads need their labels again
            train_datasets, val_datasets, self.kept_heads = keep_pretrained_heads(
                model, self.hypers, train_datasets, val_datasets, dtype
            )
        # PET's composition and scaler fits save `composition_model.ckpt` and
        # `scaler.ckpt` in the folder they are given, before the first epoch. `mtt
        # train --restart auto` takes the newest `outputs/*/*/*.ckpt`: a run killed
        # during its first epoch would "resume" from one of them, and fail. They go
        # one folder down; `save_checkpoint` brings the epoch checkpoints back up.
        self._epoch_checkpoint_dir = Path(checkpoint_dir)
        fits = self._epoch_checkpoint_dir / self.FITS_FOLDER
        fits.mkdir(parents=True, exist_ok=True)
        with distributed_pet_training(run):
            super().train(
                model=model,
                dtype=dtype,
                devices=devices,
                train_datasets=train_datasets,
                val_datasets=val_datasets,
                checkpoint_dir=str(fits),
            )

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
            super().save_checkpoint(PETTransfer.adopt(model), temporary)
            with open(temporary, "rb") as file:
                os.fsync(file.fileno())  # the data is on disk before the rename
            os.replace(temporary, path)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
