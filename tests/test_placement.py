"""The plugin's passes run where the model trains, by construction.

A GPU run meets what a CPU run hides: a tensor created without ``device=`` lands on
the host while the model is on the GPU (an error, or a silent copy at every use), and
a ``.tolist()``/``.item()``/``.numpy()`` per structure is a host round-trip per
structure. These tests catch both on a machine without a GPU:

- the trainer hands every recipe step the model already on the training device
  (the model is moved to a ``meta`` device there and the steps record where it is);
- every tensor the passes create (alignment, the kept heads' teacher labels, the new
  rows of unseen elements, ``mtt-transfer select``'s features) names its device, and
  their copies to the host do not grow with the number of structures (the same
  passes over N and 2N structures in one batch make the same number of copies).

What they cannot see: tensors created inside metatrain, metatensor or TorchScript on
the plugin's behalf, or host copies hidden in C++; those are the GPU check's job
(``bench/gpu_check.sh``, docs/benchmarks.md).
"""

import copy
import sys
import weakref
from collections import Counter
from pathlib import Path

import ase.io
import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

import metatrain_pet_transfer
from conftest import DATA, train_tiny_pet
from metatrain_pet_transfer.model import PETTransfer


#: the installed package (CI installs it into site-packages, not editable)
PACKAGE = Path(metatrain_pet_transfer.__file__).resolve().parent
#: the modules of the passes over the data (checks read host data by design)
PASSES = [
    PACKAGE / "recipe" / "alignment.py",
    PACKAGE / "recipe" / "distillation.py",
    PACKAGE / "recipe" / "species.py",
    PACKAGE / "recipe" / "lora.py",
    PACKAGE / "cli" / "select" / "features.py",
]
FACTORIES = {
    torch.tensor,
    torch.as_tensor,
    torch.zeros,
    torch.ones,
    torch.empty,
    torch.full,
    torch.arange,
    torch.eye,
    torch.linspace,
    torch.rand,
    torch.randn,
    torch.randint,
}
HOST_COPIES = {
    torch.Tensor.numpy,
    torch.Tensor.tolist,
    torch.Tensor.item,
    torch.Tensor.cpu,
    torch.Tensor.__float__,
    torch.Tensor.__int__,
    torch.Tensor.__bool__,
}


def _is_cpu(value) -> bool:
    return (isinstance(value, str) and value == "cpu") or (
        isinstance(value, torch.device) and value.type == "cpu"
    )


class PlacementRecorder(TorchFunctionMode):
    """Records, for calls made from the passes' own lines (``file:line``, counted):
    tensors created without ``device=``, copies to the host, and ``.numpy()`` on a
    tensor the pass did not bring to the host itself (``.cpu()``, ``.to("cpu")``,
    ``device="cpu"``, or computed from such tensors only): on a GPU, that call
    fails."""

    def __init__(self):
        super().__init__()
        self.deviceless = Counter()
        self.host_copies = Counter()
        self.numpy_not_on_host = Counter()
        self._files = {str(path) for path in PASSES}
        self._on_host = {}  # id -> weak reference: tensors the passes put on the host

    def _is_on_host(self, tensor) -> bool:
        reference = self._on_host.get(id(tensor))
        return reference is not None and reference() is tensor

    def _caller(self):
        # the line calling the torch function: one of the passes', or another
        # library's (metatrain, metatensor, torch's own DataLoader: not ours)
        frame = sys._getframe(2)
        name = frame.f_code.co_filename
        if name in self._files:
            return f"{Path(name).name}:{frame.f_lineno}"
        return None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        where = self._caller()
        if where is None:
            return func(*args, **kwargs)
        if func in FACTORIES and "device" not in kwargs:
            self.deviceless[where] += 1
        if func in HOST_COPIES:
            self.host_copies[where] += 1
        inputs = [x for x in tree_flatten((args, kwargs))[0] if torch.is_tensor(x)]
        if func is torch.Tensor.numpy and not self._is_on_host(inputs[0]):
            self.numpy_not_on_host[where] += 1
        result = func(*args, **kwargs)
        to_host = (
            func is torch.Tensor.cpu
            or (func in FACTORIES and _is_cpu(kwargs.get("device")))
            or (
                func is torch.Tensor.to
                and any(_is_cpu(x) for x in [*args[1:], kwargs.get("device")])
            )
            or (inputs and all(self._is_on_host(x) for x in inputs))
        )
        if to_host:
            for output in tree_flatten(result)[0]:
                if torch.is_tensor(output):
                    self._on_host[id(output)] = weakref.ref(output)
        return result


# ---------------------------------------------------------------- a run, in process


def _hypers_and_datasets(checkpoint: Path, frames: Path, n: int, training: dict):
    """What ``mtt train`` hands the trainer: validated hypers, the datasets (first
    ``n`` frames train, the next ``n`` validate) and the model after ``restart``."""
    from metatrain.utils.architectures import get_default_hypers
    from metatrain.utils.data import DatasetInfo, get_atomic_types, get_dataset
    from metatrain.utils.io import model_from_checkpoint
    from metatrain.utils.omegaconf import expand_dataset_config, expand_loss_config
    from omegaconf import OmegaConf

    from metatrain_pet_transfer.checkpoints import load_checkpoint_safely

    dataset_options = {
        "systems": {"read_from": str(frames), "length_unit": "angstrom"},
        "targets": {
            "mtt::energy_pbe0": {
                "quantity": "energy",
                "key": "energy_pbe0",
                "unit": "eV",
                "forces": {"key": "forces_pbe0"},
                "stress": False,
            }
        },
    }
    options = OmegaConf.merge(
        {"architecture": get_default_hypers("pet_transfer")},
        {
            "architecture": {
                "training": {
                    "batch_size": 2 * n,  # one batch, whatever n
                    "num_workers": 0,
                    "finetune": {"method": "full", "read_from": str(checkpoint)},
                    **training,
                }
            },
            "training_set": expand_dataset_config(OmegaConf.create(dataset_options)),
        },
    )
    hypers = OmegaConf.to_container(
        expand_loss_config(options)["architecture"], resolve=True
    )
    dataset, targets, _ = get_dataset(options["training_set"][0])
    train = torch.utils.data.Subset(dataset, range(n))
    val = torch.utils.data.Subset(dataset, range(n, 2 * n))
    info = DatasetInfo(
        length_unit="angstrom", atomic_types=get_atomic_types(dataset), targets=targets
    )
    pretrained = model_from_checkpoint(load_checkpoint_safely(checkpoint), "finetune")
    # outside `mtt train`, only a PETTransfer extends to new types (restart_route)
    pretrained = PETTransfer.adopt(pretrained)
    return hypers["training"], [train], [val], pretrained.restart(info)


def run_recipe(monkeypatch, tmp_path, checkpoint, frames, n, device, **training):
    """The plugin's ``Trainer.train`` up to PET's loop (not run), on ``device``."""
    from metatrain.pet import Trainer as PETTrainer

    from metatrain_pet_transfer.trainer import Trainer

    hypers, train, val, model = _hypers_and_datasets(checkpoint, frames, n, training)
    monkeypatch.setattr(PETTrainer, "train", lambda self, **kwargs: None)
    trainer = Trainer(hypers)
    folder = tmp_path / f"run-{n}-{device}"
    folder.mkdir()
    trainer.train(
        model,
        dtype=torch.float32,
        devices=[torch.device(device)],
        train_datasets=train,
        val_datasets=val,
        checkpoint_dir=str(folder),
    )
    return model


@pytest.fixture(scope="module")
def hco_checkpoint(tmp_path_factory):
    """A tiny PET pre-trained on H/C/O frames only (pbe0_small.xyz has N)."""
    folder = tmp_path_factory.mktemp("placement-hco")
    frames = [a for a in ase.io.read(DATA / "xtb_small.xyz", ":") if 7 not in a.numbers]
    ase.io.write(folder / "xtb_hco.xyz", frames)
    return train_tiny_pet(folder / "hco.ckpt", data=str(folder / "xtb_hco.xyz"))


# ------------------------------------------------------------------------ the tests


def test_recipe_steps_get_the_model_on_the_training_device(
    monkeypatch, tmp_path, pretrained_checkpoint
):
    """Each recipe step sees the model on the device PET will train on (here a
    ``meta`` device, which no CPU tensor can stand in for)."""
    import metatrain_pet_transfer.trainer as trainer_module
    from metatrain_pet_transfer.recipe.distillation import KeptHeads

    seen = {}

    def recording(name, result):
        def step(model, *args, **kwargs):
            seen[name] = next(model.parameters()).device.type
            return result(args, kwargs)

        return step

    monkeypatch.setattr(
        trainer_module,
        "prepare_new_types",
        recording("new rows", lambda args, kwargs: []),
    )
    monkeypatch.setattr(
        trainer_module,
        "align",
        recording("alignment", lambda args, kwargs: (args[0], [])),
    )
    monkeypatch.setattr(
        trainer_module,
        "keep_pretrained_heads",
        recording("kept heads", lambda args, kwargs: KeptHeads(args[1], args[2])),
    )
    run_recipe(
        monkeypatch,
        tmp_path,
        pretrained_checkpoint,
        DATA / "pbe0_small.xyz",
        4,
        "meta",
        keep_pretrained_heads=True,
    )
    assert seen == {"new rows": "meta", "alignment": "meta", "kept heads": "meta"}


@pytest.mark.parametrize("case", ["aligned, kept heads", "new element, heads"])
def test_passes_name_their_devices_and_copy_to_host_per_batch(
    monkeypatch, tmp_path, pretrained_checkpoint, hco_checkpoint, case
):
    """Alignment, teacher labels and the new rows' hooks over N and 2N structures
    (one batch each): no tensor without ``device=``, the same host copies."""
    if case == "aligned, kept heads":
        checkpoint, training = pretrained_checkpoint, {"keep_pretrained_heads": True}
    else:
        checkpoint = hco_checkpoint
        training = {"finetune": {"method": "heads", "read_from": str(hco_checkpoint)}}
    # N-containing frames first: the new element is in every subset
    frames = ase.io.read(DATA / "pbe0_small.xyz", ":")
    frames.sort(key=lambda atoms: 7 not in atoms.numbers)
    ase.io.write(tmp_path / "frames.xyz", frames)
    recorders = {}
    for n in (3, 6):
        with PlacementRecorder() as recorder:
            run_recipe(
                monkeypatch,
                tmp_path,
                checkpoint,
                tmp_path / "frames.xyz",
                n,
                "cpu",
                **training,
            )
        recorders[n] = recorder
    small, large = recorders[3], recorders[6]
    assert not small.deviceless and not large.deviceless, dict(large.deviceless)
    assert not large.numpy_not_on_host, dict(large.numpy_not_on_host)
    assert small.host_copies, "the recorder saw none of the passes' lines"
    assert small.host_copies == large.host_copies, (
        "host copies grow with the number of structures: "
        f"{dict(small.host_copies)} for 3, {dict(large.host_copies)} for 6"
    )


def test_select_features_name_their_devices_and_copy_to_host_per_batch(
    pretrained_checkpoint,
):
    from metatrain_pet_transfer.cli.select.features import (
        compute_descriptors,
        load_pretrained,
    )
    from metatrain_pet_transfer.cli.select.structures import geometry_only

    model, target = load_pretrained(pretrained_checkpoint)
    frames = geometry_only(ase.io.read(DATA / "pbe0_small.xyz", ":12"))
    recorders = {}
    for n in (6, 12):
        with PlacementRecorder() as recorder:
            compute_descriptors(model, target, copy.deepcopy(frames[:n]), 64)
        recorders[n] = recorder
    assert not recorders[12].deviceless, dict(recorders[12].deviceless)
    assert not recorders[12].numpy_not_on_host, dict(recorders[12].numpy_not_on_host)
    assert recorders[6].host_copies
    assert recorders[6].host_copies == recorders[12].host_copies
