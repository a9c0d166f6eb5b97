"""What a campaign compares: its settings, the pretrained checkpoint, the rows.

Part of ``bench/learning_curve.py`` (planning side). ``Settings`` holds one campaign,
read from its committed spec (``spec.py``, ``bench/campaigns/*.yaml``): which rows at
which N and seeds (``Block``), how the learning rate is searched (``LrSearch``), the
epoch rule and the splits. ``Pretrained`` is what the rows need to know about the
checkpoint (``read_pretrained``), ``Run`` one ``mtt train`` of a row at one N, seed and
learning rate. ``ROWS`` maps each row name to the ``architecture:`` section its
``options.yaml`` gets; add a row by adding an entry there.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Union


REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
#: a byte-identical copy of ../shared/data/pbe0.xyz (bench/data/README.md)
DEFAULT_DATA = REPO / "bench" / "data" / "pbe0.xyz"
DEFAULT_CHECKPOINT = SHARED / "checkpoints" / "pet_xtb.ckpt"

#: old-level (GFN2-xTB) frames for the replay rows: the pre-training set, a copy of
#: ../shared/data/pretrain_xtb.xyz; the runs replay it without the frames of the
#: campaign's validation and test splits (``running.replay_file``)
REPLAY_DATA = REPO / "bench" / "data" / "pretrain_xtb.xyz"
#: what a row writes as ``replay.systems``: the run puts its replay file there
REPLAY_FRAMES = "<replay frames>"

#: the new level, declared as a variant of ``energy`` so exported models work in ASE
NEW_TARGET = "energy/pbe0"
ENERGY_KEY, FORCES_KEY = "energy_pbe0", "forces_pbe0"


# ---------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Block:
    """Every row of ``rows`` at every N of ``ns`` and seed of ``seeds``."""

    rows: Sequence[str]
    ns: Sequence[str]  # integers, or ``all`` for the whole training pool
    seeds: Sequence[int]


@dataclass(frozen=True)
class LrSearch:
    """How rows that search the learning rate get theirs.

    At N = ``n`` and seed ``seed`` every ``grid`` value is trained and the lowest
    validation force MAE selected; when the selected value is the lowest or highest
    tried, the next value on the 1-3-10 ladder beyond it is added (at most
    ``max_extensions`` times per row). Every other (N, seed) of the row reuses the
    selected learning rate.
    """

    n: str
    seed: int
    grid: Sequence[float]
    max_extensions: int


@dataclass(frozen=True)
class Settings:
    """One campaign: what to run and where to put it."""

    data: Path
    checkpoint: Path
    out: Path
    runs: Path
    blocks: Sequence[Block]
    lr_search: LrSearch
    epochs: int
    scratch_epochs: int
    half_epochs_from: Optional[int]
    scratch_lr: Optional[float]
    batch_size: int
    test_fraction: float
    val_fraction: float
    split_seed: int
    threads: int
    mtt: Path
    spec: Optional[Path] = None  # the campaign file these settings were read from
    #: the rows this campaign can name (``None``: ``ROWS``, the energy rows; the
    #: property campaign, bench/properties.py, has its own per property)
    row_table: Optional[Mapping[str, "Row"]] = None
    #: the validation columns a learning-rate search minimises, in order (ties)
    selection: Sequence[str] = ("val_force_mae_meV_A", "val_energy_mae_meV_atom")

    @property
    def table(self) -> Mapping[str, "Row"]:
        """The rows this campaign can name: ``row_table``, or ``ROWS``."""
        return ROWS if self.row_table is None else self.row_table

    @property
    def rows(self) -> List[str]:
        """Every row of the campaign, in the order of its row table."""
        named = {row for block in self.blocks for row in block.rows}
        return [row for row in self.table if row in named]

    @property
    def seeds(self) -> List[int]:
        """Every seed of the campaign (each has its training order in splits.json)."""
        return sorted(
            {s for block in self.blocks for s in block.seeds} | {self.lr_search.seed}
        )


@dataclass(frozen=True)
class Pretrained:
    """What the rows need to know about the pretrained checkpoint."""

    path: Path
    target: str  # its energy target, the source of ``inherit_heads``
    model_hypers: dict  # for the scratch row: the same network, untrained
    learning_rate: float  # its pre-training learning rate, the scratch default


@dataclass(frozen=True)
class Run:
    """One ``mtt train`` (or one zero-shot fit): a row at one N, seed and lr."""

    row: str
    n: int
    seed: int
    lr: Optional[float]  # None: the architecture's default learning rate
    epochs: int
    trains: bool = True  # False for zero-shot: no learning rate at all

    @property
    def lr_label(self) -> str:
        if not self.trains:
            return "-"
        return "default" if self.lr is None else f"{self.lr:g}"

    @property
    def key(self) -> tuple:
        return (self.row, str(self.n), str(self.seed), self.lr_label, str(self.epochs))

    @property
    def folder_name(self) -> str:
        return f"N{self.n}_s{self.seed}_lr{self.lr_label}_e{self.epochs}"


def read_pretrained(path: Path) -> Pretrained:
    """The checkpoint's energy target, network hypers and pre-training lr."""
    import metatomic.torch  # noqa: F401  (registers the classes the pickle names)
    import torch

    checkpoint = torch.load(path, weights_only=False, map_location="cpu")
    targets = checkpoint["model_data"]["dataset_info"].targets
    energy = [name for name, info in targets.items() if info.quantity == "energy"]
    if not energy:
        raise SystemExit(
            f"{path}: the checkpoint has no energy target ({list(targets)})"
        )
    return Pretrained(
        path=path,
        target=energy[0],
        model_hypers=dict(checkpoint["model_data"]["model_hypers"]),
        learning_rate=float(checkpoint["train_hypers"]["learning_rate"]),
    )


# -------------------------------------------------------------------------------- rows
# A row's architecture is a function of (run, pretrained, batch size) returning the
# `architecture:` section of options.yaml. Add a row by adding an entry to ROWS.

HEADS_CONFIG = {
    "head_modules": ["node_heads", "edge_heads"],
    "last_layer_modules": ["node_last_layers", "edge_last_layers"],
}
LORA_CONFIG = {"rank": 4, "alpha": 8}  # metatrain's own defaults for LoRA


def _training(run: Run, batch_size: int) -> dict:
    """The trainer options every row shares: the same batches and epoch budget.

    ``num_workers: 0`` keeps each training on one process (the machine is shared).
    """
    training = {"batch_size": batch_size, "num_epochs": run.epochs, "num_workers": 0}
    if run.lr is not None:
        training["learning_rate"] = run.lr
    return training


def finetuned(name: str, method: str, inherit: bool = False, **options) -> Callable:
    """A row fine-tuning the pretrained checkpoint with metatrain's ``method``.

    ``inherit`` starts the new ``energy/pbe0`` heads as copies of the pretrained
    energy heads; ``options`` go into ``architecture.training`` (plugin options).
    """

    def architecture(run: Run, pretrained: Pretrained, batch_size: int) -> dict:
        finetune = {"method": method, "read_from": str(pretrained.path)}
        if method == "heads":
            finetune["config"] = HEADS_CONFIG
        if method == "lora":
            finetune["config"] = LORA_CONFIG
        if inherit:
            finetune["inherit_heads"] = {NEW_TARGET: pretrained.target}
        training = {**_training(run, batch_size), **options, "finetune": finetune}
        return {"name": name, "training": training}

    return architecture


def plugin_defaults(run: Run, pretrained: Pretrained, batch_size: int) -> dict:
    """``pet_transfer`` as the minimal options.yaml uses it: only ``read_from``."""
    training = {
        **_training(run, batch_size),
        "finetune": {"read_from": str(pretrained.path)},
    }
    return {"name": "pet_transfer", "training": training}


def plugin_with(**options) -> Callable:
    """``pet_transfer`` from the minimal options.yaml plus the training ``options``
    (the strategies of ``recipe/strategies``)."""

    def architecture(run: Run, pretrained: Pretrained, batch_size: int) -> dict:
        section = plugin_defaults(run, pretrained, batch_size)
        section["training"] = {**section["training"], **options}
        return section

    return architecture


#: every training strategy off: the plugin's default before the strategies existed
#: (alignment, ``method: full``, PET's learning rate 1e-4 and MSE loss)
STRATEGIES_OFF = {
    "loss": "mse",
    "learning_rate_factors": {},
    "freeze_backbone_epochs": 0,
    "l2sp_weight": 0.0,
    "ema_decay": None,
}
#: absolute errors for the new level's energies and forces
MAE_LOSS = {NEW_TARGET: {"type": "mae", "gradients": {"positions": {"type": "mae"}}}}
#: the new heads and last layers ten times faster than the backbone
HEADS_X10 = {
    "learning_rate_factors": {
        module: 10.0
        for module in [
            "node_heads",
            "edge_heads",
            "node_last_layers",
            "edge_last_layers",
        ]
    }
}


def replay(ratio: float) -> dict:
    """``training.replay``: the xTB frames, energies and forces, at ``ratio``."""
    return {
        "systems": {"read_from": REPLAY_FRAMES, "length_unit": "angstrom"},
        "targets": {
            "energy": {
                "quantity": "energy",
                "key": "energy_xtb",
                "unit": "eV",
                "forces": {"key": "forces_xtb"},
            }
        },
        "ratio": ratio,
    }


def scratch(run: Run, pretrained: Pretrained, batch_size: int) -> dict:
    """Native PET with the pretrained network's hypers, from random weights."""
    return {
        "name": "pet",
        "model": pretrained.model_hypers,
        "training": _training(run, batch_size),
    }


@dataclass(frozen=True)
class Row:
    """A benchmark row: how it trains, what it predicts, which learning rates it gets.

    - ``architecture``: the function writing the ``architecture:`` section; ``None``
      for zero-shot, which trains nothing.
    - ``lr``: ``"search"`` gets its learning rate from the campaign's search
      (``LrSearch``), ``"scratch"`` the scratch learning rate, ``"default"`` none
      at all (the architecture's default).
    - ``budget``: ``"finetune"`` (the spec's ``epochs.finetune``), ``"scratch"``
      (``epochs.scratch``), or a number of epochs for every N.
    """

    architecture: Optional[Callable]
    target: str = NEW_TARGET
    lr: str = "search"
    budget: Union[str, int] = "finetune"


ROWS: Dict[str, Row] = {
    "zero-shot": Row(None, target="energy", lr="default"),
    "scratch": Row(scratch, target="energy", lr="scratch", budget="scratch"),
    "native-full": Row(finetuned("pet", "full")),
    "native-heads": Row(finetuned("pet", "heads", inherit=True)),
    # the plugin with its alignment and every strategy off: must reproduce native-full
    "plugin-full": Row(
        finetuned("pet_transfer", "full", alignment=False, **STRATEGIES_OFF)
    ),
    "plugin-full-align": Row(finetuned("pet_transfer", "full", alignment=True)),
    "plugin-heads": Row(finetuned("pet_transfer", "heads", inherit=True)),
    "plugin-lora": Row(finetuned("pet_transfer", "lora", inherit=True)),
    # the default keeping the pretrained energy head valid (on the pretrained
    # energies; -forces: energies and forces), at the default's learning rate
    "plugin-keep": Row(plugin_with(keep_pretrained_heads=True), lr="default"),
    "plugin-keep-forces": Row(
        plugin_with(keep_pretrained_heads=True, kept_heads_on_forces=True),
        lr="default",
    ),
    # full + replay of real xTB labels on the kept head, at three ratios
    **{
        f"plugin-replay-{ratio:g}": Row(
            plugin_with(keep_pretrained_heads=True, replay=replay(ratio)),
            lr="default",
        )
        for ratio in (0.25, 0.5, 1.0)
    },
    # the MD check's models (bench/campaigns/keep.yaml), each at the learning rate
    # the accuracy campaign selected for its method at N = 100
    "native-full-lr3e-4": Row(
        finetuned("pet", "full", learning_rate=3e-4), lr="default"
    ),
    "plugin-lora-keep": Row(
        finetuned(
            "pet_transfer",
            "lora",
            inherit=True,
            keep_pretrained_heads=True,
            learning_rate=1e-2,
        ),
        lr="default",
    ),
    "native-lora": Row(finetuned("pet", "lora", inherit=True)),
    "plugin-default": Row(plugin_defaults, lr="default"),
    # time to accuracy: the default with a short budget, against the rows' 80 epochs
    "plugin-default-e8": Row(plugin_defaults, lr="default", budget=8),
    # the strategy screen (bench/campaigns/accuracy.yaml): candidate defaults, each
    # at the plugin's default learning rate, as a user writing no rate gets it
    "plugin-v1": Row(plugin_with(**STRATEGIES_OFF), lr="default"),
    "plugin-heads-x10": Row(
        plugin_with(**{**STRATEGIES_OFF, **HEADS_X10}), lr="default"
    ),
    "plugin-ema": Row(
        plugin_with(**{**STRATEGIES_OFF, "ema_decay": 0.99}), lr="default"
    ),
    "plugin-l2sp": Row(
        plugin_with(**{**STRATEGIES_OFF, "l2sp_weight": 10.0}), lr="default"
    ),
    "plugin-staged": Row(
        plugin_with(
            **{
                **STRATEGIES_OFF,
                **HEADS_X10,
                "freeze_backbone_epochs": 10,
                "unfreeze_warmup_epochs": 10,
            }
        ),
        lr="default",
    ),
    # L1 losses: the metric is the MAE, and MSE lets the rattled frames' large
    # forces (up to 62 eV/A) dominate the fit
    "plugin-mae": Row(
        plugin_with(**{**STRATEGIES_OFF, "loss": MAE_LOSS}),
        lr="default",
    ),
    "plugin-x10-ema": Row(
        plugin_with(**{**STRATEGIES_OFF, **HEADS_X10, "ema_decay": 0.99}),
        lr="default",
    ),
}
