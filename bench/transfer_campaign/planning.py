"""Which runs a campaign does: every row at every N and seed, with its lr and epochs.

Part of ``bench/learning_curve.py`` (planning side). The plan depends on the results
already in ``results.csv``: a row that searches its learning rate first trains the
spec's grid at the search (N, seed); when the best validation error (the settings'
``selection``: force MAE for the energy rows) is at an edge of what was tried, the
next value on the 1-3-10 ladder beyond it is added
(``lr_search.max_extensions`` times at most); once the search is complete, every
other (N, seed) of the row uses the selected learning rate. ``planned_runs`` is
therefore asked again after each wave of runs, until nothing new is planned.
``epoch_budget`` gives a row's epochs (halved from ``epochs.halve_from_n`` on).
"""

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from .settings import Pretrained, Row, Run, Settings
from .spec import ladder_step
from .splits import Campaign, resolve_n


@dataclass(frozen=True)
class Search:
    """Where a row's learning-rate search stands."""

    runs: List[Run]  # every run of the search so far (grid and extensions)
    selected: Optional[float]  # None while runs are missing
    at_edge: bool  # the selection is still at an edge of what was tried


def epoch_budget(row: Row, n: int, settings: Settings) -> int:
    """The row's epochs at N: halved from ``halve_from_n`` on (every row alike), so
    that big training sets cost about as many steps as N=100 does; a row with a
    number as its budget trains that many epochs at every N."""
    if isinstance(row.budget, int):
        return row.budget  # a fixed budget (the time-to-accuracy rows)
    epochs = settings.scratch_epochs if row.budget == "scratch" else settings.epochs
    if settings.half_epochs_from is not None and n >= settings.half_epochs_from:
        epochs = max(1, epochs // 2)
    return epochs


def _validation_errors(
    results: List[dict], columns: Sequence[str]
) -> Dict[tuple, Tuple[float, ...]]:
    """(row, N, seed, lr, epochs) of every successful run: its validation errors
    (the ``columns`` the search minimises, in order)."""
    return {
        (r["row"], r["N"], r["seed"], r["lr"], r["epochs"]): tuple(
            float(r[column]) for column in columns
        )
        for r in results
        if r["status"] == "ok"
    }


def search(
    name: str, settings: Settings, pool_size: int, results: List[dict]
) -> Search:
    """The learning-rate search of row ``name``, with the edge rule applied."""
    n = resolve_n(settings.lr_search.n, pool_size)
    seed = settings.lr_search.seed
    epochs = epoch_budget(settings.table[name], n, settings)
    errors = _validation_errors(results, settings.selection)
    tried = sorted(settings.lr_search.grid)
    extensions = 0
    while True:
        runs = [Run(name, n, seed, lr, epochs) for lr in tried]
        done = {run.lr: errors.get(run.key) for run in runs}
        if any(value is None for value in done.values()):
            return Search(runs, None, False)
        # the same rule as tables.mark_selected (energy rows: force MAE, then
        # energy MAE)
        best = min(tried, key=lambda lr: done[lr])
        low, high = best == tried[0], best == tried[-1]
        if not (low or high) or extensions == settings.lr_search.max_extensions:
            return Search(runs, best, low or high)
        # one more step beyond each edge the best sits on
        if low:
            tried.insert(0, ladder_step(best, -1))
        if high:
            tried.append(ladder_step(best, +1))
        extensions += 1


def runs_of_row(
    name: str,
    n: int,
    seed: int,
    settings: Settings,
    pretrained: Pretrained,
    searches: Dict[str, Search],
) -> List[Run]:
    """A row's run at one (N, seed); ``[]`` while its learning rate is not known."""
    row = settings.table[name]
    if row.architecture is None:
        return [Run(name, n, seed, None, 0, trains=False)]
    epochs = epoch_budget(row, n, settings)
    if row.lr == "search":
        selected = searches[name].selected
        return [] if selected is None else [Run(name, n, seed, selected, epochs)]
    if row.lr == "scratch":
        lr = settings.scratch_lr or pretrained.learning_rate
        return [Run(name, n, seed, lr, epochs)]
    return [Run(name, n, seed, None, epochs)]


def searches_of(campaign: Campaign, results: List[dict]) -> Dict[str, Search]:
    """The learning-rate search of every row that searches one."""
    pool = campaign.splits["pool_size"]
    return {
        name: search(name, campaign.settings, pool, results)
        for name in campaign.settings.rows
        if campaign.settings.table[name].lr == "search"
    }


def planned_runs(campaign: Campaign, results: List[dict]) -> List[Run]:
    """Every run the results so far call for: the searches first, then by seed, N,
    row. Runs waiting for a search are not listed yet."""
    settings = campaign.settings
    searches = searches_of(campaign, results)
    runs = [run for name in searches for run in searches[name].runs]
    for seed in settings.seeds:
        for block in settings.blocks:
            if seed not in block.seeds:
                continue
            for value in block.ns:
                n = resolve_n(value, campaign.splits["pool_size"])
                for name in block.rows:
                    runs.extend(
                        runs_of_row(
                            name, n, seed, settings, campaign.pretrained, searches
                        )
                    )
    unique = list(dict.fromkeys(runs))  # a search run may also be a block's run
    return unique
