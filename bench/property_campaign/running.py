"""Doing the property runs: ``mtt train``, ``mtt eval``, scoring, the campaign loop.

Part of ``bench/properties.py``. A trained row is an ``options.yaml`` with one
generic target (the property) in a fresh run folder, ``mtt train`` and ``mtt eval``
as a user runs them (the energy campaign's ``mtt`` runner: CPU seconds from the
child's rusage); the errors are computed from the predictions ``mtt eval`` writes
and must agree with the MAE it prints; a dipole model is also rotated
(``rotation``). ``mean`` trains nothing: the training set's mean label. The
campaign runs in waves (the energy campaign's planning: learning-rate searches
first, then what they select), each result merged into ``results.csv`` under the
energy campaign's lock; a failure stops it loudly, naming the run folder.
"""

import json
import threading
import time
from functools import partial
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from transfer_campaign.campaign import (
    campaign_lock,
    edge_notes,
    print_plan,
    refuse_foreign_results,
    run_in_parallel,
)
from transfer_campaign.planning import planned_runs
from transfer_campaign.running import (
    CampaignStopped,
    error_line,
    failure,
    mtt_eval,
    train,
    train_file,
)
from transfer_campaign.settings import Run
from transfer_campaign.splits import Campaign
from transfer_campaign.tables import load_results

from .data import prepare
from .rotation import rotation_error
from .scoring import (
    cross_check,
    element_means,
    errors,
    predict_element_means,
    read_predictions,
    split_errors,
)
from .spec import PropertySettings
from .tables import of_property, report
from .targets import PROPERTIES, Property


def dataset_section(path: Path, prop: Property) -> dict:
    """An options.yaml dataset section reading one property."""
    return {
        "systems": {"read_from": str(path), "length_unit": "angstrom"},
        "targets": {prop.target: prop.section()},
    }


def run_folder(run: Run, campaign: Campaign) -> Path:
    return campaign.settings.runs / run.row / run.folder_name


def train_and_evaluate(
    run: Run, campaign: Campaign, prop: Property, rotations: tuple
) -> dict:
    """``mtt train`` in a fresh run folder, ``mtt eval`` on validation + test."""
    folder = run_folder(run, campaign)
    section = partial(dataset_section, prop=prop)
    _, result = train(run, campaign, folder, section)
    if "status" in result:
        return result
    _, evaluated = mtt_eval(
        folder / "model.pt",
        campaign.files["val_test"],
        prop.target,
        folder,
        campaign.settings,
        section,
    )
    result["eval_s"] = evaluated.wall_s
    if evaluated.rc != 0:
        return {**result, "status": "failed", "error": error_line(folder / "eval.log")}
    try:
        result.update(score(folder, campaign, prop, rotations))
    except Exception as error:  # noqa: BLE001  (recorded with the run's times)
        return {**failure(error, folder), **result}
    return {**result, "status": "ok", "error": ""}


def score(folder: Path, campaign: Campaign, prop: Property, rotations: tuple) -> dict:
    """The errors of a trained run, from its ``mtt eval`` predictions on validation
    + test (cross-checked against the log) and, for a dipole, its exported model
    rotated."""
    predicted = read_predictions(folder / "predictions.xyz", prop, campaign.val_test)
    cross_check(predicted, campaign.val_test, prop, folder / "eval.log")
    errors_ = split_errors(predicted, campaign, prop)
    if prop.vector:
        test = campaign.subset(campaign.splits["test"])
        written = predicted[len(campaign.splits["val"]) :]
        errors_["test_rotation_error"] = rotation_error(
            folder / "model.pt", test, prop, *rotations, written
        )
    return errors_


def mean_row(run: Run, campaign: Campaign, prop: Property) -> dict:
    """Predict the training set's mean label (per atom for charges, where the
    per-element mean is reported too); nothing is trained."""
    begin, clock = time.perf_counter(), time.process_time()
    train = campaign.subset(campaign.training_indices(run.n, run.seed))
    labels = prop.labels(train)
    mean = np.mean(np.concatenate(labels) if prop.per_atom else labels, axis=0)
    frames = campaign.val_test
    predicted = [
        np.full(len(atoms), float(mean)) if prop.per_atom else np.atleast_1d(mean)
        for atoms in frames
    ]
    result = split_errors(predicted, campaign, prop)
    saved = {"mean": np.atleast_1d(mean).tolist()}
    if prop.per_atom:
        means = element_means(train, labels)
        test = campaign.subset(campaign.splits["test"])
        result["test_element_mean_mae"] = errors(
            predict_element_means(test, means), prop.labels(test), prop
        )["mae"]
        saved["element_means"] = means
    folder = run_folder(run, campaign)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "mean.json").write_text(json.dumps(saved, indent=1) + "\n")
    return {
        **result,
        "wall_s": time.perf_counter() - begin,
        "cpu_s": time.process_time() - clock,
        "status": "ok",
        "error": "",
        "run_dir": str(folder),
    }


def attempt(item: tuple, campaigns, settings: PropertySettings) -> dict:
    """One run; whatever goes wrong is recorded as a failed run."""
    name, run = item
    campaign, prop = campaigns[name], PROPERTIES[name]
    try:
        if not run.trains:
            return mean_row(run, campaign, prop)
        rotations = (settings.rotations, settings.rotation_seed)
        return train_and_evaluate(run, campaign, prop, rotations)
    except Exception as error:  # noqa: BLE001  (recorded in results.csv first)
        return failure(error, run_folder(run, campaign))


def merge(item: tuple, outcome: dict, campaigns, record: dict, lock) -> None:
    """Put one result into ``results.csv`` (and the tables and plots), and say so."""
    name, run = item
    line = {
        "property": name,
        "row": run.row,
        "N": str(run.n),
        "seed": str(run.seed),
        "lr": run.lr_label,
        "epochs": str(run.epochs),
        **outcome,
    }
    out = next(iter(campaigns.values())).settings.out
    with campaign_lock(out, lock):  # another process may share the folder
        results = [
            r for r in load_results(out / "results.csv") if _key(r) != _key(line)
        ]
        report([*results, line], record, campaigns)
    unit = PROPERTIES[name].shown
    print(
        f"{name} {run.row} N={run.n} seed={run.seed} lr={run.lr_label}: "
        f"{outcome['status']} test MAE {outcome.get('test_mae', float('nan')):.4g} "
        f"{unit}, {outcome['wall_s']:.0f} s {outcome.get('error', '')}",
        flush=True,
    )


def _key(record: dict) -> tuple:
    return tuple(record[k] for k in ("property", "row", "N", "seed", "lr", "epochs"))


def run_properties(
    settings: PropertySettings,
    rows: Optional[Sequence[str]] = None,
    plan_only: bool = False,
    jobs: int = 1,
) -> int:
    """Do the runs the campaign plans (only those of ``rows`` if given), wave after
    wave, until none is left.

    :raises CampaignStopped: a run failed or disagrees with ``mtt eval``
    """
    campaigns, record = prepare(settings)
    csv_path = settings.base.out / "results.csv"
    results = load_results(csv_path)
    foreign = sorted({r["property"] for r in results} - set(campaigns))
    if foreign:
        raise CampaignStopped(
            f"{csv_path} holds properties the campaign {settings.base.spec} does "
            f"not have ({', '.join(foreign)}): write it into a new --out folder"
        )
    for name, campaign in campaigns.items():
        refuse_foreign_results(campaign, of_property(results, name))
    lock = threading.Lock()
    while True:
        results = load_results(csv_path)
        todo = []
        for name, campaign in campaigns.items():
            mine = of_property(results, name)
            done = {_key(r)[1:] for r in mine if r["status"] == "ok"}
            wanted = [
                run
                for run in planned_runs(campaign, mine)
                if run.key not in done and (rows is None or run.row in rows)
            ]
            print(f"{name}:", end=" ")
            print_plan(wanted, len(done), campaign, mine)
            todo += [(name, run) for run in wanted]
        if plan_only or not todo:
            break
        # the rows that train nothing first: their results cost nothing
        todo.sort(key=lambda item: item[1].trains)
        # shared inputs written here, once, before runs start in parallel
        for name, run in todo:
            if run.trains:
                train_file(campaigns[name], run.n, run.seed)
        failed = run_in_parallel(
            todo,
            jobs,
            lambda item: attempt(item, campaigns, settings),
            lambda item, outcome: merge(item, outcome, campaigns, record, lock),
        )
        if failed:
            listed = "\n".join(
                f"  {name} {run.row} N={run.n} seed={run.seed} lr={run.lr_label}: "
                f"{outcome['error']}\n    run folder: {outcome.get('run_dir', '?')}"
                for (name, run), outcome in failed
            )
            raise CampaignStopped(
                f"campaign stopped: {len(failed)} run(s) failed or disagree with "
                f"mtt eval (recorded as failed in {csv_path}):\n{listed}"
            )
    if not plan_only:
        with campaign_lock(settings.base.out, lock):
            final_report(campaigns, record, csv_path)
    return 0


def final_report(campaigns, record: dict, csv_path: Path) -> None:
    """The tables and plots from ``results.csv``, with the notes on searches still
    at an edge (printed too)."""
    results = load_results(csv_path)
    notes = [
        f"{name}: {note}"
        for name, campaign in campaigns.items()
        for note in edge_notes(campaign, of_property(results, name))
    ]
    for note in notes:
        print(f"note: {note}", flush=True)
    report(results, record, campaigns, notes)


def rewrite_report(settings: PropertySettings) -> int:
    """``results.md`` and the plots again from ``results.csv`` (the harness's
    current tables), under the campaign's lock: nothing runs."""
    campaigns, record = prepare(settings)
    csv_path = settings.base.out / "results.csv"
    with campaign_lock(settings.base.out, threading.Lock()):
        final_report(campaigns, record, csv_path)
    print(f"rewrote {settings.base.out / 'results.md'} from {csv_path}")
    return 0
