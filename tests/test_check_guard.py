"""The run-input checks lose only the rule that fails (``checks/guard.py``).

A rule that raises on an input it did not foresee (here: the neighbour-list step of
the isolated-atom rule) is skipped with one warning, and every finding of the other
rules of the same section is kept. Under the test suite (``conftest.py`` sets
``PET_TRANSFER_STRICT_CHECKS=1``) the same failure is an error.
"""

import logging
from types import SimpleNamespace

import ase.io
import numpy as np
import pytest

from conftest import DATA
from metatrain_pet_transfer.checks import labels
from metatrain_pet_transfer.checks.guard import STRICT_ENV
from metatrain_pet_transfer.checks.run_inputs import DatasetSection


def read_dataset(path):
    from metatrain.utils.data import get_dataset
    from metatrain.utils.omegaconf import expand_dataset_config
    from omegaconf import OmegaConf

    options = {
        "systems": {"read_from": str(path), "length_unit": "angstrom"},
        "targets": {
            "energy": {
                "key": "energy_pbe0",
                "unit": "eV",
                "forces": {"key": "forces_pbe0"},
                "stress": False,
            }
        },
    }
    dataset, targets, _ = get_dataset(
        expand_dataset_config(OmegaConf.create(options))[0]
    )
    return dataset, targets


@pytest.fixture
def broken_labels(tmp_path):
    """Six structures: a NaN energy in structure 2, an infinite force in 4."""
    frames = ase.io.read(DATA / "pbe0_small.xyz", ":6")
    frames[2].info["energy_pbe0"] = float("nan")
    frames[4].arrays["forces_pbe0"][0, 1] = np.inf
    path = tmp_path / "broken.xyz"
    ase.io.write(path, frames)
    dataset, targets = read_dataset(path)
    section = DatasetSection("training_set", None, {"training": [dataset]})
    model = SimpleNamespace(
        dataset_info=SimpleNamespace(targets=targets, length_unit="angstrom"),
        cutoff=4.0,
    )
    return section, model


def broken_neighbour_list(system, cutoff):
    raise RuntimeError("neighbour list broke")


def test_a_failing_rule_loses_only_itself(broken_labels, monkeypatch, caplog):
    section, model = broken_labels
    found = labels.check_labels(section, model)
    assert len(found) == 2, found
    assert "the energy is NaN in structure 2" in found[0]
    assert "infinite label in structure 4" in found[1]

    monkeypatch.delenv(STRICT_ENV)
    monkeypatch.setattr(labels, "_isolated_atoms", broken_neighbour_list)
    with caplog.at_level(logging.WARNING):
        kept = labels.check_labels(section, model)
    # before the guard was per rule, this section's findings were all dropped
    assert kept == found
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings  # one per rule, not one per structure
    assert "could not run its input check 'isolated atoms'" in warnings[0]
    assert "RuntimeError: neighbour list broke" in warnings[0]


def test_under_the_tests_a_failing_rule_is_an_error(broken_labels, monkeypatch):
    section, model = broken_labels
    monkeypatch.setattr(labels, "_isolated_atoms", broken_neighbour_list)
    with pytest.raises(RuntimeError, match="neighbour list broke"):
        labels.check_labels(section, model)
