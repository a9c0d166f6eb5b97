"""The old level, served exactly: the pretrained backbone without the LoRA adapters.

With ``finetune.method: lora`` the pretrained weights never move: training adds
low-rank adapters next to them (every other weight is frozen). The pretrained model
is therefore still inside the trained one, bit for bit: the backbone with its
adapters switched off. With ``training.keep_pretrained_heads: true``, the pretrained
heads are kept untouched (neither trained nor dropped) and their outputs (the old
level, e.g. ``energy``) are computed by that adapter-free backbone, in ``mtt eval``
on the checkpoint and in the exported model, while the new targets use the adapted
one. The old level is then the pretrained model at no training cost, and keeping it
changes nothing in the training of the new level.

One pass through PET serves each level: a request for the old level alone (an engine
asking for ``energy``) or the new alone makes one pass, a request for both makes two.

``heads`` needs none of this: it never changes the backbone, and metatrain keeps
the old heads (untrained) next to the new ones.
"""

import contextlib
import copy
from typing import Dict, Iterator, List, Optional, Tuple

import torch
from metatensor.torch import Labels, TensorMap
from metatomic.torch import ModelOutput, System
from metatrain.pet.modules.finetuning import LoRALinear


#: checkpoint key: the outputs served by the backbone without its adapters
PRETRAINED_BACKBONE_KEY = "pet_transfer_pretrained_backbone_outputs"


def pretrained_output_names(targets: List[str]) -> List[str]:
    """The outputs of ``targets`` that the pretrained backbone serves: the targets
    and their last-layer features (PET's ``mtt::aux::<name>_last_layer_features``,
    used by LLPR and ``mtt-transfer select``)."""
    names = []
    for target in targets:
        base = target.replace("mtt::", "")
        names += [target, f"mtt::aux::{base}_last_layer_features"]
    return names


def has_adapters(model: torch.nn.Module) -> bool:
    return any(isinstance(module, LoRALinear) for module in model.modules())


def _adapter_slots(model: torch.nn.Module) -> List[Tuple[torch.nn.Module, str]]:
    """``(parent, attribute)`` of every LoRA layer of ``model``."""
    slots = []
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, LoRALinear):
                slots.append((parent, name))
    return slots


@contextlib.contextmanager
def adapters_off(model: torch.nn.Module) -> Iterator[None]:
    """Within this block, every LoRA layer of ``model`` is its pretrained linear
    layer alone (the same weights, the same operations as before LoRA)."""
    slots = _adapter_slots(model)
    adapters = [getattr(parent, name) for parent, name in slots]
    for (parent, name), adapter in zip(slots, adapters, strict=True):
        setattr(parent, name, adapter.linear)
    try:
        yield
    finally:
        for (parent, name), adapter in zip(slots, adapters, strict=True):
            setattr(parent, name, adapter)


def without_adapters(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` whose LoRA layers are their pretrained linear layers; its
    parameters and buffers are ``model``'s own tensors (not copies)."""
    shared = {id(t): t for t in list(model.parameters()) + list(model.buffers())}
    with adapters_off(model):
        return copy.deepcopy(model, memo=shared)


def split_requests(
    outputs: Dict[str, ModelOutput], pretrained: List[str]
) -> Tuple[Dict[str, ModelOutput], Dict[str, ModelOutput]]:
    """``outputs`` split into ``(new level, old level)`` requests."""
    new: Dict[str, ModelOutput] = {}
    old: Dict[str, ModelOutput] = {}
    for name, output in outputs.items():
        if name in pretrained:
            old[name] = output
        else:
            new[name] = output
    return new, old


class PretrainedLevel(torch.nn.Module):
    """The exported model: the old-level outputs from the backbone without
    adapters (``pretrained``), every other output from the adapted one
    (``model``)."""

    pretrained_outputs: List[str]

    def __init__(
        self,
        model: torch.nn.Module,
        pretrained: torch.nn.Module,
        pretrained_outputs: List[str],
    ):
        super().__init__()
        self.model = model
        self.pretrained = pretrained
        self.pretrained_outputs = pretrained_outputs

    def forward(
        self,
        systems: List[System],
        outputs: Dict[str, ModelOutput],
        selected_atoms: Optional[Labels] = None,
    ) -> Dict[str, TensorMap]:
        new, old = split_requests(outputs, self.pretrained_outputs)
        results: Dict[str, TensorMap] = {}
        if len(new) > 0:
            results = self.model(systems, new, selected_atoms)
        if len(old) > 0:
            for name, tensor in self.pretrained(systems, old, selected_atoms).items():
                results[name] = tensor
        return results
