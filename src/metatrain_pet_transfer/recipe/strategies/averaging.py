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

A checkpoint written after an epoch holds the averaged weights (what that epoch
validated); the trained weights and the step count go into the checkpoint beside
them (:meth:`WeightAveraging.state`), so that ``--restart`` goes on exactly: the
average from the checkpoint's weights, training from the trained ones.
"""

import logging
from typing import Dict, List, Optional, Tuple

import torch

from .loop_events import Strategy, trainable_parameters


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
        self._resumed: Optional[Dict] = None

    def resume(self, state: Optional[Dict]) -> None:
        """Go on from :meth:`state` of the checkpoint a restarted run continues."""
        self._resumed = state

    def state(self) -> Optional[Dict]:
        """The trained weights (while the average is swapped in) and the step count,
        for the next checkpoint; ``None`` before the first validation."""
        if self.trained is None:
            return None
        return {
            "trained": {name: value.clone() for name, value in self.trained.items()},
            "steps": self.steps,
        }

    @torch.no_grad()
    def starts(self, optimizer, start_epoch):
        # PET sets `requires_grad` (heads, lora) and moves the model before this
        self.named = trainable_parameters(self.model)
        self.average = {name: p.detach().clone() for name, p in self.named}
        resumed, self._resumed = self._resumed, None
        if resumed is not None and set(resumed["trained"]) == set(self.average):
            # the model holds the checkpoint's average: training goes on from the
            # trained weights, saved beside it
            for name, p in self.named:
                p.copy_(resumed["trained"][name])
            self.steps = int(resumed["steps"])
        logger.info(
            f"Weight averaging: validation, best-model selection and export use the "
            f"exponential moving average of the weights (decay {self.decay:g} per step)"
        )

    @torch.no_grad()
    def after_step(self, optimizer):
        decay = min(self.decay, (1 + self.steps) / (10 + self.steps))
        self.steps += 1
        # one fused update of every tensor (on a GPU: a few kernels per step, not
        # one per parameter tensor)
        torch._foreach_lerp_(
            [self.average[name] for name, _ in self.named],
            [p.detach() for _, p in self.named],
            1.0 - decay,
        )

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
