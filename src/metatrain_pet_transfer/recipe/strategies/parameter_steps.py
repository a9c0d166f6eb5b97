"""How far each weight moves per step: learning-rate factors, staged unfreezing and
L2-SP.

PET's trainer builds one Adam(W) optimizer over every parameter, with one learning
rate and one schedule. Rather than replacing it, each step is rescaled after the
fact: before the step the trainable weights are copied, after it each weight is put
at ``before + factor * (after - before)``. For Adam and AdamW, whose update is
proportional to the learning rate, this is exactly a per-parameter learning rate of
``factor`` times PET's (schedule included), and the optimizer's own state, schedule
and checkpoints stay PET's. A factor of 0 copies the weight back: it stays
bit-identical.

- learning-rate factors (``learning_rate_factors``): by module name, e.g. the new
  heads faster than the pretrained backbone (discriminative fine-tuning, Howard &
  Ruder 2018);
- staged unfreezing (``freeze_backbone_epochs``, ``unfreeze_warmup_epochs``): the
  backbone's factor is 0 for the first epochs, while the new heads settle on the
  pretrained features, then rises linearly to its full value;
- L2-SP (``l2sp_weight``, Li et al. 2018), in its decoupled form (as AdamW decouples
  weight decay): after each step every weight moves back toward the weights the run
  started from by ``lr * factor * l2sp_weight`` of its distance to them (at most all
  of it).
"""

import logging
from typing import Dict, List, Optional, Tuple

import torch

from .loop_events import Strategy, trainable_parameters


logger = logging.getLogger(__name__)

#: PET's per-target output modules: what ``heads`` trains, and what trains first
#: while the backbone is frozen
HEAD_MODULES = ("node_heads", "edge_heads", "node_last_layers", "edge_last_layers")


def matches(name: str, prefix: str) -> bool:
    """Whether parameter ``name`` lies in module ``prefix``: ``prefix`` is a run of
    whole dotted components of ``name`` (``gnn_layers.0`` matches
    ``gnn_layers.0.attention.weight``, not ``gnn_layers.01.weight``)."""
    return f".{prefix}." in f".{name}."


def factor_of(name: str, factors: Dict[str, float]) -> float:
    """The factor of the longest prefix in ``factors`` that ``name`` lies in (1
    when none does)."""
    found = [prefix for prefix in factors if matches(name, prefix)]
    if not found:
        return 1.0
    return float(factors[max(found, key=len)])


def is_head(name: str) -> bool:
    """Whether parameter ``name`` belongs to a per-target head or last layer."""
    return any(matches(name, module) for module in HEAD_MODULES)


class ParameterSteps(Strategy):
    """Rescales each optimizer step per parameter (see the module's docstring).

    :param model: the model PET trains (not its DDP wrapper)
    :param factors: ``{module-name prefix: factor}``
    :param freeze_backbone_epochs: epochs during which only heads and last layers
        move
    :param unfreeze_warmup_epochs: epochs over which the backbone's factor then
        rises linearly to its full value
    :param l2sp_weight: strength of the pull toward the starting weights
    """

    def __init__(
        self,
        model: torch.nn.Module,
        factors: Optional[Dict[str, float]] = None,
        freeze_backbone_epochs: int = 0,
        unfreeze_warmup_epochs: int = 0,
        l2sp_weight: float = 0.0,
    ):
        self.factors = dict(factors or {})
        self.freeze_backbone_epochs = freeze_backbone_epochs
        self.unfreeze_warmup_epochs = unfreeze_warmup_epochs
        self.l2sp_weight = l2sp_weight
        self.model = model
        unknown = [
            prefix
            for prefix in self.factors
            if not any(matches(name, prefix) for name, _ in model.named_parameters())
        ]
        if unknown:
            raise ValueError(
                "training.learning_rate_factors: no parameter of the model lies in "
                + ", ".join(repr(prefix) for prefix in unknown)
                + "; module names look like "
                + ", ".join(sorted({_module(n) for n, _ in model.named_parameters()}))
            )
        self.named: List[Tuple[str, torch.nn.Parameter]] = []
        self.epoch = 0
        self.anchor: Dict[str, torch.Tensor] = {}
        self.before: List[Tuple[str, torch.nn.Parameter, torch.Tensor]] = []

    def starts(self, optimizer, start_epoch):
        # PET sets `requires_grad` (heads, lora) and moves the model before this
        self.named = trainable_parameters(self.model)
        self.base = {name: factor_of(name, self.factors) for name, _ in self.named}
        self.backbone = {name for name, _ in self.named if not is_head(name)}
        self.epoch = start_epoch
        if self.l2sp_weight > 0:
            # the start of the run: the pretrained weights, the aligned heads
            self.anchor = {name: p.detach().clone() for name, p in self.named}
        if self.freeze_backbone_epochs > start_epoch:
            logger.info(
                f"Staged unfreezing: only heads and last layers train for the first "
                f"{self.freeze_backbone_epochs} epoch(s), then the backbone joins"
                + (
                    f" over {self.unfreeze_warmup_epochs} epoch(s) of warm-up"
                    if self.unfreeze_warmup_epochs
                    else ""
                )
            )

    def training_epoch_starts(self, epoch):
        if epoch == self.freeze_backbone_epochs and epoch > 0:
            logger.info(f"Staged unfreezing: the backbone trains from epoch {epoch}")
        self.epoch = epoch

    def stage_factor(self) -> float:
        """The backbone's factor in the current epoch (staged unfreezing)."""
        frozen, warmup = self.freeze_backbone_epochs, self.unfreeze_warmup_epochs
        if self.epoch < frozen:
            return 0.0
        return min(1.0, (self.epoch - frozen + 1) / (warmup + 1))

    def factor(self, name: str) -> float:
        stage = self.stage_factor() if name in self.backbone else 1.0
        return self.base[name] * stage

    def before_step(self, optimizer):
        self.before = [
            (name, p, p.detach().clone())
            for name, p in self.named
            if self.factor(name) != 1.0
        ]

    @torch.no_grad()
    def after_step(self, optimizer):
        for name, p, before in self.before:
            factor = self.factor(name)
            if factor == 0.0:
                p.copy_(before)
            else:
                p.copy_(before + factor * (p - before))
        self.before = []
        if self.l2sp_weight > 0:
            lr = optimizer.param_groups[0]["lr"]
            for name, p in self.named:
                pull = lr * self.factor(name) * self.l2sp_weight
                if pull >= 1.0:
                    p.copy_(self.anchor[name])  # all the way back, exactly
                elif pull > 0:
                    p.sub_(pull * (p - self.anchor[name]))


def _module(name: str) -> str:
    parts = name.split(".")
    return ".".join(parts[:2]) if len(parts) > 2 else parts[0]
