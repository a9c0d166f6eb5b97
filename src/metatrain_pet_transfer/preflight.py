"""Checks of a run's inputs before any training step (filled in by the reliability work)."""

from typing import List


def check_run_inputs(
    model, hypers: dict, train_datasets: List, val_datasets: List, checkpoint_dir: str
) -> None:
    """Stop the run with one clear message if its inputs cannot give a valid training.

    Called by the trainer before alignment and before the first step.
    """
