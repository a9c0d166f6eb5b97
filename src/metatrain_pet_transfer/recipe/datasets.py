"""The datasets of a run, as the plugin's passes read them: which targets they
label, their systems, and batches fed to a model as ``mtt eval`` feeds it (the
alignment, the kept heads' teacher labels, the probe start, the input checks)."""

from typing import Dict, Iterator, List, Union

import torch
from metatomic.torch import System
from metatrain.utils.data import CollateFn, Dataset, TargetInfo, unpack_batch
from metatrain.utils.neighbor_lists import (
    get_requested_neighbor_lists,
    get_system_with_neighbor_lists_transform,
)
from metatrain.utils.transfer import batch_to
from torch.utils.data import DataLoader


DatasetLike = Union[Dataset, torch.utils.data.Subset]


def trained_targets(model, datasets: List[DatasetLike]) -> Dict[str, TargetInfo]:
    """Targets of the model for which the datasets of this run have labels."""
    present = set()
    for dataset in datasets:
        if len(dataset) > 0:
            present.update(dataset[0]._asdict().keys())
    return {
        name: info
        for name, info in model.dataset_info.targets.items()
        if name in present
    }


def systems_of(datasets: List[DatasetLike]) -> Iterator[System]:
    """Every structure of ``datasets``, in order (read one sample at a time)."""
    for dataset in datasets:
        for index in range(len(dataset)):
            yield dataset[index]._asdict()["system"]


def evaluation_batches(
    model,
    datasets: List[DatasetLike],
    batch_size: int,
    dtype: torch.dtype,
    target_keys: List[str],
):
    """Batches of ``datasets``, in order, as ``mtt eval`` feeds a model: systems
    with the model's neighbor lists, on its device, in ``dtype``.

    :yield: ``(systems, targets, extra_data)`` per batch (``targets`` holds the
        ``target_keys`` labels)
    """
    device = next(model.parameters()).device
    collate = CollateFn(
        target_keys=target_keys,
        callables=[
            get_system_with_neighbor_lists_transform(
                get_requested_neighbor_lists(model)
            )
        ],
    )
    for dataset in datasets:
        if len(dataset) == 0:
            continue
        for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=collate):
            systems, targets, extra_data = unpack_batch(batch)
            yield batch_to(systems, targets, extra_data, dtype=dtype, device=device)
