"""Bad input stops ``mtt train`` before any training step, with one clear message,
and every file the user had is left as it was.

One table: each case changes the options and/or the data of a working transfer run,
and lists the fragments the message must contain (the option, key or file at fault,
and what to do). docs/reliability.md shows the same table.
"""

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import ase.io
import numpy as np
import pytest
import torch

from conftest import run_mtt, transfer_options, write_yaml


T = "mtt::energy_pbe0"


@dataclass
class Case:
    name: str
    change: Callable[[dict, Path], None]
    """changes the options (a dict) and/or the files of the run folder"""
    expected: List[str]
    """fragments of the error message"""
    edit_yaml: Optional[Callable[[str], str]] = None
    """changes the text of options.yaml, for what a dict cannot hold"""
    args: Tuple[str, ...] = ()
    """more arguments of `mtt train options.yaml`"""
    absent_after: Tuple[str, ...] = ()
    """files the failing run must not have created"""
    host_message: bool = False
    """metatrain's own message (or pydantic's frame): the plugin does not catch
    it first"""


def target(options, name=T):
    return options["training_set"]["targets"][name]


def training(options):
    return options["architecture"]["training"]


def edit_frames(folder, edit, name="pbe0_small.xyz"):
    frames = ase.io.read(folder / name, ":")
    edit(frames)
    ase.io.write(folder / name, frames)


def second_target(options, **changes):
    """``energy/xtb``: the xTB labels of the same file, as another energy target."""
    options["training_set"]["targets"]["energy/xtb"] = {
        "quantity": "energy",
        "key": "energy_xtb",
        "unit": "eV",
        "forces": {"key": "forces_xtb"},
        "stress": False,
        **changes,
    }


# --------------------------------------------------------------------------- changes


def missing_checkpoint(options, folder):
    training(options)["finetune"]["read_from"] = "no/such/model.ckpt"


def truncated_checkpoint(options, folder):
    data = (folder / "pretrained.ckpt").read_bytes()
    (folder / "truncated.ckpt").write_bytes(data[: len(data) // 2])
    training(options)["finetune"]["read_from"] = "truncated.ckpt"


def other_architecture(options, folder):
    import metatomic.torch  # noqa: F401

    checkpoint = torch.load(folder / "pretrained.ckpt", weights_only=False)
    checkpoint["architecture_name"] = "soap_bpnn"
    torch.save(checkpoint, folder / "not_pet.ckpt")
    training(options)["finetune"]["read_from"] = "not_pet.ckpt"


def conflicting_hypers(options, folder):
    options["architecture"]["model"] = {"d_pet": 16}


def invalid_training_options(options, folder):
    training(options)["finetune"]["method"] = "fulll"
    training(options)["num_epochs"] = -1
    training(options)["checkpoint_interval"] = 0


def duplicate_target_yaml(text):
    # a second `mtt::energy_pbe0:` section in the same mapping
    return text.replace(
        "  targets:\n", "  targets:\n    mtt::energy_pbe0:\n      key: energy_xtb\n"
    )


def same_energy_twice(options, folder):
    options["training_set"]["targets"]["energy/pbe0"] = dict(target(options))


def absent_energy_key(options, folder):
    target(options)["key"] = "energy_pbe"


def exported_model_as_checkpoint(options, folder):
    training(options)["finetune"]["read_from"] = "model.pt"


def length_unit_bohr(options, folder):
    options["training_set"]["systems"]["length_unit"] = "bohr"


def pretrained_target_in_hartree(options, folder):
    options["training_set"]["targets"] = {
        "energy": {**target(options), "unit": "Hartree"}
    }


def unknown_unit(options, folder):
    target(options)["unit"] = "eV_per_thing"


def empty_file(options, folder):
    (folder / "empty.xyz").write_text("")
    options["training_set"]["systems"]["read_from"] = "empty.xyz"


def empty_validation(options, folder):
    options["validation_set"] = 0.01


def no_training_structure(options, folder):
    options["validation_set"] = 0.5
    options["test_set"] = 0.5


def absent_forces(options, folder):
    target(options)["forces"] = {"key": "forces_pbe"}
    second_target(options)
    # forces left to metatrain's default, `forces: {key: forces}`: not in the file
    del target(options, "energy/xtb")["forces"]

    def edit(frames):
        for i, atoms in enumerate(frames):
            if i not in (4, 9, 17):
                atoms.arrays["forces_some"] = atoms.arrays["forces_xtb"].copy()

    edit_frames(folder, edit)
    options["training_set"]["targets"]["mtt::energy_c"] = {
        "quantity": "energy",
        "key": "energy_xtb",
        "unit": "eV",
        "forces": {"key": "forces_some"},
        "stress": False,
    }


def broken_labels(options, folder):
    def edit(frames):
        frames[5].info["energy_pbe0"] = float("nan")
        frames[7].arrays["forces_pbe0"][1, 2] = float("inf")
        frames[9].arrays["forces_pbe0"][0, 0] = float("nan")

    edit_frames(folder, edit)
    # a per-atom scalar named as forces
    second_target(options, forces={"key": "force_norm_xtb"})


def stress_and_virial_of_molecules(options, folder):
    def edit(frames):
        for atoms in frames:
            atoms.info["stress_pbe0"] = np.ones(9)
            atoms.info["virial_xtb"] = np.ones(9)

    edit_frames(folder, edit)
    target(options)["stress"] = {"key": "stress_pbe0"}
    second_target(options, virial={"key": "virial_xtb"})


def stress_of_wrong_shape(options, folder):
    def edit(frames):
        for i, atoms in enumerate(frames):
            atoms.cell = [12.0, 12.0, 12.0]
            atoms.pbc = True
            atoms.center()
            atoms.info["stress_pbe0"] = np.zeros(4 if i == 3 else 9)

    edit_frames(folder, edit)
    target(options)["stress"] = {"key": "stress_pbe0"}


def isolated_atom(options, folder):
    def edit(frames):
        frames[0].positions[2] += [20.0, 0.0, 0.0]  # 20 Å away, same force label

    edit_frames(folder, edit)


def finished_run_test_indices(folder) -> List[int]:
    """The test structures of the run that wrote ``model.ckpt`` (seed 0, the same
    fractions as every case's options)."""
    found = folder.glob("outputs/*/*/indices/test.txt")
    (path,) = [p for p in found if "2026-01-01" not in str(p)]
    return [int(i) for i in np.atleast_1d(np.loadtxt(path, dtype=int))]


def broken_labels_in_test_fraction(options, folder):
    test = finished_run_test_indices(folder)

    def edit(frames):
        for i in test:
            frames[i].arrays["forces_pbe0"][0, 1] = float("inf")

    edit_frames(folder, edit)
    return test


def broken_labels_in_test_file(options, folder):
    frames = ase.io.read(folder / "pbe0_small.xyz", ":10")
    frames[2].info["energy_pbe0"] = float("nan")
    frames[4].arrays["forces_pbe0"][1, 0] = float("-inf")
    ase.io.write(folder / "pbe0_test.xyz", frames)
    options["test_set"] = {
        "systems": {"read_from": "pbe0_test.xyz", "length_unit": "angstrom"},
        "targets": {T: dict(target(options))},
    }


def output_over_pretrained(options, folder):
    pass  # `-o pretrained.pt`: its checkpoint would be pretrained.ckpt


def more_epochs(options, folder):
    training(options)["num_epochs"] = 2


def restart_with_other_seed(options, folder):
    more_epochs(options, folder)
    options["seed"] = 1


def truncated_restart_file(options, folder):
    data = (folder / "model.ckpt").read_bytes()
    (folder / "truncated.ckpt").write_bytes(data[: len(data) // 2])


class RunsCode:
    """Unpickling this object creates the file ``pwned``."""

    def __reduce__(self):
        return (os.system, ("touch pwned",))


def code_running_restart_file(options, folder):
    import metatomic.torch  # noqa: F401

    checkpoint = torch.load(folder / "model.ckpt", weights_only=False)
    checkpoint["payload"] = RunsCode()
    torch.save(checkpoint, folder / "payload.ckpt")


CASES = [
    # the pretrained checkpoint (training.finetune.read_from)
    Case(
        "checkpoint-missing",
        missing_checkpoint,
        ["training.finetune.read_from", "'no/such/model.ckpt' does not exist"],
    ),
    Case(
        "checkpoint-truncated",
        truncated_checkpoint,
        ["training.finetune.read_from", "'truncated.ckpt'", "truncated"],
    ),
    Case(
        "checkpoint-other-architecture",
        other_architecture,
        ["'not_pet.ckpt'", "written by the 'soap_bpnn' architecture"],
    ),
    Case(
        "checkpoint-is-an-exported-model",
        exported_model_as_checkpoint,
        [
            "training.finetune.read_from: 'model.pt' is an exported TorchScript "
            "model, not a checkpoint",
            "Its checkpoint is the .ckpt beside it: 'model.ckpt'",
        ],
    ),
    Case(
        "model-hypers-conflict",  # metatrain's message
        conflicting_hypers,
        ["Mismatched hypers: ['d_pet']"],
        host_message=True,
    ),
    # training options
    Case(
        "training-options",
        invalid_training_options,
        [
            "training.finetune.method: unknown method 'fulll'",
            "'full', 'lora', 'heads'",
            "training.num_epochs",
            "greater than or equal to 0",
            "training.checkpoint_interval",
        ],
        host_message=True,
    ),
    # targets
    Case(
        "duplicate-target-name",  # metatrain (OmegaConf) message
        lambda options, folder: None,
        ["found duplicate key mtt::energy_pbe0", "options.yaml"],
        edit_yaml=duplicate_target_yaml,
        host_message=True,
    ),
    Case(
        "same-energy-target-twice",
        same_energy_twice,
        ["training_set.targets: 'mtt::energy_pbe0' and 'energy/pbe0'"],
    ),
    Case(
        "target-key-absent",
        absent_energy_key,
        [
            f"training_set.targets['{T}'].key: the first structure of "
            "'pbe0_small.xyz' has no energy 'energy_pbe'",
            "Numbers in its info line: 'energy_pbe0', 'energy_xtb'",
        ],
    ),
    Case(
        "length-unit-not-the-checkpoint's",
        length_unit_bohr,
        [
            "training_set.systems.length_unit is 'bohr', but the checkpoint "
            "'pretrained.ckpt' was trained with positions in 'angstrom'",
            "write `length_unit: angstrom`",
        ],
    ),
    Case(
        "pretrained-target-in-another-unit",
        pretrained_target_in_hartree,
        [
            "training_set.targets['energy'].unit is 'Hartree', but 'energy' is a "
            "target of the checkpoint 'pretrained.ckpt' in 'eV'",
            "'energy/<level>'",
        ],
    ),
    Case(
        "unknown-unit",  # metatrain's message
        unknown_unit,
        ["unknown unit 'eV_per_thing'"],
        host_message=True,
    ),
    # data sets and splits
    Case(
        "empty-file",  # metatrain's message
        empty_file,
        ["Failed to read 'empty.xyz'", "Empty file"],
        host_message=True,
    ),
    Case(
        "empty-validation-split",
        empty_validation,
        [
            "validation_set: 0.01 of the 40 structures of 'pbe0_small.xyz'",
            "Use a fraction above 1/40",
        ],
    ),
    Case(
        "no-training-structure",  # metatrain's message
        no_training_structure,
        ["Fraction of the train set is smaller or equal to 0"],
        host_message=True,
    ),
    # gradients and labels
    Case(
        "forces-absent",
        absent_forces,
        [
            f"training_set.targets['{T}'].forces: no structure of 'pbe0_small.xyz' "
            "has the key 'forces_pbe'",
            "'forces_pbe0', 'forces_some', 'forces_xtb'",
            "training_set.targets['energy/xtb'].forces: no structure of "
            "'pbe0_small.xyz' has the key 'forces' (metatrain asks for",
            "write `forces: false`",
            "training_set.targets['mtt::energy_c'].forces: 'forces_some' is missing "
            "in 3 of the 40 structures of 'pbe0_small.xyz' (structures 4, 9, 17)",
        ],
    ),
    Case(
        "broken-labels",
        broken_labels,
        [
            f"training_set.targets['{T}']: the energy is NaN in structure 5 of "
            "'pbe0_small.xyz'",
            f"training_set.targets['{T}'].forces: infinite label in structure 7",
            f"training_set.targets['{T}'].forces: the label is partly NaN in "
            "structure 9",
            "training_set.targets['energy/xtb'].forces: 'force_norm_xtb' in "
            "'pbe0_small.xyz' has shape (3,) in structure 0",
        ],
    ),
    Case(
        "stress-virial-of-molecules",
        stress_and_virial_of_molecules,
        [
            f"training_set.targets['{T}'].stress: stress needs periodic structures",
            "Write `stress: false`",
            "training_set.targets['energy/xtb'].virial: virial given for structures",
            "no periodic direction",
            "Write `virial: false`",
        ],
    ),
    Case(
        "stress-wrong-shape",
        stress_of_wrong_shape,
        [
            f"training_set.targets['{T}'].stress: 'stress_pbe0' in 'pbe0_small.xyz' "
            "has shape (4,) in structure 3",
        ],
    ),
    Case(
        "test-fraction-labels",
        broken_labels_in_test_fraction,
        [
            f"training_set.targets['{T}'].forces: infinite label in structures "
            "13, 14, 22, 27 of 'pbe0_small.xyz'",
        ],
    ),
    Case(
        "test-file-labels",
        broken_labels_in_test_file,
        [
            f"test_set.targets['{T}']: the energy is NaN in structure 2 of "
            "'pbe0_test.xyz'",
            f"test_set.targets['{T}'].forces: infinite label in structure 4 of "
            "'pbe0_test.xyz'",
        ],
    ),
    Case(
        "isolated-atom-with-force",
        isolated_atom,
        [
            f"training_set.targets['{T}'].forces: 1 atom(s) of 'pbe0_small.xyz' have "
            "no neighbour within the model's cutoff (4 angstrom)",
            "structure 0, atom 2 (Z=1)",
        ],
    ),
    # the command line: outputs, restarts
    Case(
        "output-over-pretrained",
        output_over_pretrained,
        [
            "-o/--output: this run would write its final checkpoint to "
            "'pretrained.ckpt', which is training.finetune.read_from "
            "('pretrained.ckpt'): it would overwrite its own input",
            "e.g. -o pretrained-1.pt",
        ],
        args=("-o", "pretrained.pt"),
    ),
    Case(
        "output-over-restart-file",
        more_epochs,
        [
            "-o/--output: this run would write its final checkpoint to "
            "'model.ckpt', which is the --restart checkpoint ('model.ckpt')",
            "e.g. -o model-1.pt",
        ],
        args=("--restart", "model.ckpt"),
    ),
    Case(
        "restart-nothing-left",
        lambda options, folder: None,
        [
            "training.num_epochs",
            "mtt train --restart: nothing left to train: 'model.ckpt' was written "
            "after epoch 0 (epochs count from 0) and training.num_epochs is 1",
            "then write over 'model.ckpt' and 'model.pt'",
            "raise training.num_epochs above 1",
        ],
        args=("--restart", "model.ckpt"),
    ),
    Case(
        "restart-other-split",
        restart_with_other_seed,
        [
            "--restart: this run does not split the data as the run it continues "
            "('model.ckpt')",
            "that run was split with `seed: 0`, this one with `seed: 1`",
            "Set `seed: 0` in the options, or restart with that run's expanded "
            "options, `mtt train ",
            "options_restart.yaml --restart model.ckpt`",
        ],
        args=("--restart", "model.ckpt", "-o", "continued.pt"),
    ),
    Case(
        "restart-not-pet-transfer",
        lambda options, folder: None,
        [
            "mtt train --restart: 'pretrained.ckpt' was written by the 'pet' "
            "architecture",
            "give it as training.finetune.read_from and drop --restart",
        ],
        args=("--restart", "pretrained.ckpt"),
    ),
    Case(
        "restart-truncated",
        truncated_restart_file,
        [
            "mtt train --restart: checkpoint file 'truncated.ckpt' is damaged or "
            "truncated",
        ],
        args=("--restart", "truncated.ckpt"),
    ),
    Case(
        "restart-runs-code",
        code_running_restart_file,
        [
            "mtt train --restart: checkpoint file 'payload.ckpt' refers to Python "
            "objects a PET checkpoint never contains",
            "refusing to load it",
        ],
        args=("--restart", "payload.ckpt", "-o", "continued.pt"),
        absent_after=("pwned",),
    ),
]


@pytest.fixture(scope="module")
def user_folder(tmp_path_factory, pretrained_checkpoint):
    """What a user has before running: data, the pretrained checkpoint, and the
    results of earlier runs: a finished 1-epoch transfer (``model.ckpt``,
    ``model.pt``, its folder under outputs/) and an older folder under outputs/."""
    from conftest import DATA

    folder = tmp_path_factory.mktemp("user")
    shutil.copy(DATA / "pbe0_small.xyz", folder)
    shutil.copy(pretrained_checkpoint, folder / "pretrained.ckpt")
    options = transfer_options(epochs=1)
    options["final_eval"] = False
    write_yaml(folder / "options.yaml", options)
    run_mtt(["train", "options.yaml"], cwd=folder)
    earlier = folder / "outputs" / "2026-01-01" / "00-00-00"
    earlier.mkdir(parents=True)
    shutil.copy(pretrained_checkpoint, earlier / "model_0.ckpt")
    (earlier / "train.log").write_text("an earlier run\n")
    return folder


def snapshot(folder: Path) -> dict:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input_stops_before_training(case, user_folder, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(user_folder, folder)
    options = transfer_options(epochs=1)
    case.change(options, folder)
    write_yaml(folder / "options.yaml", options)
    if case.edit_yaml is not None:
        path = folder / "options.yaml"
        path.write_text(case.edit_yaml(path.read_text()))
    before = snapshot(folder)

    result = run_mtt(["train", "options.yaml", *case.args], cwd=folder, check=False)
    log = result.stdout + result.stderr

    assert result.returncode != 0, log[-3000:]
    for fragment in case.expected:
        assert fragment in log, (fragment, log[-4000:])
    assert "Epoch:" not in log
    if not case.host_message:
        # the plugin's message alone: not framed as an architecture's bug, nor as
        # an option's type error with a link to a page that does not exist
        assert "most likely originates from an architecture" not in log, log[-3000:]
        assert "architectures/generated/pet_transfer.html" not in log, log[-3000:]
    after = snapshot(folder)
    changed = [name for name, digest in before.items() if after.get(name) != digest]
    assert not changed, changed
    for name in case.absent_after:
        assert not (folder / name).exists(), name


def test_default_stress_without_key_is_no_error(workdir):
    """metatrain asks every energy target for `stress: {key: stress}`: molecules
    have none, and the documented options do not say `stress: false`."""
    options = transfer_options(epochs=0)
    del target(options)["stress"]
    write_yaml(workdir / "options.yaml", options)
    result = run_mtt(["train", "options.yaml"], cwd=workdir)
    log = result.stdout + result.stderr
    assert f"'{T}' is trained without stress: 'pbe0_small.xyz' has no 'stress'" in log
    assert "Run inputs checked" in log
