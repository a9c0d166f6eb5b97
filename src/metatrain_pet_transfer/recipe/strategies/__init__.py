"""Training strategies: how the transfer trains, on top of PET's own loop.

``method: full`` means every weight may train; how fast each part moves, when it
starts moving and which weights are kept are these strategies' business:

- :mod:`.parameter_steps`: learning-rate factors by module name, staged unfreezing
  and L2-SP (a pull toward the starting weights);
- :mod:`.averaging`: an exponential moving average of the weights is validated and
  exported;
- :mod:`.early_stopping`: training ends when validation stops improving.

They hook into PET's loop through :mod:`.loop_events`; :func:`training_strategies`
builds them from the trainer options (``documentation.py``).
"""

from typing import Any, Dict, List

from .averaging import WeightAveraging
from .early_stopping import MAX_EPOCHS_WITHOUT_NUM_EPOCHS, EarlyStopping
from .loop_events import StopTraining, Strategy, watch_pet_loop
from .parameter_steps import ParameterSteps


__all__ = [
    "MAX_EPOCHS_WITHOUT_NUM_EPOCHS",
    "StopTraining",
    "WeightAveraging",
    "training_strategies",
    "watch_pet_loop",
]


def training_strategies(
    model, hypers: Dict[str, Any], best_epoch=None, best_metric=None
) -> List[Strategy]:
    """The strategies the options ask for, in the order they see each event.

    Early stopping comes first: when it ends the run at the start of an epoch, the
    model still holds the weights that epoch's validation saw (the average, with
    ``ema_decay``).

    :param model: the model PET will train (requires_grad already set)
    :param hypers: the trainer options
    :param best_epoch: a restarted run's best epoch so far
    :param best_metric: its validation metric
    """
    strategies: List[Strategy] = []
    patience = hypers.get("early_stopping_patience")
    if patience is not None:
        strategies.append(
            EarlyStopping(
                patience, hypers["best_model_metric"], best_epoch, best_metric
            )
        )
    steps = ParameterSteps(
        model,
        factors=hypers.get("learning_rate_factors") or {},
        freeze_backbone_epochs=hypers.get("freeze_backbone_epochs", 0),
        unfreeze_warmup_epochs=hypers.get("unfreeze_warmup_epochs", 0),
        l2sp_weight=hypers.get("l2sp_weight", 0.0),
    )
    if steps.factors or steps.freeze_backbone_epochs or steps.l2sp_weight:
        strategies.append(steps)
    decay = hypers.get("ema_decay")
    if decay is not None:
        strategies.append(WeightAveraging(model, decay))
    return strategies
