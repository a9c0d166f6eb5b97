"""Copy the small data files the tests ship from ``../shared/data`` (provenance).

The files are subsets of the project's shared datasets (``../shared/data/README.md``:
GFN2-xTB and PBE0/def2-SVP labels on H/C/N/O molecules, GFN1-xTB periodic cells).
Run from the repository root: ``python scripts/copy_shared_data.py``.
"""

from pathlib import Path

import ase.io
import numpy as np


SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TESTS = Path(__file__).resolve().parents[1] / "tests" / "data"


def every_nth(frames, count):
    step = max(1, len(frames) // count)
    return frames[::step][:count]


def main():
    TESTS.mkdir(parents=True, exist_ok=True)

    xtb = [
        f
        for f in ase.io.read(SHARED / "pretrain_xtb.xyz", ":")
        if f.info.get("source") == "md"
    ]
    ase.io.write(TESTS / "xtb_small.xyz", every_nth(xtb, 48))

    pbe0 = every_nth(ase.io.read(SHARED / "pbe0.xyz", ":"), 40)
    for frame in pbe0:
        # a per-atom scalar derived from real labels, for generic-target tests
        frame.arrays["force_norm_xtb"] = np.linalg.norm(
            frame.arrays["forces_xtb"], axis=1
        )
    ase.io.write(TESTS / "pbe0_small.xyz", pbe0)

    # periodic cells labelled at GFN1-xTB (a) and GFN2-xTB (b); metatrain's ASE
    # reader takes stress as a 3x3 matrix: expand ASE's Voigt order
    bulk = every_nth(ase.io.read(SHARED / "bulk_b.xyz", ":"), 24)
    for frame in bulk:
        for level in "ab":
            xx, yy, zz, yz, xz, xy = frame.info[f"stress_{level}"]
            frame.info[f"stress_{level}"] = np.array(
                [[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]]
            ).reshape(9)
    ase.io.write(TESTS / "bulk_small.xyz", bulk)


if __name__ == "__main__":
    main()
