"""The demo's run folder contents: shipped data, ``options.yaml`` as a user writes it.

The data (``data/``: a PET pre-trained on GFN2-xTB, PBE0 training and held-out
frames) ships inside the package and is made by ``scripts/make_demo_checkpoint.py``.
"""

import copy
from pathlib import Path


DEMO_DATA = Path(__file__).resolve().parent / "data"
CHECKPOINT, TRAIN_XYZ, TEST_XYZ = (
    "pretrained_xtb.ckpt",
    "pbe0_train.xyz",
    "pbe0_test.xyz",
)
TARGET, LEVEL = "mtt::energy_pbe0", "pbe0"

#: epochs of the transfer: the story is visible, the demo stays under ~3 min on
#: 2 CPU cores (see the report of issue 6 for the timing)
DEFAULT_EPOCHS = 60
DEFAULT_MD_STEPS = 400
#: the molecule of the MD run (a held-out geometry of it)
MD_MOLECULE = "CH3CH2OH"
#: force MAE between GFN2-xTB and PBE0/def2-SVP on these geometries (data README)
LEVEL_GAP_FORCES = 320  # meV/A

_TARGETS = {
    TARGET: {
        "quantity": "energy",
        "key": "energy_pbe0",
        "unit": "eV",
        "forces": {"key": "forces_pbe0"},
        "stress": False,
    }
}


def transfer_options(epochs: int) -> dict:
    """The ``options.yaml`` of the transfer, as a user would write it."""
    return {
        "seed": 0,
        "architecture": {
            "name": "pet_transfer",
            "training": {
                "batch_size": 8,
                "num_epochs": epochs,
                "learning_rate": 0.0002,
                "log_interval": 1,
                "checkpoint_interval": 10000,
                "num_workers": 0,
                "finetune": {"method": "full", "read_from": CHECKPOINT},
            },
        },
        "training_set": {
            "systems": {"read_from": TRAIN_XYZ, "length_unit": "angstrom"},
            "targets": copy.deepcopy(_TARGETS),
        },
        "validation_set": 0.2,
        "test_set": {
            "systems": {"read_from": TEST_XYZ, "length_unit": "angstrom"},
            "targets": copy.deepcopy(_TARGETS),
        },
    }


def with_parent_paths(options: dict) -> dict:
    """The same options, run from a sub-folder of the run folder."""
    options = copy.deepcopy(options)
    finetune = options["architecture"]["training"]["finetune"]
    finetune["read_from"] = f"../{finetune['read_from']}"
    for section in ("training_set", "test_set"):
        systems = options[section]["systems"]
        systems["read_from"] = f"../{systems['read_from']}"
    return options


OPTIONS_HEADER = """\
# Written by `mtt-transfer demo`: transfer of a small PET pre-trained on GFN2-xTB
# to PBE0/def2-SVP labels. The new target {target} gets a new head and
# composition model, started from the pretrained `energy` head plus a per-element
# shift. Re-run it in this folder with:  mtt train options.yaml
"""


def write_yaml(path: Path, options: dict, header: str = "") -> None:
    import yaml

    path.write_text(header + yaml.safe_dump(options, sort_keys=False))
