"""The trainer: metatrain's PET fine-tuning, wrapped at its seams."""

import copy
import os
from pathlib import Path
from typing import List, Union

import torch
from metatrain.pet import Trainer as PETTrainer
from metatrain.utils.abc import ModelInterface
from metatrain.utils.data import Dataset
from metatrain.utils.io import check_file_extension

from .alignment import align
from .model import PETTransfer
from .preflight import check_run_inputs


class Trainer(PETTrainer):
    """Transfers a pretrained PET to new targets with metatrain's PET trainer.

    The recipe: take over the model loaded from ``training.finetune.read_from``,
    align the new energy heads with the pretrained ones (:mod:`.alignment`), run
    PET's training loop, and write checkpoints atomically under this architecture's
    name.
    """

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
        check_run_inputs(
            model, self.hypers, train_datasets, val_datasets, checkpoint_dir
        )
        is_finetune = self.hypers["finetune"]["read_from"] is not None
        # a restarted run has its optimizer state, and its start was aligned already
        if is_finetune and self.optimizer_state_dict is None:
            self.hypers, self.aligned_targets = align(
                model, self.hypers, train_datasets, val_datasets, dtype
            )
        super().train(
            model=model,
            dtype=dtype,
            devices=devices,
            train_datasets=train_datasets,
            val_datasets=val_datasets,
            checkpoint_dir=checkpoint_dir,
        )

    def save_checkpoint(self, model: ModelInterface, path: Union[str, Path]) -> None:
        """Write the checkpoint to a temporary file, then rename it over ``path``.

        A run killed while saving leaves the previous file intact, never a
        truncated one under the final name.
        """
        path = Path(check_file_extension(path, ".ckpt"))
        if self.best_model_state_dict is None:
            # `num_epochs: 0` ran no epoch: the aligned start is the model to export
            self.best_model_state_dict = copy.deepcopy(model.state_dict())
        temporary = path.with_name(f".{path.stem}.{os.getpid()}.tmp.ckpt")
        try:
            super().save_checkpoint(PETTransfer.adopt(model), temporary)
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)
