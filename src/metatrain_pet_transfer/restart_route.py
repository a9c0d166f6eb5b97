"""The seam between metatrain's ``PET.restart`` and ``pet_transfer``, in one place.

Why a seam: ``mtt train`` loads the pretrained model with the class its checkpoint
names (``pet`` for a native checkpoint) and calls that model's ``restart`` before
the selected architecture's trainer exists (metatrain's ``cli/train.py``). PET's
``restart`` stops a run whose data bring atomic types the checkpoint lacks; a run
that selected ``pet_transfer`` extends the model instead
(``PETTransfer.restart``, :mod:`.recipe.species`). So, once the plugin is imported,
:func:`route_new_types` replaces ``PET.restart`` (in memory) by a function that
hands such a model to ``PETTransfer.restart`` only when all of these hold:

- the ``mtt train`` run calling it selected ``pet_transfer``
  (:func:`architecture_of_this_run`: the options of metatrain's ``train_model``
  on the call stack);
- the model is a plain PET (a ``PETTransfer`` has its own ``restart``);
- the data bring atomic types the model lacks (the only case PET refuses).

Everywhere else it calls PET's own method with the same arguments: a run of any
other architecture (a native ``name: pet`` fine-tune included) gets what it gets
without the plugin, PET's "New atomic types found in the dataset" error included.
``PETTransfer.restart`` asks :func:`extends_new_types` too, so a ``name: pet`` run
that reads a checkpoint written by ``pet_transfer`` also gets PET's error.

Why ``PET.restart`` itself: the model's class comes from a user's checkpoint, and
nothing of the selected architecture runs between loading it and its ``restart``.
The other in-memory places that could take the model over are worse: the
checkpoint's ``architecture_name`` is a user's file, not ours to rewrite, and
metatrain's ``model_from_checkpoint`` would re-class every model it loads, in every
context. :data:`HOST_RESTART` keeps PET's own method, even when the plugin's modules
are imported again.
"""

import sys
from typing import Optional

from metatrain.pet import PET

from .recipe.species import new_atomic_types


#: the name this architecture is selected by (``architecture: name:``)
ARCHITECTURE_NAME = "pet_transfer"
#: PET's own ``restart``
HOST_RESTART = getattr(PET.restart, "__wrapped__", PET.restart)


def architecture_of_this_run() -> Optional[str]:
    """``architecture.name`` of the metatrain ``train_model`` call (``mtt train``)
    this function is called from, or ``None`` outside one."""
    train = sys.modules.get("metatrain.cli.train")
    if train is None:  # metatrain's training command was never imported
        return None
    train_model = train.train_model.__code__
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code is train_model:
            try:
                return str(frame.f_locals["options"]["architecture"]["name"])
            except (KeyError, TypeError):
                return None
        frame = frame.f_back
    return None


def extends_new_types(model_is_pet_transfer: bool) -> bool:
    """Whether a ``restart`` called now extends the model to new atomic types.

    In an ``mtt train`` run: when the run selected ``pet_transfer``. Outside one
    (Python code calling ``restart`` itself): for a ``PETTransfer`` only, whose
    class the caller chose.
    """
    selected = architecture_of_this_run()
    if selected is None:
        return model_is_pet_transfer
    return selected == ARCHITECTURE_NAME


def route_new_types(model_class) -> None:
    """Replace ``PET.restart`` as the module docstring says; idempotent.

    :param model_class: ``PETTransfer``, whose ``adopt`` and ``restart`` take over
    """

    def restart(self, dataset_info, model_hypers=None):
        if (
            not isinstance(self, model_class)
            and new_atomic_types(self, dataset_info)
            and extends_new_types(model_is_pet_transfer=False)
        ):
            return model_class.adopt(self).restart(dataset_info, model_hypers)
        return HOST_RESTART(self, dataset_info, model_hypers=model_hypers)

    restart.__doc__ = HOST_RESTART.__doc__
    restart.__wrapped__ = HOST_RESTART
    PET.restart = restart
