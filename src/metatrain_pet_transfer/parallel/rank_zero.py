"""The plugin's own passes over the data, run once and shared by every rank.

The run-input checks, the alignment fit and the teacher labels of
``keep_pretrained_heads`` read the whole training set; metatrain gives every rank
the whole set. Running them on every rank would cost K times the work and could
give ranks slightly different numbers (a GPU's reductions are not bitwise
reproducible). :func:`on_rank_zero` runs a pass on rank 0 only and broadcasts its
result with ``torch.distributed.broadcast_object_list``; if the pass raises, every
rank raises the same error with the same message, so a bad input stops the whole
run before any training step and no rank is left waiting.
"""

import pickle
from typing import Any, Callable

import torch.distributed


def is_distributed() -> bool:
    """Whether this process is one of several of an open process group."""
    return (
        torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and torch.distributed.get_world_size() > 1
    )


def on_rank_zero(function: Callable[..., Any], *args, **kwargs) -> Any:
    """``function(*args, **kwargs)`` computed on rank 0 only; every rank returns
    rank 0's result (which must be picklable), or raises rank 0's error.

    Without a process group (one process) this is a plain call.
    """
    if not is_distributed():
        return function(*args, **kwargs)
    payload = [None]
    error = None
    if torch.distributed.get_rank() == 0:
        try:
            payload = [("result", function(*args, **kwargs))]
        except Exception as raised:
            error = raised
            payload = [("error", _portable(raised))]
    torch.distributed.broadcast_object_list(payload, src=0)
    kind, value = payload[0]
    if kind == "error":
        if error is not None:
            raise error  # rank 0 keeps its own traceback
        raise value
    return value


def _portable(error: Exception) -> Exception:
    """The error itself if it survives pickling, else a RuntimeError with its text."""
    try:
        copy = pickle.loads(pickle.dumps(error))
        if str(copy) == str(error):
            return copy
    except Exception:
        pass
    return RuntimeError(f"{type(error).__name__}: {error}")


def leave_process_group() -> None:
    """Every rank leaves the process group together (a barrier, then its
    destruction), as PET's trainer does after its last epoch: a rank that exits
    while another still talks to it aborts in gloo's teardown ("terminate called
    without an active exception") instead of exiting with its own status. For a
    run that stops on an error every rank raised (:func:`on_rank_zero`)."""
    if not is_distributed():
        return
    try:
        torch.distributed.barrier()
    finally:
        torch.distributed.destroy_process_group()
