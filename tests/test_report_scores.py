"""``mtt-transfer report``'s errors against values computed by hand.

``Comparison.metrics`` gives energies per atom, forces and stresses per Cartesian
component; ``metrics_table`` shows them in meV when the labels are in eV.
"""

import math

import numpy as np
import pytest

from metatrain_pet_transfer.cli.report.evaluation import Comparison, metrics_table
from metatrain_pet_transfer.cli.report.labels import EnergyTarget


def comparison(unit="eV", stress=True):
    target = EnergyTarget("energy/pbe0", "energy_pbe0", "forces_pbe0", None, unit)
    return Comparison(
        model="after",
        target=target,
        # 2 structures of 2 and 4 atoms: energy errors 1.0 and -0.8 eV,
        # that is 0.5 and -0.2 per atom
        n_atoms=np.array([2.0, 4.0]),
        counts=np.array([[2.0], [4.0]]),
        elements=(1,),
        energy=np.array([1.0, 2.0]),
        energy_ref=np.array([0.0, 2.8]),
        forces=np.array([0.1, -0.3, 0.0, 0.2]),
        forces_ref=np.zeros(4),
        stress=np.array([1.0, 2.0]) if stress else None,
        stress_ref=np.array([1.0, 0.0]) if stress else None,
    )


def test_metrics_are_per_atom_and_per_component():
    metrics = comparison().metrics()
    assert metrics == pytest.approx(
        {
            "energy MAE": (0.5 + 0.2) / 2,  # per atom (per structure: 0.9)
            "energy RMSE": math.sqrt((0.25 + 0.04) / 2),
            "forces MAE": (0.1 + 0.3 + 0.0 + 0.2) / 4,
            "forces RMSE": math.sqrt((0.01 + 0.09 + 0.0 + 0.04) / 4),
            "stress MAE": (0.0 + 2.0) / 2,
            "stress RMSE": math.sqrt(4.0 / 2),
        },
        abs=1e-12,
    )


def test_metrics_table_shows_mev_for_ev_labels():
    table = metrics_table([comparison(stress=False)], markdown=True)
    assert table.splitlines() == [
        "| target | model | energy MAE | force MAE |",
        "|---|---|---|---|",
        "| energy/pbe0 | after | 350.0 meV/atom | 150.0 meV/Å |",
    ]
    # other units are shown as they are, unscaled, with three significant digits
    # under 1 (a Hartree error is 0.00x: ".1f" showed "0.0 Hartree/atom")
    other = comparison(unit="kcal/mol")
    text = metrics_table([other])
    assert "0.35 kcal/mol/atom" in text
    assert "0.15 kcal/mol/Å " in text
    assert "1.0 kcal/mol/Å³" in text
    hartree = comparison(unit="Hartree")
    hartree.energy = hartree.energy_ref + np.array([0.003, 0.0])
    assert "0.00075 Hartree/atom" in metrics_table([hartree])  # 0.003 / 2 atoms / 2
