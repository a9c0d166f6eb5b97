"""A campaign's committed spec (``bench/campaigns/*.yaml``), read into ``Settings``.

Part of ``bench/learning_curve.py`` (planning side). A results folder is written only
by ``learning_curve.py --campaign <spec> --out <folder>``: the spec says everything
its numbers depend on (data, checkpoint, splits, rows at which N and seeds, the
learning-rate search with its edge rule, the epoch rule), so the folder can be
regenerated from nothing. Relative paths in a spec are relative to the repository
root. A spec with a key, row or value it does not know is refused with a message
naming the file and the key, before anything runs.
"""

import sys
from pathlib import Path
from typing import Any, Iterable, List, Optional

from .settings import REPO, ROWS, Block, LrSearch, Settings


TOP_KEYS = {
    "description",
    "data",
    "checkpoint",
    "splits",
    "batch_size",
    "epochs",
    "scratch_lr",
    "lr_search",
    "runs",
}
REQUIRED = TOP_KEYS - {"description", "scratch_lr"}


class SpecError(SystemExit):
    """A campaign spec that cannot be run as written."""


def _keys(where: str, value: Any, allowed: set, required: set, path: Path) -> dict:
    if not isinstance(value, dict):
        raise SpecError(f"{path}: {where} must be a mapping, not {value!r}")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise SpecError(
            f"{path}: {where}: unknown key(s) {unknown}; known: {sorted(allowed)}"
        )
    missing = sorted(required - set(value))
    if missing:
        raise SpecError(f"{path}: {where}: missing key(s) {missing}")
    return value


def _number(path: Path, where: str, value, kind=float):
    # YAML 1.1 reads `1e-4` (no dot) as a string: accept it as a number
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise SpecError(f"{path}: {where}: {value!r} is not a number") from None
    if kind is int and number != float(value):
        raise SpecError(f"{path}: {where}: {value!r} is not an integer")
    return number


def _n(path: Path, where: str, value) -> str:
    if value == "all":
        return "all"
    n = _number(path, where, value, int)
    if n <= 0:
        raise SpecError(f"{path}: {where}: N must be positive, not {value!r}")
    return str(n)


def _path(value: str) -> Path:
    path = Path(value)
    return (path if path.is_absolute() else REPO / path).resolve()


def read_spec(
    path: Path, out: Path, runs: Optional[Path] = None, threads: int = 1
) -> Settings:
    """The settings of the campaign ``path`` writing its results into ``out``."""
    path = Path(path)
    spec = load_spec(path, TOP_KEYS, REQUIRED)
    splits = _keys(
        "splits",
        spec["splits"],
        {"seed", "test_fraction", "val_fraction"},
        {"seed", "test_fraction", "val_fraction"},
        path,
    )
    scratch_lr = spec.get("scratch_lr")
    return settings_from(
        path,
        spec,
        ROWS,
        out,
        runs,
        threads,
        scratch_lr=None
        if scratch_lr is None
        else _number(path, "scratch_lr", scratch_lr),
        test_fraction=_number(path, "splits.test_fraction", splits["test_fraction"]),
        val_fraction=_number(path, "splits.val_fraction", splits["val_fraction"]),
        split_seed=_number(path, "splits.seed", splits["seed"], int),
    )


# ------------------------------------- sections shared with bench/properties.py's spec


def load_spec(path: Path, allowed: set, required: set) -> dict:
    """The spec's top-level mapping, its keys checked."""
    import yaml

    if not path.is_file():
        raise SpecError(f"--campaign {path}: no such file")
    return _keys(
        "the campaign", yaml.safe_load(path.read_text()), allowed, required, path
    )


def settings_from(
    path: Path,
    spec: dict,
    rows: Iterable[str],
    out: Path,
    runs: Optional[Path],
    threads: int,
    **particular,
) -> Settings:
    """``Settings`` from the keys every campaign spec has (``data``, ``checkpoint``,
    ``batch_size``, ``epochs``, ``lr_search``, ``runs`` naming only ``rows``) and the
    ``particular`` fields of its kind."""
    finetune, scratch, halve = epochs_of(path, spec["epochs"])
    search = lr_search_of(path, spec["lr_search"])
    blocks = blocks_of(path, spec["runs"], rows)
    out = Path(out).resolve()
    return Settings(
        data=_path(spec["data"]),
        checkpoint=_path(spec["checkpoint"]),
        out=out,
        runs=(runs or Path("/tmp/bench_runs") / out.name).resolve(),
        blocks=blocks,
        lr_search=search,
        epochs=finetune,
        scratch_epochs=scratch,
        half_epochs_from=halve,
        batch_size=_number(path, "batch_size", spec["batch_size"], int),
        threads=threads,
        mtt=Path(sys.executable).parent / "mtt",
        spec=path.resolve(),
        **particular,
    )


def epochs_of(path: Path, value) -> tuple:
    """``epochs``: (fine-tuning, scratch, ``halve_from_n`` or None)."""
    allowed = {"finetune", "scratch", "halve_from_n"}
    epochs = _keys("epochs", value, allowed, {"finetune", "scratch"}, path)
    halve = epochs.get("halve_from_n")
    return (
        _number(path, "epochs.finetune", epochs["finetune"], int),
        _number(path, "epochs.scratch", epochs["scratch"], int),
        None if halve is None else _number(path, "epochs.halve_from_n", halve, int),
    )


def lr_search_of(path: Path, value) -> LrSearch:
    """``lr_search``: the grid (on the 1-3-10 ladder) at one N and seed."""
    keys = {"n", "seed", "grid", "max_extensions"}
    search = _keys("lr_search", value, keys, keys, path)
    grid = [_number(path, "lr_search.grid", lr) for lr in search["grid"]]
    for lr in grid:
        if not on_ladder(lr):
            raise SpecError(
                f"{path}: lr_search.grid: {lr:g} is not on the 1-3-10 ladder "
                "(1e-4, 3e-4, 1e-3, ...) the edge rule extends along"
            )
    return LrSearch(
        n=_n(path, "lr_search.n", search["n"]),
        seed=_number(path, "lr_search.seed", search["seed"], int),
        grid=grid,
        max_extensions=_number(
            path, "lr_search.max_extensions", search["max_extensions"], int
        ),
    )


def blocks_of(path: Path, runs, known: Iterable[str]) -> List[Block]:
    """``runs``: blocks ``{rows, n, seeds}`` naming only rows of ``known``."""
    known = list(known)
    if not isinstance(runs, list) or not runs:
        raise SpecError(f"{path}: runs must be a non-empty list of blocks")
    blocks = []
    for i, block in enumerate(runs):
        where = f"runs[{i}]"
        block = _keys(
            where, block, {"rows", "n", "seeds"}, {"rows", "n", "seeds"}, path
        )
        unknown = [row for row in block["rows"] if row not in known]
        if unknown:
            raise SpecError(
                f"{path}: {where}.rows: unknown {unknown}; known rows: "
                f"{', '.join(known)}"
            )
        blocks.append(
            Block(
                rows=list(block["rows"]),
                ns=[_n(path, f"{where}.n", n) for n in block["n"]],
                seeds=[_number(path, f"{where}.seeds", s, int) for s in block["seeds"]],
            )
        )
    return blocks


def add_campaign_options(parser) -> None:
    """The command-line options of every campaign command (``argparse``)."""
    parser.add_argument(
        "--campaign",
        type=Path,
        required=True,
        help="the campaign spec (bench/campaigns/*.yaml)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        help="results folder: CSV, markdown, plots, splits.json (new, or this "
        "campaign's own to resume it)",
    )
    parser.add_argument(
        "--runs",
        type=Path,
        default=None,
        help="heavy run folders (default /tmp/bench_runs/<out name>)",
    )
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS")
    parser.add_argument(
        "--jobs", type=int, default=1, help="runs at once (one per core)"
    )
    parser.add_argument(
        "--plan", action="store_true", help="list the runs to do now, and stop"
    )


# ------------------------------------------------------------- the learning-rate ladder


def _mantissa_exponent(lr: float) -> tuple:
    exponent = 0
    while lr >= 10 * (1 - 1e-9):
        lr, exponent = lr / 10, exponent + 1
    while lr < 1 - 1e-9:
        lr, exponent = lr * 10, exponent - 1
    return lr, exponent


def on_ladder(lr: float) -> bool:
    """Whether ``lr`` is 1 or 3 times a power of ten."""
    if lr <= 0:
        return False
    mantissa, _ = _mantissa_exponent(lr)
    return any(abs(mantissa - m) < 1e-6 for m in (1, 3))


def ladder_step(lr: float, direction: int) -> float:
    """The next learning rate on the 1-3-10 ladder: up (+1) or down (-1).

    ``ladder_step(1e-3, +1) == 3e-3``, ``ladder_step(1e-4, -1) == 3e-5``.
    """
    mantissa, exponent = _mantissa_exponent(lr)
    one = abs(mantissa - 1) < 1e-6
    if direction > 0:
        mantissa, exponent = (3, exponent) if one else (1, exponent + 1)
    else:
        mantissa, exponent = (3, exponent - 1) if one else (1, exponent)
    return float(f"{mantissa}e{exponent}")
