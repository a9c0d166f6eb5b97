"""Shared fixtures: shipped data, and a tiny PET checkpoint trained in the session."""

import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch


# an input check of the plugin that fails on its own (checks/guard.py) is an error
# under the tests, here and in every `mtt train` the tests start
os.environ["PET_TRANSFER_STRICT_CHECKS"] = "1"

TESTS = Path(__file__).resolve().parent
DATA = TESTS / "data"
# `../shared` beside the repository: present in CI and on developer machines only
SHARED = TESTS.parents[1] / "shared"

#: tiny PET hypers, shared by the session checkpoint and the option files of the tests
TINY_PET = {
    "cutoff": 4.0,
    "d_pet": 8,
    "d_head": 8,
    "d_node": 8,
    "d_feedforward": 8,
    "num_heads": 1,
    "num_attention_layers": 1,
    "num_gnn_layers": 1,
}


def mtt():
    """The ``mtt`` script of the environment running the tests."""
    return (str(Path(sys.executable).parent / "mtt"),)


def run_mtt(args, cwd, launcher=None, check=True, timeout=600):
    """Run a metatrain command in a subprocess, as a user would."""
    launcher = launcher or mtt()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    result = subprocess.run(
        [*launcher, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join([*launcher, *args])} failed ({result.returncode}):\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result


def python_launcher():
    """``python -S -m metatrain_pet_transfer``: site-packages reached through
    PYTHONPATH, so no ``.pth`` file is read and the launcher must install the bridge."""
    import sysconfig

    import _metatrain_pet_transfer_bridge
    import metatrain_pet_transfer

    # site-packages, plus where the two modules live (src/ for an editable install)
    paths = [sysconfig.get_paths()["purelib"]] + [
        str(Path(module.__file__).resolve().parents[level])
        for module, level in [
            (metatrain_pet_transfer, 1),
            (_metatrain_pet_transfer_bridge, 0),
        ]
    ]
    return (
        "env",
        f"PYTHONPATH={os.pathsep.join(dict.fromkeys(paths))}",
        sys.executable,
        "-S",
        "-m",
        "metatrain_pet_transfer",
    )


def train_tiny_pet(
    path: Path,
    epochs: int = 2,
    data: str = "xtb_small.xyz",
    energy: str = "energy_xtb",
    forces: str = "forces_xtb",
    stress=False,
) -> Path:
    """Train a tiny native PET on shipped frames and save it at ``path``."""
    from metatrain.pet import PET, Trainer
    from metatrain.utils.architectures import get_default_hypers
    from metatrain.utils.data import DatasetInfo, get_atomic_types, get_dataset
    from metatrain.utils.hypers import init_with_defaults
    from metatrain.utils.loss import LossSpecification
    from metatrain.utils.omegaconf import expand_dataset_config
    from omegaconf import OmegaConf

    torch.manual_seed(0)
    xyz = str(DATA / data)
    options = expand_dataset_config(
        OmegaConf.create(
            {
                "systems": {"read_from": xyz, "length_unit": "angstrom"},
                "targets": {
                    "energy": {
                        "key": energy,
                        "unit": "eV",
                        "forces": {"key": forces},
                        "stress": {"key": stress} if stress else False,
                    }
                },
            }
        )
    )[0]
    dataset, targets, _ = get_dataset(options)
    dataset_info = DatasetInfo(
        length_unit="angstrom",
        atomic_types=get_atomic_types(dataset),
        targets=targets,
    )
    hypers = get_default_hypers("pet")
    model_hypers = copy.deepcopy(hypers["model"])
    model_hypers.update(TINY_PET)
    model = PET(model_hypers, dataset_info)
    training = copy.deepcopy(hypers["training"])
    training.update({"num_epochs": epochs, "batch_size": 8, "learning_rate": 1e-3})
    training["loss"] = {"energy": init_with_defaults(LossSpecification)}
    trainer = Trainer(training)
    workdir = path.parent / "pretraining"
    workdir.mkdir(parents=True, exist_ok=True)
    trainer.train(
        model,
        dtype=torch.float32,
        devices=[torch.device("cpu")],
        train_datasets=[dataset],
        val_datasets=[dataset],
        checkpoint_dir=str(workdir),
    )
    trainer.save_checkpoint(model, path)
    return path


@pytest.fixture(scope="session")
def pretrained_checkpoint(tmp_path_factory) -> Path:
    """A tiny PET (``name: pet``) pre-trained on GFN2-xTB energies and forces."""
    return train_tiny_pet(tmp_path_factory.mktemp("pretrained") / "pretrained.ckpt")


@pytest.fixture(scope="session")
def pretrained_bulk_checkpoint(tmp_path_factory) -> Path:
    """A tiny PET pre-trained on periodic cells at GFN1-xTB, with stress."""
    return train_tiny_pet(
        tmp_path_factory.mktemp("pretrained-bulk") / "pretrained_bulk.ckpt",
        data="bulk_small.xyz",
        energy="energy_a",
        forces="forces_a",
        stress="stress_a",
    )


@pytest.fixture
def workdir(tmp_path, pretrained_checkpoint) -> Path:
    """A folder with the shipped data and the pretrained checkpoint, as a user has."""
    for name in ["pbe0_small.xyz", "xtb_small.xyz", "bulk_small.xyz"]:
        shutil.copy(DATA / name, tmp_path / name)
    shutil.copy(pretrained_checkpoint, tmp_path / "pretrained.ckpt")
    return tmp_path


def transfer_options(
    target="mtt::energy_pbe0", method="full", epochs=2, read_from="pretrained.ckpt"
):
    """A user's options.yaml for transferring the tiny PET to PBE0 labels."""
    return {
        "seed": 0,
        "architecture": {
            "name": "pet_transfer",
            "training": {
                "batch_size": 8,
                "num_epochs": epochs,
                "learning_rate": 1e-3,
                "log_interval": 1,
                "checkpoint_interval": 1,
                "num_workers": 0,
                "finetune": {"method": method, "read_from": read_from},
            },
        },
        "training_set": {
            "systems": {"read_from": "pbe0_small.xyz", "length_unit": "angstrom"},
            "targets": {
                target: {
                    "quantity": "energy",
                    "key": "energy_pbe0",
                    "unit": "eV",
                    "forces": {"key": "forces_pbe0"},
                    "stress": False,
                }
            },
        },
        "validation_set": 0.2,
        "test_set": 0.1,
    }


def write_yaml(path, content):
    import yaml

    path.write_text(yaml.safe_dump(content, sort_keys=False))
    return path


def periodic_transfer(folder: Path, pretrained_bulk: Path, gradient: str) -> dict:
    """Copy the periodic cells and the bulk checkpoint into ``folder``; return the
    options transferring GFN1-xTB (a) to GFN2-xTB (b) with ``stress`` or ``virial``."""
    shutil.copy(DATA / "bulk_small.xyz", folder)
    shutil.copy(pretrained_bulk, folder / "pretrained.ckpt")
    options = transfer_options(target="energy/gfn2", epochs=1)
    options["training_set"] = {
        "systems": {"read_from": "bulk_small.xyz", "length_unit": "angstrom"},
        "targets": {
            "energy/gfn2": {
                "quantity": "energy",
                "key": "energy_b",
                "unit": "eV",
                "forces": {"key": "forces_b"},
                gradient: {"key": f"{gradient}_b"},
            }
        },
    }
    return options


@pytest.fixture(scope="session")
def heads_run(tmp_path_factory) -> Path:
    """A folder where ``mtt train`` transferred the demo's xTB-pretrained PET to
    PBE0 with ``method: heads`` and no ``config`` (1 epoch): its ``model.pt`` serves
    the pretrained ``energy`` and the new ``energy/pbe0``, ``model.ckpt`` is the
    checkpoint. The demo's PET (not the tiny one) gives forces that move a molecule
    in a few MD steps."""
    from metatrain_pet_transfer.cli.demo import DEMO_DATA

    folder = tmp_path_factory.mktemp("heads-run")
    shutil.copy(DATA / "pbe0_small.xyz", folder / "pbe0_small.xyz")
    shutil.copy(DEMO_DATA / "pretrained_xtb.ckpt", folder / "pretrained.ckpt")
    write_yaml(folder / "options.yaml", transfer_options(method="heads", epochs=1))
    run_mtt(["train", "options.yaml", "-o", "model.pt"], cwd=folder)
    return folder


def ase_predictions(model, frames, level=None):
    """Energies and forces of an exported model in ASE: the default ``energy``, or
    the variant ``energy/<level>``."""
    import numpy as np
    from metatomic_ase import MetatomicCalculator

    variants = {"energy": level} if level else None
    calculator = MetatomicCalculator(str(model), variants=variants)
    energies, forces = [], []
    for atoms in frames:
        atoms = atoms.copy()
        atoms.calc = calculator
        energies.append(atoms.get_potential_energy())
        forces.append(atoms.get_forces())
    return np.array(energies), np.concatenate(forces)
