"""What a restart needs beyond PET's checkpoint: the split and the random state.

PET's checkpoints hold the weights, the optimizer and the scheduler, enough to go on
training, but not enough to go on *as if never interrupted*: ``mtt train --restart``
seeds the random number generators afresh from ``seed`` (a new one when the options
give none, which also splits training, validation and test again), so the data order
and augmentations of the resumed epochs differ from the uninterrupted run's, and a
structure the first run trained on may land in the test set of the second.

Every checkpoint ``pet_transfer`` writes carries, under :data:`RECORD_KEY`:

- ``random_state``: the states of torch's (CPU, and CUDA when present), numpy's and
  Python's global generators when the checkpoint was written. PET writes its epoch
  checkpoints at the very end of an epoch, so this is the state at the start of the
  next one: the draws of PET's loop in the main process (the shuffling sampler's
  seed, the rotational augmentations when ``num_workers: 0``) come from these
  generators. The restarted run puts it back when PET restores the optimizer
  state, the last step of its set-up before the first resumed epoch (see
  :meth:`.model.PETTransfer.has_new_targets`). Two draws of an epoch's end happen
  before its checkpoint is written and are not reproduced for the first resumed
  epoch: the seeds of data-loading workers (their augmentations) and the order in
  which the batches of several training sets alternate;
- ``seed``, ``run_folder`` and ``splits``: the run's seed, its output folder (where
  its ``options_restart.yaml`` is) and a fingerprint of each split, compared before a
  restart trains (:mod:`.checks.splits`).

The structure of the record is the same in every checkpoint (metatrain's checkpoint
tests compare key structures); what is unknown is ``None``. Checkpoints written
before this record existed, and PET's own, have no :data:`RECORD_KEY`: they restart
as before, without these guarantees. Everything in it loads with
``torch.load(weights_only=True)``.
"""

import random
from typing import Any, Dict, Optional

import numpy as np
import torch


#: where the record lives in a checkpoint
RECORD_KEY = "pet_transfer"
#: version of the record's layout
RECORD_VERSION = 1


def capture_random_state() -> Dict[str, Any]:
    """The states of the global random number generators a training epoch uses."""
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        # numpy's MT19937 keys are uint32: kept bit for bit as an int32 tensor, which
        # loads with weights_only=True (a numpy array does not)
        "numpy": [
            str(name),
            torch.from_numpy(np.asarray(keys, dtype=np.uint32).view(np.int32).copy()),
            int(position),
            int(has_gauss),
            float(cached_gaussian),
        ],
        "python": [int(version), list(internal), gauss_next],
    }


def restore_random_state(state: Dict[str, Any]) -> None:
    """Put back the generator states returned by :func:`capture_random_state`."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        if len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, position, has_gauss, cached_gaussian = state["numpy"]
    keys = keys.numpy().view(np.uint32)
    np.random.set_state((name, keys, position, has_gauss, cached_gaussian))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


def restore_learning_rate_at_first_step(model, optimizer_state: Dict[str, Any]):
    """Give the first step of a resumed run the learning rate it had in the run.

    PET's restart loads the optimizer state (with the learning rate the next step
    would use), then builds its ``LambdaLR`` scheduler, whose construction sets the
    learning rate to ``base * lambda(0)`` (0 during warm-up, the full base rate
    otherwise), then loads the scheduler state, which does not touch the optimizer:
    the first step after a restart runs with that learning rate, every later step
    with the right one. This registers a one-shot hook (torch's global
    ``register_optimizer_step_pre_hook``) that puts back, before the first step of
    the optimizer training ``model``, the learning rates of ``optimizer_state``.

    :param model: the model being trained
    :param optimizer_state: the optimizer state of the checkpoint the run continues
    :return: the hook's handle (removed by the hook itself after its one use)
    """
    saved_rates = [group["lr"] for group in optimizer_state["param_groups"]]
    parameter = next(model.parameters(), None)

    def put_back(optimizer, args, kwargs):
        trains_model = any(
            p is parameter for group in optimizer.param_groups for p in group["params"]
        )
        if not trains_model:
            return  # another optimizer
        handle.remove()
        restored = len(optimizer.state) > 0  # PET loaded the state it was given
        if restored and len(optimizer.param_groups) == len(saved_rates):
            for group, rate in zip(optimizer.param_groups, saved_rates, strict=True):
                group["lr"] = rate

    from torch.optim.optimizer import register_optimizer_step_pre_hook

    handle = register_optimizer_step_pre_hook(put_back)
    return handle


def make_record(
    seed: Optional[int],
    run_folder: Optional[str],
    splits: Optional[Dict[str, Any]],
    random_state: Dict[str, Any],
) -> Dict[str, Any]:
    """The record stored in a checkpoint under :data:`RECORD_KEY`.

    :param seed: the run's ``seed`` (``None`` when not run by ``mtt train``)
    :param run_folder: the run's output folder, absolute
    :param splits: ``{"training"|"validation"|"test": [count, digest] or None}``
    :param random_state: from :func:`capture_random_state`
    """
    splits = splits or {}
    return {
        "record_version": RECORD_VERSION,
        "seed": seed,
        "run_folder": run_folder,
        "splits": {name: splits.get(name) for name in SPLITS},
        "random_state": random_state,
    }


#: the splits fingerprinted in a record
SPLITS = ("training", "validation", "test")


def read_record(checkpoint: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The record of a checkpoint, or ``None`` for checkpoints without one."""
    record = checkpoint.get(RECORD_KEY)
    if not isinstance(record, dict) or "random_state" not in record:
        return None
    return record
