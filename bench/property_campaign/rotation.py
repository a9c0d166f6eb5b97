"""How far an exported dipole model is from rotating with the molecule.

Part of ``bench/properties.py``. A dipole must rotate with the molecule:
mu(R x) = R mu(x). The exported ``model.pt`` is evaluated through metatomic (the ASE
calculator's ``run_model``, as a user of the model would) on every test molecule
and on ``count`` random rotations of it (uniform on SO(3), seeded, about the
molecule's centroid: a dipole model of a neutral molecule does not depend on the
origin); the error is the mean |mu(R x) - R mu(x)| over components, molecules and
rotations, the unit of the component MAE it is compared with. Each structure is
evaluated alone, so that the float32 differences between batch compositions (PET
pads every structure of a batch to the batch's largest neighbour count) do not
count as rotation error. The unrotated predictions must be those ``mtt eval`` wrote
(the same model, evaluated twice; they differ by those float32 differences only:
for a scratch model trained at lr 3e-3, up to 5e-5 e·Å one frame at a time against
``mtt eval``'s batches of 8, and 3e-4 in batches of 16).
"""

from pathlib import Path
from typing import List

import numpy as np

from .targets import Property


#: how far metatomic's unrotated predictions may be from mtt eval's (float32 and
#: batching; two different trained models differ by their MAE, 0.02 e·Å or more)
SAME_MODEL = 1e-3


def predict(calculator, frames, prop: Property) -> List[np.ndarray]:
    """The model's ``prop`` for every frame, per structure, one frame at a time."""
    from metatomic.torch import ModelOutput

    output = ModelOutput(quantity="", unit=prop.unit, sample_kind="system")
    values = []
    for atoms in frames:
        block = calculator.run_model(atoms, {prop.target: output})[prop.target].block()
        values.append(block.values.detach().double().numpy().ravel())
    return values


def rotation_error(
    model: Path,
    frames,
    prop: Property,
    count: int,
    seed: int,
    written: List[np.ndarray],
) -> float:
    """The mean |mu(R x) - R mu(x)| of ``model`` over ``frames`` and ``count``
    rotations each; ``written``: what ``mtt eval`` predicted for ``frames``."""
    from metatomic_ase import MetatomicCalculator
    from scipy.spatial.transform import Rotation

    calculator = MetatomicCalculator(str(model), device="cpu")
    plain = predict(calculator, frames, prop)
    off = max(float(np.abs(a - b).max()) for a, b in zip(plain, written, strict=True))
    if off > SAME_MODEL:
        raise RuntimeError(
            f"{model}: metatomic's predictions differ from mtt eval's by {off:.2g} "
            f"{prop.shown}: not the same model"
        )
    rotations = Rotation.random(count * len(frames), random_state=seed).as_matrix()
    rotated, expected = [], []
    for index, atoms in enumerate(frames):
        centre = atoms.positions.mean(axis=0)
        for matrix in rotations[index * count : (index + 1) * count]:
            copy = atoms.copy()
            copy.positions = (atoms.positions - centre) @ matrix.T + centre
            rotated.append(copy)
            expected.append(matrix @ plain[index])
    predicted = predict(calculator, rotated, prop)
    deviations = np.concatenate(
        [np.abs(p - e) for p, e in zip(predicted, expected, strict=True)]
    )
    return float(deviations.mean())
