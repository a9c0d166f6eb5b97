"""The test split, and the fingerprints that tie a restart to the run it continues.

metatrain hands the trainer the training and validation datasets only; the test
split is used after training, by the final evaluation. :func:`test_datasets` builds
it again from what ``mtt train`` wrote before calling the trainer (the expanded
options, ``options_restart.yaml``), so that its labels are checked before training
like the others':

- ``test_set: <fraction>`` (``0`` by default): a random part of each training file.
  metatrain splits the training dataset ``D`` in two ``Subset`` s of ``D``; the
  training one is what the trainer gets, so the test one is the rest of ``D``;
- ``test_set: {indices: ...}``: those structures of the (single) training file;
- test files: read again with metatrain's reader (``get_dataset``), with their
  ``indices``.

:func:`fingerprint` reduces a split to its number of structures and a digest of the
structures themselves (atomic types, positions, cell, periodicity; not the labels),
independent of their order. A restarted run compares its fingerprints with those its
checkpoint holds (:func:`compare_with_checkpoint`): another seed, other fractions or
changed files give other splits, and the run stops before training.
"""

import hashlib
from pathlib import Path
from typing import Dict, List, Optional

import torch


def test_datasets(options: Optional[dict], train_datasets: List) -> Optional[List]:
    """The test datasets of this run, one per training section, as ``mtt train``
    built them; ``None`` when the run has no ``options_restart.yaml``."""
    if options is None:
        return None
    test = options.get("test_set", 0)
    if isinstance(test, (int, float)):
        return [_rest_of_split(dataset) for dataset in train_datasets]
    if isinstance(test, dict) and "systems" not in test:  # indices of the training file
        from metatrain.utils.data import load_indices

        root = _root(train_datasets[0])
        return [torch.utils.data.Subset(root, load_indices(test["indices"]))]
    from metatrain.utils.data import get_dataset, load_indices

    datasets = []
    for section in test:
        dataset, _, _ = get_dataset(section)
        if "indices" in section:
            dataset = torch.utils.data.Subset(dataset, load_indices(section["indices"]))
        datasets.append(dataset)
    return datasets


def _rest_of_split(dataset):
    # metatrain's fraction split: Subset(D, train) for training, Subset(D, rest) for
    # test, every structure of D in one of them
    if not isinstance(dataset, torch.utils.data.Subset):
        return torch.utils.data.Subset(dataset, [])  # nothing was split off
    taken = set(int(i) for i in dataset.indices)
    rest = [i for i in range(len(dataset.dataset)) if i not in taken]
    return torch.utils.data.Subset(dataset.dataset, rest)


def _root(dataset):
    while isinstance(dataset, torch.utils.data.Subset):
        dataset = dataset.dataset
    return dataset


def fingerprint(datasets: Optional[List]) -> Optional[List]:
    """``[number of structures, digest]`` of the structures of ``datasets``."""
    if datasets is None:
        return None
    digests = []
    for dataset in datasets:
        for k in range(len(dataset)):
            digests.append(_structure_digest(dataset[k]._asdict()["system"]))
    whole = hashlib.sha256(b"".join(sorted(digests))).hexdigest()
    return [len(digests), whole]


def _structure_digest(system) -> bytes:
    digest = hashlib.sha256()
    for tensor, dtype in [
        (system.types, torch.int64),
        (system.positions, torch.float64),
        (system.cell, torch.float64),
        (system.pbc, torch.bool),
    ]:
        digest.update(tensor.detach().to("cpu", dtype).contiguous().numpy().tobytes())
    return digest.digest()


def compare_with_checkpoint(
    previous: Dict, current: Dict[str, Optional[List]], seed, restart_from
) -> List[str]:
    """Problems if this restart does not use the splits of the run it continues.

    :param previous: the record of the ``--restart`` checkpoint
        (:func:`..resume.read_record`)
    :param current: this run's fingerprints by split
    :param seed: this run's seed
    :param restart_from: the ``--restart`` file (for the message), or ``None``
    """
    differing = [
        name
        for name, fingerprint_then in previous["splits"].items()
        if fingerprint_then is not None
        and current.get(name) is not None
        and list(fingerprint_then) != list(current[name])
    ]
    if not differing:
        return []
    checkpoint = f"'{restart_from}'" if restart_from else "the --restart checkpoint"
    sizes = ", ".join(
        f"{name} {previous['splits'][name][0]} -> {current[name][0]} structures"
        for name in differing
    )
    options_then = (
        Path(previous["run_folder"]) / "options_restart.yaml"
        if previous.get("run_folder")
        else None
    )
    with_options = (
        f"restart with that run's expanded options, `mtt train {options_then} "
        f"--restart {restart_from or 'CHECKPOINT'}`"
        if options_then is not None
        else "restart with that run's options"
    )
    seed_then = previous.get("seed")
    if seed_then is not None and seed is not None and seed_then != seed:
        cause = (
            f"that run was split with `seed: {seed_then}`, this one with `seed: "
            f"{seed}` (metatrain draws a new seed when the options give none)"
        )
        fix = f"Set `seed: {seed_then}` in the options, or {with_options}"
    else:
        cause = (
            "the seed is the same, so the data files, their `indices` or the "
            "validation_set/test_set options changed"
        )
        fix = f"Use the data and split options of that run: {with_options}"
    listed = " and ".join(
        [", ".join(differing[:-1]), differing[-1]] if len(differing) > 1 else differing
    )
    sets = f"{listed} set holds" if len(differing) == 1 else f"{listed} sets hold"
    return [
        f"--restart: this run does not split the data as the run it continues "
        f"({checkpoint}): its {sets} other structures "
        f"({sizes}); {cause}. Continuing would train on other structures, and could "
        f"report as test errors structures that run trained on. {fix}"
    ]
