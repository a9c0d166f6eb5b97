"""Scoring a property from the predictions ``mtt eval`` writes, checked against its log.

Part of ``bench/properties.py``. Every row is scored by the same code on the same
frames: the MAE over components (a dipole's three, one per atom for charges, one per
frame for a gap), the error of |mu| for dipoles, and the |sum of predicted charges|
per molecule for charges.

``mtt eval`` writes a per-atom prediction named ``mtt::charges`` into the extended
XYZ header as ``Properties=species:S:1:pos:R:3:mtt::charges:R:1``, which ASE's reader
cannot split (the name holds colons): ``read_predictions`` parses the file itself,
with ASE's own parser for the per-structure ``key=value`` pairs.

``cross_check`` compares our MAE with the one ``mtt eval`` prints, which metatrain
computes per atom for every per-structure target (a dipole's and a gap's error
divided by the number of atoms; eV printed as meV), and raises ``CrossCheckError``
when they disagree or when the log has no MAE line for the target.
"""

import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
from transfer_campaign.scoring import CrossCheckError

from .targets import Property


# ------------------------------------------------------------------- mtt eval's files

#: one column of an extended XYZ ``Properties`` string: name (may hold ``::``),
#: type letter, count
COLUMN = re.compile(r"((?:[^:]|::)+):([SRIL]):(\d+)(?::|$)")


def columns_of(properties: str) -> List[tuple]:
    """``species:S:1:pos:R:3:mtt::charges:R:1`` -> [(name, type, count), ...]."""
    found, at = [], 0
    while at < len(properties):
        match = COLUMN.match(properties, at)
        if match is None:
            raise ValueError(f"cannot read the Properties string {properties!r}")
        found.append((match.group(1), match.group(2), int(match.group(3))))
        at = match.end()
    return found


def read_frames(path: Path) -> List[dict]:
    """Every frame of an extended XYZ file: ``symbols``, ``positions``, ``info``
    (per-structure values) and ``arrays`` (per-atom columns, by name)."""
    from ase.io.extxyz import key_val_str_to_dict

    lines = Path(path).read_text().splitlines()
    frames, at = [], 0
    while at < len(lines) and lines[at].strip():
        n_atoms = int(lines[at])
        info = key_val_str_to_dict(lines[at + 1])
        rows = [line.split() for line in lines[at + 2 : at + 2 + n_atoms]]
        arrays, column = {}, 0
        for name, kind, count in columns_of(info.pop("Properties")):
            values = [row[column : column + count] for row in rows]
            arrays[name] = values if kind == "S" else np.array(values, dtype=float)
            column += count
        frames.append(
            {
                "symbols": [row[0] for row in arrays["species"]],
                "positions": arrays["pos"],
                "info": info,
                "arrays": arrays,
            }
        )
        at += 2 + n_atoms
    return frames


def read_predictions(path: Path, prop: Property, reference) -> List[np.ndarray]:
    """The predicted property of every frame, as ``Property.labels`` gives labels.

    The geometries are checked against ``reference`` so a reordering can never pair
    the wrong labels.
    """
    frames = read_frames(path)
    if len(frames) != len(reference):
        raise ValueError(f"{path}: {len(frames)} frames, expected {len(reference)}")
    values = []
    for frame, atoms in zip(frames, reference, strict=True):
        if not np.allclose(frame["positions"], atoms.positions, atol=1e-5):
            raise ValueError(f"{path}: frames are not in the order of the eval set")
        where = frame["arrays"] if prop.per_atom else frame["info"]
        if prop.target not in where:
            raise ValueError(f"{path}: no '{prop.target}' prediction")
        values.append(np.asarray(where[prop.target], dtype=float).ravel())
    return values


# ------------------------------------------------------------------------- the errors


def errors(predicted, labels, prop: Property) -> Dict[str, float]:
    """MAE over components; for a dipole also the MAE of its norm; for charges also
    the mean |sum of predicted charges| per molecule (the labels sum to 0)."""
    deviations = np.concatenate(
        [np.abs(p - y) for p, y in zip(predicted, labels, strict=True)]
    )
    result = {"mae": float(deviations.mean())}
    if prop.vector:
        result["norm_mae"] = float(
            np.mean(
                [
                    abs(np.linalg.norm(p) - np.linalg.norm(y))
                    for p, y in zip(predicted, labels, strict=True)
                ]
            )
        )
    if prop.per_atom:
        result["charge_sum"] = float(np.mean([abs(p.sum()) for p in predicted]))
    return result


def split_errors(predicted, campaign, prop: Property) -> Dict[str, float]:
    """Validation and test errors from predictions on the val+test frames (the
    validation frames first)."""
    n_val = len(campaign.splits["val"])
    val = campaign.subset(campaign.splits["val"])
    test = campaign.subset(campaign.splits["test"])
    result = {
        "val_mae": errors(predicted[:n_val], prop.labels(val), prop)["mae"],
    }
    test_errors = errors(predicted[n_val:], prop.labels(test), prop)
    result.update({f"test_{key}": value for key, value in test_errors.items()})
    return result


def per_atom_mae(predicted, labels, frames, prop: Property) -> float:
    """The MAE as metatrain computes it: per-structure errors divided by the number
    of atoms, in the printed unit."""
    scale = [1.0 if prop.per_atom else 1.0 / len(atoms) for atoms in frames]
    deviations = np.concatenate(
        [s * np.abs(p - y) for s, p, y in zip(scale, predicted, labels, strict=True)]
    )
    return prop.logged_scale * float(deviations.mean())


def logged_mae(log: Path, prop: Property) -> Optional[tuple]:
    """The last (MAE, unit) ``mtt eval`` printed for the property's target."""
    pattern = rf"{re.escape(prop.target)} MAE \(per atom\): ([0-9.eE+-]+) ?([^ |\n]*)"
    found = re.findall(pattern, log.read_text(errors="replace"))
    return (float(found[-1][0]), found[-1][1]) if found else None


#: how far our MAE may be from the printed one: relative, plus a margin for the
#: five printed digits
RELATIVE, ABSOLUTE = 0.01, 1e-6


def cross_check(predicted, frames, prop: Property, log: Path) -> None:
    """Raise ``CrossCheckError`` unless our MAE on ``frames`` is the one that ``mtt
    eval`` printed in ``log``, in the unit expected."""
    theirs = logged_mae(log, prop)
    if theirs is None:
        raise CrossCheckError(
            f"{log}: no '{prop.target} MAE (per atom): ...' line to cross-check the "
            "scores against (did the log format change?)"
        )
    value, unit = theirs
    if unit != prop.logged_unit:
        raise CrossCheckError(
            f"{log}: {prop.target} MAE printed in '{unit}', expected "
            f"'{prop.logged_unit}'"
        )
    ours = per_atom_mae(predicted, prop.labels(frames), frames, prop)
    if abs(ours - value) > RELATIVE * abs(value) + ABSOLUTE:
        raise CrossCheckError(
            f"{log}: our {prop.target} MAE differs from the one mtt eval printed "
            f"(ours {ours:.6g}, printed {value:.6g} {unit}, per atom)"
        )


# ----------------------------------------------------------------- the mean baselines


def element_means(frames, values: Sequence[np.ndarray]) -> Dict[int, float]:
    """The mean per-atom value of every element over ``frames``."""
    numbers = np.concatenate([atoms.numbers for atoms in frames])
    stacked = np.concatenate(values)
    return {int(z): float(stacked[numbers == z].mean()) for z in np.unique(numbers)}


def predict_element_means(frames, means: Dict[int, float]) -> List[np.ndarray]:
    """Per atom, its element's mean (0 for an element the means do not know)."""
    return [
        np.array([means.get(int(z), 0.0) for z in atoms.numbers]) for atoms in frames
    ]
