"""
PET transfer
============

Transfer a pre-trained PET model to a new level of theory or to new properties.

``pet_transfer`` trains metatrain's own PET model: the hyperparameters below are PET's,
plus the options that control the transfer. Point ``training.finetune.read_from`` at a
PET checkpoint (written by ``name: pet`` or ``name: pet_transfer``), declare the new
targets in the dataset section, and run ``mtt train options.yaml``.

The model hyperparameters come from the checkpoint: leave ``architecture.model`` out,
or repeat the checkpoint's values (``mtt-transfer inspect CHECKPOINT`` prints them);
any differing value stops the run with the list of differing keys.
"""

from typing import Annotated, Literal, Optional, get_args

from metatrain.pet.documentation import ModelHypers as PETModelHypers
from metatrain.pet.documentation import TrainerHypers as PETTrainerHypers
from metatrain.pet.modules.finetuning import FinetuneHypers, NoFinetuneHypers
from metatrain.utils.loss import LossSpecification
from pydantic import AfterValidator, BeforeValidator, Field


#: the ``finetune.method`` values metatrain's PET knows (``full``, ``lora``, ``heads``)
FINETUNE_METHODS = tuple(
    get_args(method.__annotations__["method"])[0] for method in get_args(FinetuneHypers)
)


#: what ``method: heads`` trains when ``config`` leaves it out: PET's heads and last
#: layers (the module names metatrain's ``apply_finetuning_strategy`` falls back to)
PET_HEADS_CONFIG = {
    "head_modules": ["node_heads", "edge_heads"],
    "last_layer_modules": ["node_last_layers", "edge_last_layers"],
}

#: what ``method: lora`` uses when ``config`` leaves it out: the rank and alpha
#: metatrain's ``apply_finetuning_strategy`` falls back to
LORA_CONFIG = {"rank": 4, "alpha": 8.0}

#: per method, the ``config`` keys filled in where the options leave them out
METHOD_DEFAULTS = {"heads": PET_HEADS_CONFIG, "lora": LORA_CONFIG}


def _check_method(finetune):
    # Runs before pydantic tries each method's schema, which would report one error
    # per schema ("Input should be 'full'", "Field required", ...) for a typo
    if isinstance(finetune, dict) and finetune.get("read_from") is not None:
        method = finetune.get("method", "full")
        if method not in FINETUNE_METHODS:
            raise ValueError(
                f"training.finetune.method: unknown method {method!r}; use one of "
                + ", ".join(repr(m) for m in FINETUNE_METHODS)
            )
        finetune = with_method_defaults(finetune)
    return finetune


def with_method_defaults(finetune: dict) -> dict:
    """``training.finetune`` with the method's ``config`` filled in where it is
    left out: PET's heads and last layers for ``heads``, rank 4 and alpha 8 for
    ``lora`` (:data:`METHOD_DEFAULTS`); a key the options give is kept.

    metatrain's schema requires every key of these configs (without them it reports
    one error per method it tried). The options validator fills them in for the
    check; the trainer, which receives the options as written, calls this again
    (:class:`~metatrain_pet_transfer.trainer.Trainer`).
    """
    if not isinstance(finetune, dict):
        return finetune
    defaults = METHOD_DEFAULTS.get(finetune.get("method"))
    if defaults is None:
        return finetune
    config = finetune.get("config")
    if config is None:
        config = {}
    if not isinstance(config, dict):
        return finetune  # pydantic reports the wrong type
    finetune = dict(finetune)
    finetune["config"] = {
        **{
            key: list(value) if isinstance(value, list) else value
            for key, value in defaults.items()
        },
        **config,
    }
    return finetune


def _check_read_from(finetune: dict) -> dict:
    # Runs while metatrain validates the options, before `mtt train` unpickles the
    # file itself with weights_only=False: a bad or unsafe file stops the run here.
    read_from = finetune.get("read_from")
    if read_from is not None:
        from .checkpoints import check_pretrained_checkpoint
        from .checks.options_file import check_options_file
        from .checks.stop import stop_run

        try:
            checkpoint = check_pretrained_checkpoint(read_from)
        except ValueError as error:
            # about a file, not the option's type: under `mtt train`, the message
            # alone (checks/options_file.py), not pydantic's frame and links
            stop_run(ValueError(f"training.finetune.read_from: {error}"))
        # the data sections against this checkpoint, before metatrain reads the data
        check_options_file(checkpoint, read_from)
    return finetune


def _check_restart(num_epochs: Optional[int]) -> Optional[int]:
    # `mtt train --restart FILE`: like `read_from`, FILE is checked before `mtt train`
    # unpickles it with weights_only=False; this field's validator runs because the
    # check needs `num_epochs` (a restart with no epoch left stops here)
    from .checks.command_line import mtt_train_call

    call = mtt_train_call()
    if call is not None and call.restart_from is not None:
        from .checkpoints import check_restart_checkpoint
        from .checks.stop import stop_run
        from .recipe.strategies import MAX_EPOCHS_WITHOUT_NUM_EPOCHS

        try:
            check_restart_checkpoint(
                call.restart_from,
                MAX_EPOCHS_WITHOUT_NUM_EPOCHS if num_epochs is None else num_epochs,
                [call.checkpoint, call.output],
            )
        except ValueError as error:
            stop_run(ValueError(f"mtt train --restart: {error}"))
    return num_epochs


class ModelHypers(PETModelHypers):
    """Hyperparameters of the model: PET's, taken from the checkpoint."""


class TrainerHypers(PETTrainerHypers):
    """Hyperparameters for transferring a PET model: PET's trainer options, plus the
    transfer options below."""

    # PET's options with the bounds they need (PET takes any number: a negative
    # epoch count trains nothing and exits 0, a zero interval fails after the first
    # epoch); defaults and meaning are PET's
    batch_size: Annotated[int, Field(ge=1)] = PETTrainerHypers.batch_size
    """The number of structures in each batch."""
    num_epochs: Annotated[
        Optional[int], Field(ge=0), AfterValidator(_check_restart)
    ] = None
    """Number of epochs. ``0`` trains nothing and exports the aligned start. Left
    out (``null``), the run trains until the validation error has not improved for
    ``early_stopping_patience`` epochs (at most 1000, PET's default number of
    epochs, which is also the length of its cosine learning-rate schedule), says so,
    and exports the best model. With ``mtt train --restart FILE``, the total number
    of epochs of the continued run: ``FILE`` is checked as ``finetune.read_from``
    is, and the run stops if it has no epoch left to train."""
    learning_rate: Annotated[float, Field(gt=0)] = PETTrainerHypers.learning_rate
    """Learning rate (PET's default, 1e-4). Transferring the xTB-pretrained PET to
    PBE0 with 100 frames (``bench/learning_curve.py``), ``full`` with the alignment
    start was best at 1e-4 on the validation split (test forces 142.5 meV/A; 3e-5:
    144.0, 3e-4: 145.2, 1e-3: 187.0; measured with PET's MSE loss and no weight
    averaging, the defaults of that time); for ``heads`` the benchmark selected
    3e-3, the largest rate it tried (docs/benchmarks.md)."""
    log_interval: Annotated[int, Field(ge=1)] = PETTrainerHypers.log_interval
    """Interval, in epochs, to log metrics."""
    checkpoint_interval: Annotated[int, Field(ge=1)] = (
        PETTrainerHypers.checkpoint_interval
    )
    """Interval, in epochs, to save checkpoints."""

    finetune: Annotated[
        NoFinetuneHypers | FinetuneHypers,
        BeforeValidator(_check_method),
        AfterValidator(_check_read_from),
    ] = {
        "read_from": None,
        "method": "full",
        "config": {},
        "inherit_heads": {},
    }
    """The pre-trained checkpoint and how to adapt it, with metatrain's meaning.

    - ``read_from``: path to a PET checkpoint (``.ckpt``). It is checked before
      training: it must exist, be a complete PET checkpoint that the installed
      metatrain can read, and load with ``torch.load(weights_only=True)``.
    - ``method``: ``full`` (train every weight), ``heads`` (train only the heads and
      last layers) or ``lora`` (low-rank adapters; ``config: {rank, alpha}``).
    - ``config``: the method's settings. It may be left out: for ``heads`` it
      defaults to PET's heads and last layers, ``{head_modules: [node_heads,
      edge_heads], last_layer_modules: [node_last_layers, edge_last_layers]}``, for
      ``lora`` to ``{rank: 4, alpha: 8}`` (metatrain's own fallbacks); a key given
      in ``config`` replaces its default.
    - ``inherit_heads``: ``{new_target: pretrained_target}`` starts the new heads
      as copies of the pretrained ones instead of random weights.
    """

    alignment: Optional[bool] = None
    """Start new energy targets aligned with the pretrained model.

    With alignment, a new energy target (``mtt::energy_pbe0``, ``energy/pbe0``, ...)
    starts as a copy of a pretrained energy head (``finetune.inherit_heads`` picks
    it, otherwise the checkpoint's ``energy`` or its only energy head) with that
    head's output scale, and its composition model is fitted by least squares on the
    residual "new labels minus pretrained predictions". Before the first step the
    model then predicts "pretrained + per-element shift", and its zero-shot errors
    are logged. ``null`` (default): on whenever such a pretrained head exists;
    ``true``: required (an error if no head can be chosen); ``false``: metatrain's
    native start (random new heads, composition fitted on the raw labels).

    An energy target that already exists in the checkpoint always gets its
    composition refitted on the residual of its own pretrained head, whatever this
    option says: native metatrain would keep the checkpoint's weights, which is wrong
    when the labels are at another level of theory.
    """

    distributed_timeout: Annotated[int, Field(ge=1)] = 1800
    """Seconds a process of a multi-process run (torchrun, ``srun``) waits for the
    others in one collective operation before it stops with an error.

    A rank that dies or hangs makes the others exit within this time instead of
    waiting forever (under torchrun they stop at once: its agent ends every worker
    when one fails). It must exceed the longest pass one rank makes while the others
    wait: the input checks and the alignment fit run on rank 0 only, before the
    first epoch, and checkpoints are written by rank 0. The default is
    torch.distributed's own (30 minutes). Ignored in a single process.
    """

    keep_pretrained_heads: bool = False
    """Keep the pretrained energy heads valid next to the new ones.

    With ``finetune.method`` ``full`` or ``lora``, metatrain drops the pretrained
    heads the run has no labels for (the backbone changes under them). With this
    option they stay, and the exported model keeps serving the old level of theory
    (e.g. ``energy`` next to ``energy/pbe0``):

    - ``lora``: exactly. The kept heads are not trained; their outputs are computed
      by the backbone without its adapters, which is the pretrained backbone bit for
      bit (in ``mtt eval`` on the checkpoint and in the exported model). The new
      level trains exactly as without the option.
    - ``full``: the kept heads are trained on the pretrained model's own
      predictions for the run's structures (energies only, see
      ``kept_heads_on_forces``), or with ``replay`` on old-level frames; their
      validation errors, logged every epoch, hold energies and forces against the
      pretrained model's: the old level's drift.

    ``heads`` never changes the backbone: old heads stay valid, bit for bit,
    without this option.
    """

    kept_heads_on_forces: bool = False
    """Train the kept heads (``keep_pretrained_heads``, method ``full``) on the
    pretrained model's forces (and stress) too, not only its energies.

    The old level's forces stay much closer to the pretrained ones, at the cost of
    a second force computation in every step and of the new level's accuracy. On the
    PBE0 benchmark (N = 100, docs/benchmarks.md): old-level force drift 38 instead
    of 198 meV/Å, but new-level force error +6 % and 1.47x the time per epoch of a
    run without kept heads (1.11x for energies only).
    """

    replay: Optional[dict] = None
    """Old-level frames that train the kept heads of a ``full`` transfer
    (``keep_pretrained_heads``), instead of the pretrained model's predictions.

    A ``training_set`` section (``systems``, ``targets``: one per kept head, e.g.
    ``energy: {key: energy_xtb, forces: {key: forces_xtb}}``) plus ``ratio``: each
    epoch a new random draw of ``ratio`` x (number of training structures) of these
    frames, at least one batch, is mixed into training (multi-head replay, as in
    MACE's fine-tuning). Default ratio 0.25, the largest one measured on the PBE0
    benchmark (N = 100, 3 seeds) that keeps the new level's force error within
    1.03x (+0.2 to +1.5 %) and the time per epoch within 1.3x (1.2x) of the run
    without keeping; the old level's forces then end at 1.42x the pretrained
    model's error (teacher energies: 2.2x). Ratio 0.5: 1.22x for +3 % and 1.5x
    the time; ratio 1: 1.09x for +9 % and 1.9x (docs/transfer.md, "Keeping the
    old level"). Needs ``keep_pretrained_heads: true`` and ``finetune.method:
    full``; replaces ``kept_heads_on_forces``.
    """

    new_atomic_types_init: Literal["mean", "nearest", "random"] = "mean"
    """How the model starts for elements the checkpoint has never seen.

    When the training or validation data hold atomic types the checkpoint lacks
    (e.g. N for a checkpoint trained on H, C, O), the model is extended to the union
    of types, whatever ``finetune.method``: every per-type tensor (PET's node, edge
    and neighbour embeddings, species index maps, composition weights, scaler) gets
    entries for the new types, the old entries stay bit-identical, and the new types'
    composition weights are fitted on the training data (on the residual of the
    aligned start, as for the old types). This option sets the new embedding rows:
    ``mean`` (the mean of the existing rows), ``nearest`` (the mean of the rows of
    the chemically nearest existing elements, by period and group: N starts from C
    and O) or ``random`` (PET's own initialisation of an untrained model). With
    ``heads`` and ``lora`` the new rows train while the rest of the backbone stays
    frozen. The training log names the new elements.

    ``mean`` is the default, chosen on the validation split of
    ``bench/new_elements.py`` (``pet_xtb_hco.ckpt`` to PBE0, 100 frames, 30 epochs):
    validation forces 229.8 meV/A (``nearest``: 231.7, ``random``: 354.1) and
    energies 28.0 meV/atom (``nearest``: 41.3). On the test split ``nearest`` has
    lower force errors (188.6 vs 220.1 meV/A) and higher energy errors (44.2 vs 32.1
    meV/atom); see the benchmarks page.
    """

    # ------------------------------------------------------------- training strategies
    # recipe/strategies/, measured by bench/campaigns/accuracy.yaml

    early_stopping_patience: Optional[Annotated[int, Field(ge=1)]] = None
    """Epochs without a better validation metric (``best_model_metric``) after which
    training stops; the log says when and why, and the exported model is the best
    one (PET's best-model rule). ``null`` (default): 20 when ``num_epochs`` is left
    out, off when it is given."""

    learning_rate_factors: dict[str, Annotated[float, Field(ge=0)]] = {}
    """Learning-rate factors by module: ``{module name: factor}``, each parameter's
    learning rate is ``factor`` times ``learning_rate`` (schedule included). A name
    matches the parameters whose dotted name contains it as whole components
    (``node_heads`` matches every target's node heads, ``gnn_layers.0`` the first
    message-passing layer); the longest matching name wins, other parameters keep
    factor 1. ``0`` freezes. A name that matches no parameter stops the run before
    training, with the model's module names. Example, the heads and last layers
    ten times faster than the backbone::

        learning_rate_factors:
          node_heads: 10
          edge_heads: 10
          node_last_layers: 10
          edge_last_layers: 10
    """

    freeze_backbone_epochs: Annotated[int, Field(ge=0)] = 0
    """Staged unfreezing: for this many epochs only the heads and last layers train
    (the backbone's weights stay bit-identical), then the backbone joins."""

    unfreeze_warmup_epochs: Annotated[int, Field(ge=0)] = 0
    """After ``freeze_backbone_epochs``, the backbone's learning rate rises linearly
    to its full value over this many epochs (its own warm-up)."""

    l2sp_weight: Annotated[float, Field(ge=0)] = 0.0
    """L2-SP: pull every weight back toward the weights the run started from (the
    pretrained backbone, the aligned heads). After each step a weight moves back by
    ``learning rate * l2sp_weight`` of its distance to its start (decoupled, as AdamW
    decouples weight decay; at most all of it: a huge weight keeps the start
    weights). ``0``: off."""

    ema_decay: Optional[Annotated[float, Field(gt=0, lt=1)]] = 0.99
    """Weight averaging: validate, select and export the exponential moving average
    of the weights, updated after every step with this decay. The optimizer keeps
    training the raw weights; the exported model costs one PET. ``null``: off (PET's
    behaviour). The default, 0.99, was chosen on ``bench/campaigns/accuracy.yaml``:
    the same final errors as without averaging, reached in far fewer epochs
    (docs/benchmarks.md)."""

    readouts: dict[str, Literal["sum", "mean", "charges"]] = {}
    """How a per-structure property is read out of PET's per-atom predictions, by
    target: ``{target: sum | mean | charges}`` (docs/properties.md).

    - ``sum`` (PET's): the sum over atoms, right for extensive properties;
    - ``mean``: the mean over atoms, for intensive ones (a HOMO-LUMO gap); the
      target's ``atomic_baseline`` is then 0 unless given;
    - ``charges``: a dipole from per-atom charges, ``mu = sum_i q_i (r_i -
      r_mean)``, the charges shifted to sum to zero: origin-free, and it rotates with
      the molecule as far as the charges are invariant. For Cartesian vectors of
      molecules (non-periodic data) only.

    Targets left out: ``charges`` for a per-structure Cartesian vector of
    non-periodic data (a dipole), ``sum`` for every other one. Energies always
    keep ``sum``. The exported model applies the same readouts."""

    probe_start: Optional[bool] = None
    """Start new property heads as a linear probe of the pretrained features
    (docs/properties.md): their hidden layers copied from the pretrained energy
    head, their last layer fitted in closed form (ridge, penalty chosen on the
    validation set) through the target's readout, before the first step; the log
    gives the probe's validation errors next to those of predicting the mean.
    ``null`` (default): for new per-structure targets without gradients (a dipole,
    a gap); ``true``: per-atom targets too; ``false``: random heads (metatrain's
    start). Energies start from the alignment instead."""

    loss: str | dict[str, LossSpecification | str] = "mae"
    """The loss, with metatrain's meaning (``mse``, ``mae``, ``huber``, ... per
    target and per gradient). pet_transfer's default is ``mae`` (PET's is ``mse``):
    absolute errors for every target and its forces/stress. On the PBE0 benchmark
    (``bench/campaigns/accuracy.yaml``) it gave the lowest validation errors at 25
    frames and energies about 25 % lower than MSE at 25 and 100 frames, forces
    unchanged at 100: a few strongly distorted frames with very large forces dominate
    a squared loss. ``mse`` gives PET's loss back."""
