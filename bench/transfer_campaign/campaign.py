"""The campaign: wave after wave of the runs its plan calls for.

Part of ``bench/learning_curve.py`` (running side, with :mod:`.running`, which does
one run). ``run_campaign`` does, wave after wave, the runs the plan calls for and
``results.csv`` does not hold yet (the plan grows as learning-rate searches
complete), one or several at a time, merging each result under a lock; a run that
fails or disagrees with ``mtt eval`` is recorded as ``failed`` and stops the
campaign with a non-zero exit naming its run folder.
"""

import contextlib
import fcntl
import os
import threading
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Callable, List

from .planning import planned_runs, searches_of
from .running import CampaignStopped, attempt, pretrained_predictions, train_file
from .settings import Run, Settings
from .splits import Campaign, prepare
from .tables import load_results, report, result_key


def refuse_foreign_results(campaign: Campaign, results: List[dict]) -> None:
    """A results folder holds only what its campaign plans, run by this harness in
    its own run folders: no hand-merged rows from other campaigns."""
    settings = campaign.settings
    planned = {run.key for run in planned_runs(campaign, results)}
    foreign = [
        f"{r['row']} N={r['N']} seed={r['seed']} lr={r['lr']} ({r['run_dir']})"
        for r in results
        if result_key(r) not in planned
        or not r["run_dir"].startswith(str(settings.runs) + os.sep)
    ]
    if foreign:
        raise CampaignStopped(
            f"{settings.out / 'results.csv'} holds runs that the campaign "
            f"{settings.spec} does not plan, or made outside its run folders "
            f"({settings.runs}): {'; '.join(foreign[:5])}"
            f"{' ...' if len(foreign) > 5 else ''}. Write the campaign into a new "
            "--out folder."
        )


def print_plan(todo: List[Run], done: int, campaign: Campaign, results) -> None:
    print(f"{len(todo)} runs to do now, {done} already in {campaign.settings.out}")
    for run in todo:
        print(
            f"  {run.row:18s} N={run.n:<4d} seed={run.seed} lr={run.lr_label:8s} "
            f"epochs={run.epochs}",
            flush=True,
        )
    waiting = [
        name for name, s in searches_of(campaign, results).items() if s.selected is None
    ]
    if waiting:
        print(
            f"  then, once their learning-rate search is done (and extended at an "
            f"edge), the other runs of: {', '.join(waiting)}",
            flush=True,
        )


def edge_notes(campaign: Campaign, results: List[dict]) -> List[str]:
    """Searches whose selection is still at an edge after every allowed extension."""
    return [
        f"{name}: the selected learning rate {search.selected:g} is at an edge of "
        f"the values tried ({', '.join(f'{run.lr:g}' for run in search.runs)}) after "
        f"{campaign.settings.lr_search.max_extensions} extension(s)"
        for name, search in searches_of(campaign, results).items()
        if search.selected is not None and search.at_edge
    ]


def run_campaign(settings: Settings, plan_only: bool = False, jobs: int = 1) -> int:
    """Do the runs the campaign plans, wave after wave, until none is left.

    :raises CampaignStopped: a run failed or disagrees with ``mtt eval`` (it is in
        ``results.csv`` as ``failed``; running the command again retries it)
    """
    campaign, record = prepare(settings)
    csv_path = settings.out / "results.csv"
    refuse_foreign_results(campaign, load_results(csv_path))
    lock = threading.Lock()
    while True:
        results = load_results(csv_path)
        done = {result_key(r) for r in results if r["status"] == "ok"}
        todo = [run for run in planned_runs(campaign, results) if run.key not in done]
        print_plan(todo, len(done), campaign, results)
        if plan_only or not todo:
            break
        # shared inputs written here, once, before runs start in parallel
        for n, seed in sorted({(run.n, run.seed) for run in todo if run.trains}):
            train_file(campaign, n, seed)
        if any(not run.trains for run in todo):
            try:
                pretrained_predictions(campaign)
            except Exception as error:  # noqa: BLE001  (recorded by the runs)
                print(f"zero-shot: {type(error).__name__}: {error}", flush=True)
        failed = run_wave(todo, campaign, record, jobs, lock)
        if failed:
            listed = "\n".join(
                f"  {run.row} N={run.n} seed={run.seed} lr={run.lr_label}: "
                f"{outcome['error']}\n    run folder: {outcome.get('run_dir', '?')}"
                for run, outcome in failed
            )
            raise CampaignStopped(
                f"campaign stopped: {len(failed)} run(s) failed or disagree with "
                f"mtt eval (recorded as failed in {csv_path}):\n{listed}"
            )
    if not plan_only:
        results = load_results(csv_path)
        notes = edge_notes(campaign, results)
        for note in notes:
            print(f"note: {note}", flush=True)
        with campaign_lock(settings.out, lock):
            report(load_results(csv_path), record, campaign, notes)
    return 0


def run_wave(todo: List[Run], campaign: Campaign, record: dict, jobs: int, lock):
    """The runs of ``todo``, ``jobs`` at a time; after a failure no new one starts.

    :return: the failed runs with their outcomes
    """
    return run_in_parallel(
        todo,
        jobs,
        lambda run: attempt(run, campaign),
        lambda run, outcome: merge(run, outcome, campaign, record, lock),
    )


def run_in_parallel(todo: list, jobs: int, do: Callable, done: Callable) -> list:
    """``do(item)`` for every item of ``todo``, ``jobs`` at a time, and ``done(item,
    outcome)`` as each finishes (in this thread); after an outcome whose ``status``
    is not ``ok`` no new item starts (bench/properties.py runs its waves with it).

    :return: the failed items with their outcomes
    """
    pending, running, failed = list(todo), {}, []
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        while pending or running:
            while pending and len(running) < jobs and not failed:
                item = pending.pop(0)
                running[pool.submit(do, item)] = item
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                item = running.pop(future)
                outcome = future.result()
                done(item, outcome)
                if outcome["status"] != "ok":
                    failed.append((item, outcome))
    return failed


def merge(run: Run, outcome: dict, campaign: Campaign, record: dict, lock) -> None:
    """Put one result into ``results.csv`` (and the table and plot), and say so."""
    record_run = {
        "row": run.row,
        "N": str(run.n),
        "seed": str(run.seed),
        "lr": run.lr_label,
        "epochs": str(run.epochs),
        **outcome,
    }
    out = campaign.settings.out
    with campaign_lock(out, lock):  # another process may share the folder
        results = load_results(out / "results.csv")
        results = [r for r in results if result_key(r) != result_key(record_run)]
        results.append(record_run)
        report(results, record, campaign)
    print(
        f"{run.row} N={run.n} seed={run.seed} lr={run.lr_label}: "
        f"{outcome['status']} test force "
        f"{outcome.get('test_force_mae_meV_A', float('nan')):.1f} meV/Å, energy "
        f"{outcome.get('test_energy_mae_meV_atom', float('nan')):.1f} meV/atom, "
        f"{outcome['wall_s']:.0f} s {outcome.get('error', '')}",
        flush=True,
    )


@contextlib.contextmanager
def campaign_lock(out: Path, lock):
    """Runs finish in several threads (and possibly processes): each result is
    merged into the CSV on disk under this lock, never from a stale copy."""
    with lock, open(out / ".results.lock", "w") as stream:
        fcntl.flock(stream, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(stream, fcntl.LOCK_UN)
