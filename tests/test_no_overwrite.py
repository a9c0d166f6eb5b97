"""No output of ``mtt train`` names one of the run's inputs; the command line is read
as metatrain reads it. (The real ``mtt train`` cases, ``-o pretrained.pt`` and
``--restart model.ckpt``, are in ``test_bad_input.py``.)"""

from pathlib import Path

from metatrain_pet_transfer.checks.command_line import MttTrainCall, mtt_train_call
from metatrain_pet_transfer.checks.outputs import check_outputs


def expanded_options(**training_set):
    return {
        "architecture": {
            "training": {
                "finetune": {"read_from": "pretrained.ckpt"},
                "atomic_baseline": "baseline.ckpt",
                "fixed_scaling_weights": {},
            }
        },
        "training_set": [
            {
                "systems": {"read_from": "data.xyz"},
                "targets": {
                    "mtt::energy_pbe0": {
                        "read_from": "data.xyz",
                        "forces": {"read_from": "forces.ckpt", "key": "f"},
                        "stress": False,
                    }
                },
                **training_set,
            }
        ],
        "validation_set": 0.1,
        "test_set": [{"systems": {"read_from": "test.pt"}, "targets": {}}],
    }


def call(output, restart=None):
    return MttTrainCall(Path("options.yaml"), Path(output), restart)


def test_every_input_is_protected(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    options = expanded_options(indices="split.ckpt")
    assert check_outputs(options, call("model.pt")) == []
    for output, what, name in [
        ("baseline.pt", "final checkpoint", "training.atomic_baseline"),
        ("forces.pt", "final checkpoint", "training_set.targets['mtt::energy_pbe0']"),
        ("test.pt", "exported model", "test_set.systems.read_from"),
        ("split.pt", "final checkpoint", "training_set.indices"),
        ("sub/../pretrained.pt", "final checkpoint", "training.finetune.read_from"),
    ]:
        (problem,) = check_outputs(options, call(output))
        written = output if what == "exported model" else output[:-3] + ".ckpt"
        assert f"this run would write its {what} to '{written}'" in problem
        assert f"which is {name}" in problem
    (problem,) = check_outputs(options, call("continued.pt", Path("continued.ckpt")))
    assert "which is the --restart checkpoint ('continued.ckpt')" in problem


def test_suggested_output_name_is_free(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pretrained-1.pt").write_text("an earlier run's model")
    (problem,) = check_outputs(expanded_options(), call("pretrained.pt"))
    assert problem.endswith("e.g. -o pretrained-2.pt")


def test_command_line_is_read_as_metatrain_reads_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    parsed = mtt_train_call(["/env/bin/mtt", "train", "options.yaml", "-o", "out"])
    assert parsed.output == Path("out.pt")  # metatrain appends .pt
    assert parsed.checkpoint == Path("out.ckpt")
    assert parsed.restart_from is None

    # `--restart auto`: the newest outputs/*/*/*.ckpt, or none
    parsed = mtt_train_call(["mtt", "--debug", "train", "o.yaml", "--restart", "auto"])
    assert parsed.output == Path("model.pt") and parsed.restart_from is None
    folder = tmp_path / "outputs" / "2026-01-01" / "10-00-00"
    folder.mkdir(parents=True)
    (folder / "model_3.ckpt").write_bytes(b"")
    parsed = mtt_train_call(["mtt", "train", "o.yaml", "--restart", "auto"])
    assert parsed.restart_from == Path("outputs/2026-01-01/10-00-00/model_3.ckpt")

    # not `mtt train`: nothing to read
    assert mtt_train_call(["pytest", "tests"]) is None
    assert mtt_train_call(["mtt", "export", "model.ckpt"]) is None
    assert mtt_train_call([]) is None
