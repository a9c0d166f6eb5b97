"""The new properties: where their labels are, how metatrain declares them.

Part of ``bench/properties.py``. Each property is trained alone (one target per
run) as a metatrain generic target (``quantity: ""``) of ``pbe0_props.xyz``
(``bench/data/README.md``): the PBE0 dipole (a Cartesian vector per structure),
HOMO-LUMO gap (a scalar per structure) and Mulliken charges (a scalar per atom).
``unit`` is the string metatomic parses (``e*A`` is e·Å: metatomic converts it to
Debye by 4.803); ``shown`` is how tables print it.
"""

from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np


@dataclass(frozen=True)
class Property:
    """One new property: its label key, its metatrain target, its unit."""

    name: str
    target: str  # the metatrain target name (``mtt::...``)
    key: str  # the label in atoms.info (per structure) or atoms.arrays (per atom)
    unit: str  # a unit string metatomic accepts
    shown: str  # the unit in tables
    per_atom: bool = False
    vector: bool = False  # a Cartesian vector (rank 1) rather than a scalar
    #: the same property at the pre-training level (GFN2-xTB), if the data has it:
    #: its error against the PBE0 labels is the plots' reference line
    xtb_key: Optional[str] = None

    def section(self) -> dict:
        """The target's entry in an options.yaml ``targets`` section."""
        kind = {"cartesian": {"rank": 1}} if self.vector else "scalar"
        return {
            "quantity": "",
            "key": self.key,
            "unit": self.unit,
            "type": kind,
            "sample_kind": "atom" if self.per_atom else "system",
        }

    @property
    def logged_unit(self) -> str:
        """The unit ``mtt eval`` prints its MAE in (eV becomes meV)."""
        return "meV" + self.unit[2:] if self.unit.startswith("eV") else self.unit

    @property
    def logged_scale(self) -> float:
        """How many printed units make one of ours."""
        return 1000.0 if self.unit.startswith("eV") else 1.0

    def labels(self, frames, key: Optional[str] = None) -> List[np.ndarray]:
        """The label of every frame: a 3-vector, a number (0-d), or one per atom."""
        key = key or self.key
        return [
            np.asarray(
                atoms.arrays[key] if self.per_atom else atoms.info[key], dtype=float
            ).ravel()
            for atoms in frames
        ]


PROPERTIES: Dict[str, Property] = {
    "dipole": Property(
        "dipole",
        "mtt::dipole",
        "dipole_pbe0",
        "e*A",
        "e·Å",
        vector=True,
        xtb_key="dipole_xtb",
    ),
    "gap": Property("gap", "mtt::gap", "gap_pbe0", "eV", "eV"),
    "charges": Property(
        "charges",
        "mtt::charges",
        "charges_pbe0",
        "e",
        "e",
        per_atom=True,
        xtb_key="charges_xtb",
    ),
}


def check_labels(frames, prop: Property, path) -> None:
    """Every frame has the property's label, with the right shape and finite."""
    for index, atoms in enumerate(frames):
        where = atoms.arrays if prop.per_atom else atoms.info
        if prop.key not in where:
            raise SystemExit(f"{path}: frame {index} has no '{prop.key}' label")
        value = np.asarray(where[prop.key], dtype=float).ravel()
        size = len(atoms) if prop.per_atom else 3 if prop.vector else 1
        if value.size != size or not np.all(np.isfinite(value)):
            raise SystemExit(
                f"{path}: frame {index}: '{prop.key}' must be {size} finite "
                f"number(s), not {value.tolist()}"
            )
