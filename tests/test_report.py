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


def test_training_longer_restart_and_new_transfer(capsys, finished_run, tmp_path):
    """More epochs for a finished run. ``--restart`` with a raised ``num_epochs``
    goes on with the run's stretched schedule (the log says so); the report
    follows the run across the restart (its epochs 0-3, the exported epoch as
    ``train.log`` names it). A new transfer from the run's checkpoint starts a new
    schedule at a useful learning rate."""
    import re

    import numpy as np

    from metatrain_pet_transfer.cli.report import find_run
    from metatrain_pet_transfer.cli.report.history import read_history

    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    options = transfer_options(epochs=4)
    write_yaml(run_dir / "options.yaml", options)
    result = run_mtt(
        ["train", "options.yaml", "--restart", "model.ckpt", "-o", "longer.pt"],
        cwd=run_dir,
    )
    log = result.stdout + result.stderr
    assert "training.num_epochs is 4, the run this restart continues planned 2" in log
    assert "about 50% of training.learning_rate" in log

    assert main(["report", str(run_dir)]) == 0
    history = read_history(find_run(run_dir))
    assert list(history.epochs) == [0, 1, 2, 3] and history.starts == [0, 2]
    restarted = sorted(run_dir.glob("outputs/*/*"))[-1]
    final_log = (restarted / "train.log").read_text()
    exported = re.findall(r"Using best model from epoch (\d+)", final_log)[-1]
    assert history.exported == int(exported)
    summary = (run_dir / "report" / "summary.md").read_text()
    assert "4 logged epochs (0 to 3), a run continued once" in summary
    assert f"weights of epoch {exported}" in summary or (
        f"the last epoch, epoch {exported}" in summary
    )
    assert is_png(run_dir / "report" / "learning_curve.png")

    # the documented path: a new transfer from the run's checkpoint
    options = transfer_options(epochs=2, read_from="model.ckpt")
    write_yaml(run_dir / "more.yaml", options)
    result = run_mtt(["train", "more.yaml", "-o", "more.pt"], cwd=run_dir)
    log = result.stdout + result.stderr
    assert "'mtt::energy_pbe0' exists in the checkpoint" in log
    rates = [float(r) for r in re.findall(r"Epoch:\s+\d+ \| learning rate: (\S+)", log)]
    assert rates[0] >= 0.5 * options["architecture"]["training"]["learning_rate"]
    assert np.isfinite(rates).all()


def test_parity_axes_leave_out_a_few_extreme_points():
    """Rattled frames with forces of tens of eV/Å stretched the force axes until
    every other point sat in the middle: the axes cover the central 99.5%, and
    the title counts the points outside."""
    import numpy as np

    from metatrain_pet_transfer.cli.report.plots import axis_limits

    rng = np.random.default_rng(0)
    forces = np.r_[rng.normal(0, 1.0, 2000), [20.0, -19.0, 25.0]]
    low, high = axis_limits(forces)
    assert -5 < low < -2 and 2 < high < 5
    assert int(np.sum((forces < low) | (forces > high))) >= 3
    # without extreme points, every point is shown
    low, high = axis_limits(forces[:2000])
    assert low < forces[:2000].min() and high > forces[:2000].max()


@pytest.mark.parametrize("low, high", [(60.0, 85.0), (0.0025, 0.0046), (90, 2000)])
def test_log_axes_have_enough_labelled_ticks(tmp_path, low, high):
    """A validation error falling from 85 to 60 meV/atom got three ticks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from metatrain_pet_transfer.cli.report.plots import MIN_TICKS, _plain_log_axis

    figure, ax = plt.subplots()
    ax.plot([0, 1], [low, high])
    _plain_log_axis(ax)
    figure.canvas.draw()
    bottom, top = ax.get_ylim()
    ticks = [t for t in ax.get_yticks() if bottom <= t <= top]
    plt.close(figure)
    assert len(ticks) >= MIN_TICKS, ticks


def test_exported_epoch_follows_best_model_metric():
    """PET keeps the epoch with the lowest product of the validation MAEs
    (``mae_prod``), not the lowest validation loss."""
    import numpy as np

    from metatrain_pet_transfer.cli.report.history import selected_epoch

    columns = [
        "Epoch",
        "validation loss",
        "validation energy MAE (per atom)",
        "validation forces MAE",
    ]
    rows = np.array(
        [
            [0, 5.0, 10.0, 300.0],  # mae_prod 3000
            [1, 4.0, 20.0, 200.0],  # lowest loss; mae_prod 4000
            [2, 4.5, 12.0, 220.0],  # mae_prod 2640: PET's choice
        ]
    )
    assert selected_epoch(columns, rows) == 2
    assert selected_epoch(columns, rows, "loss") == 1
    assert selected_epoch(columns, rows, "rmse_prod") is None  # no RMSE logged
