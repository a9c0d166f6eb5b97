"""The transferred model in a second simulation engine: i-PI, at the new level.

i-PI (``pip install ipi``, in the ``test`` extra) runs metatomic models in-process
through its ``metatomic`` driver (``<ffdirect>``), which selects an output variant
with ``energy_variant``. The test writes the ``input.xml`` a user would, runs the
``i-pi`` command, and reads its ``out`` file: the potential is the new level's and
the total energy is conserved in NVE. (The single-level model of ``mtt-transfer
export``, for engines without variants, is checked in ``test_export.py``.) One run
costs ~10 s of CPU, most of it importing torch and TorchScript's first calls.
"""

import os
import subprocess
import sys
from pathlib import Path

import ase.io
import numpy as np
import pytest

from conftest import DATA


#: 5 fs: enough for the molecule's potential energy to change by ~0.1 eV
STEPS = 20

INPUT_XML = """<simulation verbosity="low" safe_stride="1000">
  <output prefix="md">
    <properties stride="1" filename="out">[ step, conserved{{electronvolt}},
      potential{{electronvolt}}, kinetic_md{{electronvolt}} ]</properties>
  </output>
  <total_steps>{steps}</total_steps>
  <prng><seed>12345</seed></prng>
  <ffdirect name="pet">
    <pes>metatomic</pes>
    <parameters>{{template: start.xyz, model: {model}{variant}}}</parameters>
  </ffdirect>
  <system>
    <initialize nbeads="1">
      <file mode="ase" units="angstrom">start.xyz</file>
      <velocities mode="thermal" units="kelvin">300</velocities>
    </initialize>
    <forces><force forcefield="pet"/></forces>
    <motion mode="dynamics">
      <dynamics mode="nve"><timestep units="femtosecond">0.25</timestep></dynamics>
    </motion>
  </system>
</simulation>
"""


def ipi_command():
    script = Path(sys.executable).parent / "i-pi"
    assert script.is_file(), (
        "i-PI is not installed in this environment: `pip install -e .[test]` "
        "installs it (package `ipi`)"
    )
    return str(script)


def molecule_in_a_box(folder: Path, frame: int = 0):
    """A molecule of the shipped data in a 15 Å box (i-PI needs a cell; the
    model's 4 Å cutoff never reaches the periodic images)."""
    atoms = ase.io.read(DATA / "pbe0_small.xyz", frame)
    atoms.info = {}
    for key in list(atoms.arrays):
        if key not in ("numbers", "positions"):
            del atoms.arrays[key]
    atoms.set_cell([15.0, 15.0, 15.0])
    atoms.center()
    atoms.pbc = True
    ase.io.write(folder / "start.xyz", atoms)
    return atoms


def run_ipi(folder: Path, model: Path, variant=None) -> np.ndarray:
    """NVE in i-PI; the ``(steps + 1, 4)`` table of step, conserved, potential and
    kinetic energy (eV)."""
    (folder / "input.xml").write_text(
        INPUT_XML.format(
            steps=STEPS,
            model=model,
            variant=f", energy_variant: {variant}" if variant else "",
        )
    )
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    result = subprocess.run(
        [ipi_command(), "input.xml"],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = np.loadtxt(folder / "md.out", ndmin=2)
    assert table.shape == (STEPS + 1, 4), table.shape
    return table


def ase_energy(model: Path, atoms, variant=None) -> float:
    from metatomic_ase import MetatomicCalculator

    atoms = atoms.copy()
    atoms.calc = MetatomicCalculator(
        str(model), variants={"energy": variant} if variant else None
    )
    return atoms.get_potential_energy()


def assert_nve_conserves_energy(table: np.ndarray) -> None:
    conserved, potential = table[:, 1], table[:, 2]
    assert np.all(np.isfinite(conserved))
    # the molecule moves: its potential energy changes by much more than the
    # conserved quantity, which a wrong force (or a force of another level) breaks
    assert np.ptp(potential) > 1e-3
    assert np.ptp(conserved) < 0.02 * np.ptp(potential), (
        np.ptp(conserved),
        np.ptp(potential),
    )


@pytest.fixture
def box(tmp_path):
    return tmp_path, molecule_in_a_box(tmp_path)


def test_ipi_runs_the_new_level_selected_as_a_variant(heads_run, box):
    folder, atoms = box
    model = heads_run / "model.pt"
    table = run_ipi(folder, model, variant="pbe0")

    new_level = ase_energy(model, atoms, "pbe0")
    pretrained_level = ase_energy(model, atoms)
    assert table[0, 2] == pytest.approx(new_level, abs=1e-3)
    assert abs(table[0, 2] - pretrained_level) > 1.0
    assert_nve_conserves_energy(table)
