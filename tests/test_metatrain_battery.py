"""metatrain's own test battery for architectures, run against ``pet_transfer``.

Only the fixtures pointing at data files are overridden: their defaults point into
metatrain's source tree, which the wheel does not ship.
"""

import os
import shutil

import pytest
from metatrain.utils.testing import (
    ArchitectureTests,
    AutogradTests,
    CheckpointTests,
    ExportedTests,
    InputTests,
    OutputTests,
    TorchscriptTests,
    TrainingTests,
)

from conftest import DATA, SHARED, TESTS


PET_HISTORY = SHARED / "checkpoints" / "pet-history"


class PETTransferTests(ArchitectureTests):
    architecture = "pet_transfer"

    @pytest.fixture
    def dataset_path(self) -> str:
        return str(DATA / "qm9_reduced_100.xyz")

    @pytest.fixture
    def minimal_model_hypers(self, default_hypers):
        hypers = dict(default_hypers["model"])
        for key in ["d_pet", "d_head", "d_node", "d_feedforward", "num_heads"]:
            hypers[key] = 1
        hypers["num_attention_layers"] = 1
        hypers["num_gnn_layers"] = 1
        return hypers


class TestInput(InputTests, PETTransferTests): ...


class TestOutput(OutputTests, PETTransferTests):
    is_equivariant_rotations = False
    is_equivariant_reflections = False

    @pytest.fixture
    def n_features(self, model_hypers):
        layers = (
            1
            if model_hypers["featurizer_type"] == "feedforward"
            else model_hypers["num_gnn_layers"]
        )
        return (model_hypers["d_node"] + model_hypers["d_pet"]) * layers

    @pytest.fixture
    def n_last_layer_features(self, model_hypers):
        layers = (
            1
            if model_hypers["featurizer_type"] == "feedforward"
            else model_hypers["num_gnn_layers"]
        )
        return model_hypers["d_head"] * layers * 2


class TestAutograd(AutogradTests, PETTransferTests): ...


class TestTorchscript(TorchscriptTests, PETTransferTests):
    float_hypers = ["cutoff", "cutoff_width"]


class TestExported(ExportedTests, PETTransferTests): ...


class TestTraining(TrainingTests, PETTransferTests): ...


class TestCheckpoints(CheckpointTests, PETTransferTests):
    # trainer checkpoints older than these cannot be restarted by PET either
    incompatible_trainer_checkpoints = [
        f"checkpoints/model-v{m}_trainer-v{t}.ckpt.gz"
        for m, t in [(1, 1), (2, 1), (3, 1), (3, 2), (4, 2), (4, 3), (4, 4), (5, 3)]
        + [(6, 3), (6, 4)]
    ]

    @pytest.fixture(autouse=True)
    def checkpoints_folder(self, tmp_path, monkeypatch):
        """metatrain's checkpoint tests read ``checkpoints/`` in the working folder:
        our reference checkpoint, plus metatrain's historical PET checkpoints."""
        folder = tmp_path / "ckpt-tests"
        (folder / "checkpoints").mkdir(parents=True)
        if PET_HISTORY.is_dir():
            for path in PET_HISTORY.glob("*.ckpt.gz"):
                shutil.copy(path, folder / "checkpoints" / path.name)
        # ours last: it is the reference of test_checkpoint_did_not_change
        for path in (TESTS / "checkpoints").glob("*.ckpt.gz"):
            shutil.copy(path, folder / "checkpoints" / path.name)
        monkeypatch.chdir(folder)

    @pytest.mark.parametrize("context", ["restart", "finetune", "export"])
    def test_loading_old_checkpoints(self, default_hypers, model_trainer, context):
        if not PET_HISTORY.is_dir():
            pytest.skip(
                f"metatrain's historical PET checkpoints not found at "
                f"{PET_HISTORY} (they live in ../shared, not in the package)"
            )
        assert len(os.listdir("checkpoints")) > 30
        super().test_loading_old_checkpoints(default_hypers, model_trainer, context)
