"""Weight averaging: validate, select and export an exponential moving average.

With a few hundred labels and batches of a few structures, every step's gradient is
noisy and the weights wander around the minimum they approach; their exponential
moving average (EMA, ``ema_decay``) sits closer to it (Polyak averaging, as MACE's
and NequIP's trainers use by default). After each optimizer step the average moves
toward the trained weights by ``1 - decay`` (with the usual short warm-up,
``decay_t = min(decay, (1 + t) / (10 + t))``, so the start weights fade within a few
dozen steps). PET's validation pass, its best-model selection and its checkpoints see
the averaged weights: they are swapped in when validation starts and swapped out
when the next epoch's steps start, so the optimizer always continues from the
trained ones. The exported model is the best *averaged* model; its cost is that of
one PET.
"""

import logging
from typing import Dict, List, Optional, Tuple

import torch

from .loop_events import Strategy


logger = logging.getLogger(__name__)


class WeightAveraging(Strategy):
    """Keeps the EMA of the trainable weights and swaps it in for validation.

    :param model: the model PET trains (not its DDP wrapper)
    :param decay: the EMA decay per optimizer step, in (0, 1)
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.model = model
        self.named: List[Tuple[str, torch.nn.Parameter]] = []
        self.average: Dict[str, torch.Tensor] = {}
        self.trained: Optional[Dict[str, torch.Tensor]] = None  # while swapped out
        self.steps = 0

    def starts(self, optimizer, start_epoch):
        # PET sets `requires_grad` (heads, lora) and moves the model before this
        self.named = [
            (name, p) for name, p in self.model.named_parameters() if p.requires_grad
        ]
        self.average = {name: p.detach().clone() for name, p in self.named}
        logger.info(
            f"Weight averaging: validation, best-model selection and export use the "
            f"exponential moving average of the weights (decay {self.decay:g} per step)"
        )

    @torch.no_grad()
    def after_step(self, optimizer):
        decay = min(self.decay, (1 + self.steps) / (10 + self.steps))
        self.steps += 1
        for name, p in self.named:
            self.average[name].lerp_(p.detach(), 1.0 - decay)

    @torch.no_grad()
    def validation_starts(self, epoch):
        if self.trained is not None:
            return
        self.trained = {}
        for name, p in self.named:
            self.trained[name] = p.detach().clone()
            p.copy_(self.average[name])

    @torch.no_grad()
    def training_epoch_starts(self, epoch):
        if self.trained is None:
            return
        for name, p in self.named:
            p.copy_(self.trained[name])
        self.trained = None
