"""Selecting the level of theory in ASE: every energy target is an ``energy`` variant.

Simulation engines (``metatomic_ase.MetatomicCalculator``, LAMMPS, ...) only drive a
model through its ``energy`` output or an ``energy/<variant>`` of it. A new level of
theory declared as ``energy/pbe0`` is already such a variant, but one declared with
metatrain's custom spelling ``mtt::energy_pbe0`` is exported as an output no engine
uses ("the underlying model does not have an energy output").

The exported model therefore also serves each energy target ``mtt::energy_<level>``
(or ``mtt::<level>``) under the variant name ``energy/<level>``; the original name
stays, so ``mtt eval`` keeps working with the names of the options file. In ASE:

    MetatomicCalculator("model.pt", variants={"energy": "pbe0"})
"""

import re
from typing import Dict, List, Optional

import torch
from metatensor.torch import Labels, TensorMap
from metatomic.torch import ModelOutput, System


_VARIANT = re.compile(r"^[A-Za-z0-9_\-.+]+$")


def energy_variant_name(target: str) -> Optional[str]:
    """The ``energy/<level>`` name under which an energy target is exported.

    :param target: name of a target with ``quantity: energy``
    :return: ``energy/<level>`` for ``mtt::energy_<level>`` and ``mtt::<level>``;
        ``None`` for ``energy`` and ``energy/<variant>`` (usable as they are) and
        for names whose level would not be a valid variant
    """
    if not target.startswith("mtt::"):
        return None
    level = target[len("mtt::") :]
    if level.startswith("energy_"):
        level = level[len("energy_") :]
    if not level or not _VARIANT.match(level):
        return None
    return f"energy/{level}"


def energy_variant_aliases(
    targets: Dict[str, "object"], outputs: Dict[str, ModelOutput]
) -> Dict[str, str]:
    """``{exported variant name: target}`` for every energy target that needs one.

    :param targets: the model's ``dataset_info.targets`` (``TargetInfo`` values)
    :param outputs: the outputs the model already declares (never shadowed)
    """
    aliases = {}
    for name, info in targets.items():
        if info.quantity != "energy" or name not in outputs:
            continue
        variant = energy_variant_name(name)
        if variant is not None and variant not in outputs and variant not in aliases:
            aliases[variant] = name
    return aliases


class EnergyVariants(torch.nn.Module):
    """Wraps the model so that ``energy/<level>`` is computed as its target.

    The wrapped model does the work; this module only renames requests and results,
    so the exported model stays a PET in every other respect.
    """

    aliases: Dict[str, str]

    def __init__(self, model: torch.nn.Module, aliases: Dict[str, str]):
        super().__init__()
        self.model = model
        self.aliases = aliases

    def forward(
        self,
        systems: List[System],
        outputs: Dict[str, ModelOutput],
        selected_atoms: Optional[Labels] = None,
    ) -> Dict[str, TensorMap]:
        requested: Dict[str, ModelOutput] = {}
        for name, output in outputs.items():
            if name in self.aliases:
                requested[self.aliases[name]] = output
            else:
                requested[name] = output
        results = self.model(systems, requested, selected_atoms)
        for alias, target in self.aliases.items():
            if alias in outputs:
                results[alias] = results[target]
                if target not in outputs:
                    results.pop(target)
        return results
