"""New atomic types: extend a pretrained PET to elements its checkpoint never saw.

metatrain's PET stops a fine-tuning run whose data hold an element absent from the
checkpoint ("New atomic types found in the dataset", ``PET.restart``). ``pet_transfer``
extends the model to the union of the checkpoint's and the data's types instead:
:func:`extend_atomic_types` builds the same network for the union (metatrain's own
constructor makes every type-dependent structure: species index maps, embeddings,
composition and scaler layouts, ZBL) and copies every tensor of the checkpoint into
it; a tensor indexed by atomic type gets its old rows moved to the old types' new
positions, bit for bit, and one new row per new type. :func:`initialise_new_rows`
then fills the new rows (``mean`` of the existing rows, ``nearest`` existing element
by period and group, or PET's own ``random`` initialisation), and
:func:`train_new_rows` lets ``heads`` and ``lora`` train those rows while the
backbone, old rows included, stays frozen.

**Where the model is extended.** ``mtt train`` calls the pretrained model's
``restart`` before the trainer exists; :mod:`metatrain_pet_transfer.restart_route`
sends a run that selected ``pet_transfer`` to ``PETTransfer.restart``, which calls
:func:`extend_atomic_types`; any other run gets PET's error.

**Heads and LoRA.** metatrain's ``apply_finetuning_strategy`` freezes parameters by
name (``requires_grad = False`` on everything but the head, last-layer or ``lora_``
parameters), and PET's trainer calls it inside its ``train``, after this recipe. The
new rows live inside the frozen embedding matrices, so :func:`train_new_rows` adds a
forward pre-hook on each type-indexed module that switches ``requires_grad`` back on
for its matrix, and a gradient hook that zeroes the old rows' gradient: Adam then
never moves them (zero first and second moments). The pre-hook also writes the old
rows back before each forward, so they stay bit-identical even under AdamW's weight
decay. A separate parameter for the new rows would have changed PET's module layout,
hence its checkpoints and its TorchScript export; the mask leaves both as PET's.
"""

import copy
import logging
from typing import Dict, List, Sequence

import metatensor.torch as mts
import torch
from metatrain.pet.modules.backend import PETBackend
from metatrain.pet.modules.finetuning import apply_finetuning_strategy


logger = logging.getLogger(__name__)

#: how the new rows start (``training.new_atomic_types_init``)
INITIALISATIONS = ("mean", "nearest", "random")
#: the default of ``training.new_atomic_types_init`` (chosen by bench/new_elements.py)
DEFAULT_INITIALISATION = "mean"

#: index maps, rebuilt by metatrain's constructor for the union of types
_INDEX_MAPS = ("species_to_species_index", "type_to_index")
#: sample names of per-type rows in the composition and scaler ``TensorMap``s
_TYPE_SAMPLES = (["center_type"], ["atomic_type"])

# fmt: off
_SYMBOLS = [
    "X", "H", "He", "Li", "Be", "B", "C", "N", "O", "F", "Ne", "Na", "Mg", "Al", "Si",
    "P", "S", "Cl", "Ar", "K", "Ca", "Sc", "Ti", "V", "Cr", "Mn", "Fe", "Co", "Ni",
    "Cu", "Zn", "Ga", "Ge", "As", "Se", "Br", "Kr", "Rb", "Sr", "Y", "Zr", "Nb", "Mo",
    "Tc", "Ru", "Rh", "Pd", "Ag", "Cd", "In", "Sn", "Sb", "Te", "I", "Xe",
]
# fmt: on


def symbol(atomic_type: int) -> str:
    if 0 < atomic_type < len(_SYMBOLS):
        return _SYMBOLS[atomic_type]
    return str(atomic_type)


def period_and_group(z: int) -> tuple:
    """Row and column (1-18) of element ``z`` in the periodic table.

    Lanthanides and actinides count as group 3.
    """
    period_starts = [1, 3, 11, 19, 37, 55, 87, 119]
    period = max(i for i, start in enumerate(period_starts, 1) if z >= start)
    position = z - period_starts[period - 1]  # 0-based within the period
    if period == 1:
        return period, 1 if z == 1 else 18
    if period <= 3:
        return period, position + 1 if position < 2 else position + 11
    if period <= 5:
        return period, position + 1
    # periods 6 and 7: 14 f-block elements after group 3
    if position < 3:
        return period, position + 1
    if position < 17:
        return period, 3
    return period, position - 13


def nearest_types(new: int, existing: Sequence[int]) -> List[int]:
    """The existing types chemically closest to ``new``: fewest steps across rows
    plus groups of the periodic table, a group step counting twice (elements of one
    group behave alike: S is nearer O than P), then closest atomic number; ties all
    kept (N, between C and O, gets both)."""
    period, group = period_and_group(new)

    def distance(z: int) -> tuple:
        p, g = period_and_group(z)
        return (2 * abs(g - group) + abs(p - period), abs(z - new))

    best = min(distance(z) for z in existing)
    return sorted(z for z in existing if distance(z) == best)


def new_atomic_types(model, dataset_info) -> List[int]:
    """Types of ``dataset_info`` that ``model`` does not know."""
    known = set(model.atomic_types)
    return sorted(int(t) for t in dataset_info.atomic_types if t not in known)


# ------------------------------------------------------------------------ the extension


def type_indexed_parameters(hypers: dict) -> List[str]:
    """Names (in the PET model) of the parameters with one row per atomic type.

    Found by building PET's backend for two and for three types and comparing the
    shapes: whatever grows with the number of types is type-indexed, whatever PET
    adds in the future included.
    """
    small = PETBackend(hypers, [1, 2]).state_dict()
    large = PETBackend(hypers, [1, 2, 3]).state_dict()
    return [
        f"backend.{name}"
        for name, tensor in small.items()
        if name.split(".")[-1] not in _INDEX_MAPS and tensor.shape != large[name].shape
    ]


def extend_atomic_types(model, atomic_types: Sequence[int]):
    """The same model for the union of its types and ``atomic_types``.

    Every tensor is copied from ``model``; type-indexed ones keep their old rows
    (bit-identical, at the old types' new positions) and get PET's random
    initialisation for the new types; per-type composition and scaler entries of
    the new types start at the mean of the old ones (placeholders: the trainer fits
    the composition). Index maps are the constructor's.

    :param model: a PET model (any subclass)
    :param atomic_types: the types the model must support in addition
    :return: a new model of the same class; ``model`` is left unchanged
    """
    old_types = list(model.atomic_types)
    union = sorted(set(old_types) | {int(t) for t in atomic_types})
    info = copy.deepcopy(model.dataset_info)
    info.atomic_types = union
    extended = type(model)(copy.deepcopy(model.hypers), info)
    if model.finetune_config:  # e.g. LoRA layers of a fine-tuned checkpoint
        extended = apply_finetuning_strategy(
            extended, model.finetune_config, apply_inherit_heads=False
        )
    dtype = next(model.parameters()).dtype
    extended.to(dtype)

    old_index = {t: i for i, t in enumerate(old_types)}
    positions = [old_index.get(t) for t in union]  # None: a new type
    fresh = extended.state_dict()
    state = {}
    for name, old in model.state_dict().items():
        if name not in fresh:
            raise RuntimeError(f"extending the atomic types: no '{name}' in the model")
        new = fresh[name]
        if name.split(".")[-1] in _INDEX_MAPS:
            state[name] = new
        elif old.dtype == torch.uint8 and name.endswith("_buffer"):
            state[name] = _extend_tensor_map_buffer(old, old_types, union)
        elif old.shape == new.shape:
            state[name] = old
        elif old.shape[1:] == new.shape[1:] and old.shape[0] == len(old_types):
            rows = new.clone()
            for i, position in enumerate(positions):
                if position is not None:
                    rows[i] = old[position]
            state[name] = rows
        else:
            raise RuntimeError(
                f"extending the atomic types: '{name}' changes shape from "
                f"{tuple(old.shape)} to {tuple(new.shape)}, not one row per type"
            )
    extended.load_state_dict(state)
    extended.additive_models[0].sync_tensor_maps()
    extended.scaler.sync_tensor_maps()
    extended.metadata = model.metadata
    extended.finetune_config = model.finetune_config
    extended.train(model.training)
    return extended


def _extend_tensor_map_buffer(buffer, old_types, union):
    """A serialized ``TensorMap`` with per-type sample rows, extended to ``union``."""
    tensor_map = mts.load_buffer(buffer.cpu())
    blocks = []
    for block in tensor_map.blocks():
        listed = [int(t) for t in block.samples.values.reshape(-1).tolist()]
        if block.samples.names not in _TYPE_SAMPLES or listed != list(old_types):
            blocks.append(block.copy())
            continue
        values = block.values
        mean = values.mean(dim=0, keepdim=True)
        rows = [
            values[old_types.index(t)] if t in old_types else mean[0] for t in union
        ]
        blocks.append(
            mts.TensorBlock(
                values=torch.stack(rows),
                samples=mts.Labels(
                    block.samples.names,
                    torch.tensor(union, device="cpu").reshape(-1, 1),
                ),
                components=block.components,
                properties=block.properties,
            )
        )
    extended = mts.TensorMap(tensor_map.keys, blocks)
    return mts.save_buffer(mts.make_contiguous(extended)).to(buffer.device)


# ----------------------------------------------------------------------- the new rows


def initialise_new_rows(model, new_types: Sequence[int], init: str) -> Dict[int, list]:
    """Fill the new types' rows of every type-indexed parameter, and their
    composition weights (placeholders until the fit).

    :param model: a PET model extended by :func:`extend_atomic_types`
    :param new_types: the types added
    :param init: ``mean`` (mean of the old rows), ``nearest`` (mean of the rows of
        the chemically nearest old types, :func:`nearest_types`) or ``random``
        (PET's own initialisation, as the extension made them)
    :return: for each new type, the old types its rows were taken from
    """
    if init not in INITIALISATIONS:
        raise ValueError(
            f"unknown initialisation {init!r}; use one of {INITIALISATIONS}"
        )
    old_types = [t for t in model.atomic_types if t not in new_types]
    index = {t: i for i, t in enumerate(model.atomic_types)}
    sources = {
        t: nearest_types(t, old_types) if init == "nearest" else list(old_types)
        for t in new_types
    }
    if init != "random":
        parameters = dict(model.named_parameters())
        with torch.no_grad():
            for name in type_indexed_parameters(model.hypers):
                rows = parameters[name]
                for t in new_types:
                    rows[index[t]] = rows[[index[s] for s in sources[t]]].mean(dim=0)
    _initialise_composition(model, new_types, sources)
    return {t: ([] if init == "random" else s) for t, s in sources.items()}


def _initialise_composition(model, new_types, sources) -> None:
    composition = model.additive_models[0]
    index = {t: i for i, t in enumerate(model.atomic_types)}
    for target, tensor_map in composition.model.weights.items():
        for block in tensor_map.blocks():
            if block.samples.names not in _TYPE_SAMPLES:
                continue
            with torch.no_grad():
                values = block.values
                for t in new_types:
                    values[index[t]] = values[[index[s] for s in sources[t]]].mean(0)
        composition.register_buffer(
            f"{target}_composition_buffer",
            mts.save_buffer(
                mts.make_contiguous(tensor_map.to("cpu", torch.float64))
            ).to(composition.dummy_buffer.device),
        )


def train_new_rows(model, new_types: Sequence[int]) -> list:
    """Let the new types' rows train while the rest of their matrices stays frozen.

    For ``heads`` and ``lora``, whose strategy freezes the embeddings (see the
    module docstring). Returns the hook handles; remove them after training.
    """
    modules = dict(model.named_modules())
    parameters = dict(model.named_parameters())
    new_rows = [i for i, t in enumerate(model.atomic_types) if t in new_types]
    handles = []
    for name in type_indexed_parameters(model.hypers):
        owner, _, attribute = name.rpartition(".")
        weight = parameters[name]
        # on the weight's device: the hook indexes with them at every forward
        mask = torch.zeros(
            weight.shape[0], *[1] * (weight.dim() - 1), device=weight.device
        )
        mask[new_rows] = 1.0
        old_rows = torch.nonzero(mask.reshape(-1) == 0).reshape(-1)
        frozen = weight.detach()[old_rows].clone()
        handles.append(
            modules[owner].register_forward_pre_hook(
                _NewRowsOnly(attribute, mask, old_rows, frozen, handles)
            )
        )
    return handles


class _NewRowsOnly:
    """Forward pre-hook: old rows written back, gradient masked to the new rows."""

    def __init__(self, attribute, mask, old_rows, frozen, handles):
        self.attribute, self.mask, self.old_rows, self.frozen = (
            attribute,
            mask,
            old_rows,
            frozen,
        )
        self.handles = handles
        self.hooked = set()  # ids of the weights whose gradient is masked

    def __call__(self, module, args):
        weight = getattr(module, self.attribute)
        if self.frozen.device != weight.device or self.frozen.dtype != weight.dtype:
            # the model moved: follow it once, not with a copy at every forward
            self.frozen = self.frozen.to(weight)
            self.old_rows = self.old_rows.to(weight.device)
        with torch.no_grad():
            weight[self.old_rows] = self.frozen
        if not (module.training and torch.is_grad_enabled()):
            return None
        if not weight.requires_grad:
            weight.requires_grad_(True)
        if id(weight) not in self.hooked:
            mask = self.mask.to(weight)
            self.handles.append(weight.register_hook(lambda grad: grad * mask))
            self.hooked.add(id(weight))
        return None


# ------------------------------------------------------------------- the trainer's step


def pretrained_atomic_types(read_from) -> List[int]:
    from ..checkpoints import load_checkpoint_safely

    checkpoint = load_checkpoint_safely(read_from)
    return list(checkpoint["model_data"]["dataset_info"].atomic_types)


def prepare_new_types(model, hypers: dict, is_fresh_start: bool) -> list:
    """The recipe step: start the new types' rows, and let frozen methods train them.

    On a fresh fine-tuning start, the types ``PETTransfer.restart`` added
    (``model.extended_atomic_types``) get their rows initialised as
    ``training.new_atomic_types_init`` says, and a log line names them. With
    ``heads`` or ``lora`` (fresh start or ``--restart``), the types the pretrained
    checkpoint (``finetune.read_from``) lacks get trainable rows.

    :param model: the ``PETTransfer`` about to be trained
    :param hypers: the trainer hypers
    :param is_fresh_start: ``False`` for ``mtt train --restart``
    :return: hook handles to remove after training (empty for ``full``)
    """
    finetune = hypers["finetune"]
    added = list(getattr(model, "extended_atomic_types", []))
    if is_fresh_start and added:
        if hypers.get("keep_pretrained_heads", False):
            raise ValueError(
                "training.keep_pretrained_heads: the pretrained heads are trained on "
                "the pretrained model's own predictions, and it cannot predict "
                f"structures with {describe(added)}, elements its checkpoint "
                f"({finetune['read_from']}) never saw. Set keep_pretrained_heads: "
                "false, or leave those structures out."
            )
        init = hypers.get("new_atomic_types_init", DEFAULT_INITIALISATION)
        sources = initialise_new_rows(model, added, init)
        old = [t for t in model.atomic_types if t not in added]
        how = {
            "mean": "the mean of the existing rows",
            "random": "PET's random initialisation",
            "nearest": "; ".join(
                f"{symbol(t)} from {'+'.join(symbol(s) for s in sources[t])}"
                for t in added
            ),
        }[init]
        trains = (
            "train with the backbone"
            if finetune["method"] == "full"
            else f"train while the rest of the {finetune['method']} backbone is frozen"
        )
        logger.info(
            f"New atomic types: {describe(added)} are not in the checkpoint "
            f"({', '.join(symbol(t) for t in old)}): the model now covers "
            f"{', '.join(symbol(t) for t in model.atomic_types)}; the new embedding "
            f"rows start as {how} (new_atomic_types_init: {init}) and {trains}; "
            "the old rows are unchanged; the composition weights of the new types "
            "are fitted on the training data"
        )
    if finetune["method"] not in ("heads", "lora"):
        return []
    if not is_fresh_start:
        added = [
            t
            for t in model.atomic_types
            if t not in pretrained_atomic_types(finetune["read_from"])
        ]
    return train_new_rows(model, added) if added else []


def describe(types: Sequence[int]) -> str:
    return ", ".join(f"{symbol(t)} ({t})" for t in types)
