"""Which runs a campaign does: every row at every N and seed, with its lr and epochs.

Part of ``bench/learning_curve.py`` (planning side). ``planned_runs`` lists the runs
in the order they are done; ``runs_of_row`` says how many runs a row gets at one
(N, seed) and with which learning rates (the ``--lrs`` search, the lr selected at
``--lr-from``, the scratch lr or the architecture's default); ``epoch_budget`` gives
its epochs (halved from ``--half-epochs-from`` on).
"""

from typing import List, Optional

from .settings import ROWS, Pretrained, Row, Run, Settings
from .splits import Campaign, resolve_n
from .tables import load_results


def planned_runs(campaign: Campaign) -> List[Run]:
    """Every run of the campaign, in the order they are done: by seed, N, row."""
    settings = campaign.settings
    runs = []
    for seed in settings.seeds:
        for value in settings.ns:
            n = resolve_n(value, campaign.splits["pool_size"])
            for name in settings.rows:
                runs.extend(runs_of_row(name, n, seed, settings, campaign.pretrained))
    return runs


def epoch_budget(row: "Row", n: int, settings: Settings) -> int:
    """The row's epochs at N: halved from ``--half-epochs-from`` on (every row alike),
    so that big training sets cost about as many steps as N=100 does."""
    epochs = settings.scratch_epochs if row.budget == "scratch" else settings.epochs
    if settings.half_epochs_from is not None and n >= settings.half_epochs_from:
        epochs = max(1, epochs // 2)
    return epochs


def searched_lr(name: str, settings: Settings) -> Optional[float]:
    """The learning rate selected for ``name`` at N = ``--lr-from`` (most frequent
    over seeds), read from the campaign's CSV; ``None`` if that search is not done."""
    chosen = [
        r["lr"]
        for r in load_results(settings.out / "results.csv")
        if r["row"] == name
        and r["N"] == str(settings.lr_from)
        and r["selected"] == "yes"
    ]
    if not chosen:
        return None
    return float(max(sorted(set(chosen)), key=chosen.count))


def runs_of_row(name, n, seed, settings: Settings, pretrained: Pretrained) -> List[Run]:
    """A row's runs at one (N, seed): one per learning rate, or a single one.

    With ``--lr-from N0``, search rows run the whole ``--lrs`` grid at N0 only, and
    at every other N the learning rate selected at N0 (so N0 must be done first).
    """
    row = ROWS[name]
    if row.architecture is None:
        return [Run(name, n, seed, None, 0, trains=False)]
    epochs = epoch_budget(row, n, settings)
    if row.lr == "search":
        if settings.lr_from is not None and n != settings.lr_from:
            lr = searched_lr(name, settings)
            if lr is None:
                raise SystemExit(
                    f"--lr-from {settings.lr_from}: row {name} has no selected "
                    f"learning rate at N={settings.lr_from} in "
                    f"{settings.out / 'results.csv'}; run that N first"
                )
            return [Run(name, n, seed, lr, epochs)]
        return [Run(name, n, seed, lr, epochs) for lr in settings.lrs]
    if row.lr == "scratch":
        lr = settings.scratch_lr or pretrained.learning_rate
        return [Run(name, n, seed, lr, epochs)]
    return [Run(name, n, seed, None, epochs)]
