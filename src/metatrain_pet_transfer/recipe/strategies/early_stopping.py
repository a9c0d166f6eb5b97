"""Early stopping: end training when validation stops improving.

PET already keeps the model of its best validation epoch (by ``best_model_metric``)
and exports that one; what it lacks is a reason to stop before ``num_epochs``. This
strategy ends the run once ``patience`` epochs have passed without a new best, at
the start of the next epoch (:class:`~.loop_events.StopTraining`), and says so. With
``num_epochs`` left out, pet_transfer trains this way up to
:data:`MAX_EPOCHS_WITHOUT_NUM_EPOCHS`.
"""

import logging
import math
from typing import Optional

from .loop_events import StopTraining, Strategy


logger = logging.getLogger(__name__)

#: the epoch cap (and the length of PET's cosine schedule) when ``num_epochs`` is
#: not given: PET's own default number of epochs
MAX_EPOCHS_WITHOUT_NUM_EPOCHS = 1000


class EarlyStopping(Strategy):
    """Stops after ``patience`` epochs without a better validation metric.

    :param patience: epochs without improvement before training ends
    :param metric_name: the name of the metric, for the log
    :param best_epoch: the best epoch so far (a restarted run's), if any
    :param best_metric: its metric
    """

    def __init__(
        self,
        patience: int,
        metric_name: str,
        best_epoch: Optional[int] = None,
        best_metric: Optional[float] = None,
    ):
        self.patience = patience
        self.metric_name = metric_name
        self.best_epoch = best_epoch
        self.best_metric = math.inf if best_metric is None else best_metric
        self.last_epoch: Optional[int] = None

    def validation_metric(self, epoch, metric):
        self.last_epoch = epoch
        if metric < self.best_metric:  # PET's own rule for its best model
            self.best_metric, self.best_epoch = metric, epoch

    def training_epoch_starts(self, epoch):
        last, best = self.last_epoch, self.best_epoch
        if last is None or best is None or last - best < self.patience:
            return
        reason = (
            f"Early stopping: the validation {self.metric_name} has not improved for "
            f"{last - best} epochs (best {self.best_metric:.6g} at epoch {best}); "
            f"training stops after epoch {last}, and the model of epoch {best} is the "
            "one exported"
        )
        logger.info(reason)
        raise StopTraining(last, reason)
