"""``mtt-transfer report``: plots and summary of a finished run, clear errors."""

import shutil

import pytest

from conftest import periodic_transfer, run_mtt, transfer_options, write_yaml
from metatrain_pet_transfer.cli import main
from metatrain_pet_transfer.cli.report import zero_shot_metrics


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def is_png(path):
    return path.is_file() and path.read_bytes()[:8] == PNG_SIGNATURE


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, pretrained_checkpoint):
    """A folder where ``mtt train`` transferred the tiny PET for 2 epochs."""
    from conftest import DATA

    folder = tmp_path_factory.mktemp("finished-run")
    shutil.copy(DATA / "pbe0_small.xyz", folder / "pbe0_small.xyz")
    shutil.copy(pretrained_checkpoint, folder / "pretrained.ckpt")
    write_yaml(folder / "options.yaml", transfer_options(epochs=2))
    run_mtt(["train", "options.yaml", "-o", "model.pt"], cwd=folder)
    return folder


def test_report_of_a_run_folder(capsys, finished_run, tmp_path):
    out = tmp_path / "report"
    assert main(["report", str(finished_run), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "mtt::energy_pbe0" in printed and "meV/Å" in printed

    assert is_png(out / "parity.png")
    assert is_png(out / "learning_curve.png")
    summary = (out / "summary.md").read_text()
    # the test split saved by metatrain (test_set: 0.1) is what is compared
    assert "test split of `pbe0_small.xyz`" in summary
    assert "| mtt::energy_pbe0 | model |" in summary
    assert "Zero-shot validation errors" in summary
    assert "validation mtt::energy_pbe0 MAE (per atom)" in summary


def test_report_of_an_outputs_folder_with_data_and_before(capsys, finished_run):
    outputs = sorted(finished_run.glob("outputs/*/*"))[-1]
    out = outputs / "my-report"
    args = ["report", str(outputs), "--out", str(out)]
    args += ["--data", str(finished_run / "pbe0_small.xyz")]
    args += ["--before", str(finished_run / "model.pt")]
    assert main(args) == 0
    summary = (out / "summary.md").read_text()
    assert "`pbe0_small.xyz` (40 structures)" in summary
    assert "| mtt::energy_pbe0 | before |" in summary
    assert "| mtt::energy_pbe0 | after |" in summary
    assert is_png(out / "parity.png")


def test_default_report_folder_is_inside_the_run(finished_run):
    assert main(["report", str(finished_run)]) == 0
    assert (finished_run / "report" / "summary.md").is_file()


def test_zero_shot_line_names_match_train_csv(finished_run):
    from metatrain_pet_transfer.cli.report import (
        find_run,
        read_train_csv,
        zero_shot_lines,
    )

    run = find_run(finished_run)
    columns, _, _ = read_train_csv(run.train_csv)
    metrics = zero_shot_metrics(zero_shot_lines(run.train_log))
    assert metrics
    for name in metrics:
        assert f"validation {name}" in columns


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p / "absent", "does not exist"),
        (lambda p: p, "has no 'train.csv'"),
    ],
)
def test_unusable_folders_name_what_is_missing(capsys, tmp_path, make, message):
    assert main(["report", str(make(tmp_path))]) == 1
    err = capsys.readouterr().err
    assert message in err and str(tmp_path) in err


def test_missing_model_and_data_are_named(capsys, finished_run, tmp_path):
    copy = tmp_path / "run"
    outputs = sorted(finished_run.glob("outputs/*/*"))[-1]
    shutil.copytree(outputs, copy)
    for model in copy.glob("*.pt"):
        model.unlink()
    assert main(["report", str(copy)]) == 1
    assert "no exported model" in capsys.readouterr().err

    args = ["report", str(finished_run), "--out", str(tmp_path / "r")]
    assert main([*args, "--data", str(tmp_path / "nothing.xyz")]) == 1
    assert "nothing.xyz' does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("gradient", ["stress", "virial"])
def test_stress_parity_of_a_periodic_run(
    capsys, tmp_path, pretrained_bulk_checkpoint, gradient
):

    options = periodic_transfer(tmp_path, pretrained_bulk_checkpoint, gradient)
    write_yaml(tmp_path / "options.yaml", options)
    run_mtt(["train", "options.yaml", "-o", "model.pt"], cwd=tmp_path)
    args = ["report", str(tmp_path), "--data", str(tmp_path / "bulk_small.xyz")]
    assert main(args) == 0
    summary = (tmp_path / "report" / "summary.md").read_text()
    header, _, row = summary.split("| target |", 1)[1].splitlines()[:3]
    assert "stress MAE" in header
    assert row.startswith("| energy/gfn2 | model |") and "meV/Å³" in row
    assert is_png(tmp_path / "report" / "parity.png")


def test_a_newer_run_that_logged_no_epoch_is_passed_over(
    capsys, finished_run, tmp_path
):
    """`mtt train --restart` after the last epoch writes a newer outputs folder whose
    train.csv is empty (0 bytes, as metatrain 2026.4.1 leaves it): the report uses
    the run that trained, and says so."""
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    (trained,) = [p for p in run_dir.glob("outputs/*/*") if p.name != "report"]
    empty = trained.parent / "99-99-99"
    empty.mkdir()
    for name in ("options_restart.yaml", "model.pt", "model.ckpt"):
        shutil.copy(trained / name, empty)
    shutil.copytree(trained / "indices", empty / "indices")
    (empty / "train.csv").write_text("")

    assert main(["report", str(run_dir)]) == 0
    printed = capsys.readouterr().out
    assert f"run: {trained}" in printed
    assert "99-99-99' logged none" in printed
    summary = (run_dir / "report" / "summary.md").read_text()
    assert (
        f"- run: `{trained}` (the newest outputs folder with logged epochs" in summary
    )
    assert is_png(run_dir / "report" / "learning_curve.png")

    # asked for the empty folder itself, the report says what it is
    assert main(["report", str(empty), "--out", str(tmp_path / "r")]) == 0
    assert "is empty: that run logged no epoch" in capsys.readouterr().err


def test_parity_energy_baseline_comes_from_the_training_labels(finished_run):
    """With 4 test structures and 4 elements a baseline fitted on the plotted labels
    reproduces them (every reference point at 0); fitted on the training split it
    does not."""
    import numpy as np

    from metatrain_pet_transfer.cli.report import (
        energy_targets,
        evaluate,
        find_run,
        report_structures,
    )
    from metatrain_pet_transfer.cli.report.baseline import energy_baseline
    from metatrain_pet_transfer.cli.report.labels import training_structures

    run = find_run(finished_run)
    targets, _ = energy_targets(run.options)
    structures = report_structures(run)
    (comparison,) = evaluate(run.model, structures, targets, "model")
    assert len(comparison.energy_ref) <= len(comparison.elements) + 1

    training = training_structures(run)
    assert len(training.frames) > 3 * len(comparison.elements)
    baseline = energy_baseline(comparison.target, [comparison], training)
    assert "training structures of `pbe0_small.xyz`" in baseline.description
    reference = (comparison.energy_ref - baseline.offsets(comparison)) / (
        comparison.n_atoms
    )
    assert np.ptp(reference) > 1e-3  # eV/atom: the points are spread

    # the same labels as the fit: the collapse the training fit avoids
    weights, *_ = np.linalg.lstsq(comparison.counts, comparison.energy_ref, rcond=None)
    collapsed = (comparison.energy_ref - comparison.counts @ weights) / (
        comparison.n_atoms
    )
    assert np.ptp(collapsed) < 1e-6

    # without training labels, too few structures: the mean per atom, said so
    fallback = energy_baseline(comparison.target, [comparison], None)
    assert fallback.weights is None and "mean reference energy" in fallback.description


def test_overfitting_is_flagged_with_its_epochs():
    import numpy as np

    from metatrain_pet_transfer.cli.report import overfitting

    columns = [
        "Epoch",
        "training forces MAE",
        "validation loss",
        "validation forces MAE",
    ]
    units = ["", "meV/A", "", "meV/A"]
    rows = np.array(
        [[0, 300, 9.0, 300], [1, 250, 8.0, 242], [2, 200, 8.5, 260], [3, 147, 9.0, 286]]
    )
    text = " ".join(overfitting(columns, units, rows))
    assert "**Overfitting**: validation forces MAE was lowest at epoch 1" in text
    assert "ends at 286 meV/A (+18%)" in text
    assert "training error kept falling (250 → 147 meV/A)" in text
    assert "holds the weights of epoch 1" in text

    improving = rows.copy()
    improving[:, 3] = [300, 280, 260, 250]
    assert overfitting(columns, units, improving) == []
