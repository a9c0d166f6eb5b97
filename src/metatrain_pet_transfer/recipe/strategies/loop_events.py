"""Steps, epochs and validation metrics of metatrain's PET loop, as events.

PET's training loop (``metatrain.pet.trainer.Trainer.train``) is one function. The
training strategies need five moments of it: the optimizer's creation, each step,
the start of each training epoch, the start of each validation pass and the epoch's
validation metric. As :mod:`..parallel.pet_seams` does for the process group,
:func:`watch_pet_loop` substitutes, for one ``train`` call, three names of
``metatrain.pet.trainer`` and restores them afterwards:

- ``get_scheduler``: PET builds its learning-rate schedule once, right after its
  optimizer; the wrapper hands both to the strategies and hooks the optimizer's
  steps (torch's per-optimizer ``register_step_pre_hook`` / ``post_hook``);
- ``CombinedDataLoader``: PET iterates its training loader (``shuffle=True``) once
  at the start of each epoch, and its validation loader (``shuffle=False``) once
  after the epoch's steps;
- ``get_selected_metric``: PET computes the epoch's validation metric (the one its
  ``best_model_metric`` selects the best model with) by calling it once per epoch.

Nothing is copied from the loop. A strategy ends training early by raising
:class:`StopTraining` from :meth:`Strategy.training_epoch_starts`: PET has finished
the previous epoch (best model kept, checkpoint written), and the trainer finishes
what PET's loop would have done after its last epoch.
"""

from contextlib import contextmanager
from typing import List, Optional, Sequence

import torch


def trainable_parameters(model: torch.nn.Module) -> List:
    """``(name, parameter)`` of the weights the optimizer trains (PET sets
    ``requires_grad`` for ``heads``/``lora`` before it builds the optimizer)."""
    return [(name, p) for name, p in model.named_parameters() if p.requires_grad]


class StopTraining(Exception):
    """Raised at the start of an epoch to end training after the previous one."""

    def __init__(self, last_epoch: int, reason: str):
        super().__init__(reason)
        self.last_epoch = last_epoch
        self.reason = reason


class Strategy:
    """A training strategy: reacts to the events of PET's loop (no-ops here)."""

    def starts(self, optimizer: torch.optim.Optimizer, start_epoch: int) -> None:
        """The optimizer exists; training starts at ``start_epoch``."""

    def before_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Gradients are ready, the optimizer is about to step."""

    def after_step(self, optimizer: torch.optim.Optimizer) -> None:
        """The optimizer stepped (its learning rates are those of this step)."""

    def training_epoch_starts(self, epoch: int) -> None:
        """Epoch ``epoch`` is about to take its first step."""

    def validation_starts(self, epoch: int) -> None:
        """The steps of ``epoch`` are done, its validation pass begins."""

    def validation_metric(self, epoch: int, metric: float) -> None:
        """The validation metric PET selects its best model by, for ``epoch``."""


class LoopWatch:
    """Dispatches the loop's events to the strategies, in their order."""

    def __init__(self, strategies: Sequence[Strategy], start_epoch: int):
        self.strategies = list(strategies)
        self.start_epoch = start_epoch
        self.epoch: Optional[int] = None  # the epoch in progress
        self.scheduler = None
        self.optimizer: Optional[torch.optim.Optimizer] = None
        self._handles: List = []

    def optimizer_ready(self, optimizer, scheduler) -> None:
        self.optimizer, self.scheduler = optimizer, scheduler
        self._handles = [
            optimizer.register_step_pre_hook(self._before_step),
            optimizer.register_step_post_hook(self._after_step),
        ]
        for strategy in self.strategies:
            strategy.starts(optimizer, self.start_epoch)

    def _before_step(self, optimizer, args, kwargs) -> None:
        for strategy in self.strategies:
            strategy.before_step(optimizer)

    def _after_step(self, optimizer, args, kwargs) -> None:
        for strategy in self.strategies:
            strategy.after_step(optimizer)

    def training_epoch_starts(self) -> None:
        self.epoch = self.start_epoch if self.epoch is None else self.epoch + 1
        for strategy in self.strategies:
            strategy.training_epoch_starts(self.epoch)

    def validation_starts(self) -> None:
        for strategy in self.strategies:
            strategy.validation_starts(self.epoch)

    def validation_metric(self, metric: float) -> None:
        for strategy in self.strategies:
            strategy.validation_metric(self.epoch, metric)

    def remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


@contextmanager
def watch_pet_loop(strategies: Sequence[Strategy], start_epoch: int):
    """Within this block, ``metatrain.pet.Trainer.train`` reports its events to
    ``strategies``; yields the :class:`LoopWatch` (its optimizer and scheduler are
    set once PET has built them). A no-op without strategies."""
    if not strategies:
        yield None
        return
    import metatrain.pet.trainer as pet_trainer

    watch = LoopWatch(strategies, start_epoch)
    host_get_scheduler = pet_trainer.get_scheduler
    host_loader = pet_trainer.CombinedDataLoader
    host_metric = pet_trainer.get_selected_metric

    def get_scheduler(optimizer, train_hypers, steps_per_epoch):
        scheduler = host_get_scheduler(optimizer, train_hypers, steps_per_epoch)
        watch.optimizer_ready(optimizer, scheduler)
        return scheduler

    class WatchedLoader(host_loader):
        # PET iterates each loader once per epoch: `for batch in loader`
        def __iter__(self):
            if self.shuffle:
                watch.training_epoch_starts()
            else:
                watch.validation_starts()
            return super().__iter__()

    def get_selected_metric(metrics, name):
        metric = host_metric(metrics, name)
        watch.validation_metric(float(metric))
        return metric

    replacements = {
        "get_scheduler": get_scheduler,
        "CombinedDataLoader": WatchedLoader,
        "get_selected_metric": get_selected_metric,
    }
    saved = {name: getattr(pet_trainer, name) for name in replacements}
    for name, value in replacements.items():
        setattr(pet_trainer, name, value)
    try:
        yield watch
    finally:
        watch.remove_hooks()
        for name, value in saved.items():
            setattr(pet_trainer, name, value)
