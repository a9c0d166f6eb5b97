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

Engines that cannot select a variant (they only ask for ``energy``) get a
single-level model instead: :func:`default_energy_level` serves one level as the
default ``energy`` (``mtt-transfer export --level pbe0``, :mod:`..cli.export`).
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


def _level_description(variant: str, target: str) -> str:
    level = variant[len("energy/") :]
    if target == variant:
        return f"energy at the '{level}' level of theory"
    return f"energy at the '{level}' level of theory (the '{target}' target)"


def describe_energy_outputs(
    outputs: Dict[str, ModelOutput], aliases: Dict[str, str]
) -> None:
    """Give ``energy`` and ``energy/<level>`` outputs a description where they have
    none: metatomic warns about variants that engines cannot tell apart.

    :param outputs: the model's outputs, changed in place (descriptions only)
    :param aliases: the ``energy/<level>`` variants the export adds
    """
    has_variants = bool(aliases) or any(n.startswith("energy/") for n in outputs)
    if not has_variants:
        return
    for name, output in outputs.items():
        if output.description:
            continue
        if name == "energy":
            output.description = "energy of the model's 'energy' target (default)"
        elif name.startswith("energy/"):
            output.description = _level_description(name, name)


def variant_output(output: ModelOutput, variant: str, target: str) -> ModelOutput:
    """A copy of ``target``'s output declared as ``variant``, described as such."""
    return ModelOutput(
        unit=output.unit,
        sample_kind=output.sample_kind,
        explicit_gradients=output.explicit_gradients,
        description=output.description or _level_description(variant, target),
    )


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


# --------------------------------------------------------------- single-level models


def available_levels(outputs: Dict[str, ModelOutput]) -> Dict[str, str]:
    """``{level: output name}`` for every energy level of a model other than its
    default ``energy``: ``energy/<level>`` outputs, and ``mtt::energy_<level>``
    where no ``energy/<level>`` serves it (models exported by native metatrain).

    Output names are what tells an energy here: metatomic's ``ModelOutput`` no
    longer carries a quantity.

    :param outputs: the outputs of the model's capabilities (names are enough)
    """
    levels: Dict[str, str] = {}
    for name in outputs:
        if name.startswith("energy/"):
            levels[name[len("energy/") :]] = name
    for name in outputs:
        if name.startswith("mtt::energy_"):
            variant = energy_variant_name(name)
            if variant is not None:
                levels.setdefault(variant[len("energy/") :], name)
    return levels


def choose_level(outputs: Dict[str, ModelOutput], level: Optional[str]) -> str:
    """The output a single-level model serves as ``energy``.

    :param outputs: the outputs of the model's capabilities
    :param level: ``pbe0``, ``energy/pbe0`` or an output name such as
        ``mtt::energy_pbe0``; ``None`` picks the model's only level other than its
        default ``energy``
    :raises ValueError: naming the levels the model has
    """
    levels = available_levels(outputs)
    described = ", ".join(f"'{lvl}' ({name})" for lvl, name in sorted(levels.items()))
    if level is None:
        if len(levels) == 1:
            return next(iter(levels.values()))
        if not levels:
            raise ValueError(
                "the model has no energy level other than 'energy' (outputs: "
                f"{', '.join(sorted(outputs))}): there is no level to export"
            )
        raise ValueError(f"the model has several levels, choose one: {described}")
    if level in outputs and level != "energy" and not level.startswith("mtt::aux"):
        return level
    if level.startswith("energy/"):
        level = level[len("energy/") :]
    if level in levels:
        return levels[level]
    raise ValueError(
        f"the model has no level '{level}'; its levels: {described or 'none'}"
    )


def default_energy_level(model: torch.nn.Module, source: str) -> EnergyVariants:
    """``model`` serving its output ``source`` (e.g. ``energy/pbe0``) as its default
    ``energy``, for engines that cannot select an output variant (they ask for
    ``energy`` only): the same renaming as the variants, with ``energy`` as the
    alias of ``source``."""
    return EnergyVariants(model, {"energy": source})


def single_level_outputs(
    outputs: Dict[str, ModelOutput], source: str
) -> Dict[str, ModelOutput]:
    """The outputs a single-level model declares: ``energy`` (computed as
    ``source``) and the model's targets that are not energy levels. Other energy
    levels and metatrain's internal outputs (``feature``, ``mtt::aux::...``) are
    left out, so that ``energy`` is the only energy an engine can find."""
    levels = set(available_levels(outputs).values())
    declared = {"energy": outputs[source]}
    for name, output in outputs.items():
        if name == source or name == "energy" or name.startswith("energy/"):
            continue
        if name in levels or energy_variant_name(name) in outputs:
            continue  # another level, or the mtt:: name behind an energy/ variant
        if name.startswith("mtt::") and not name.startswith("mtt::aux::"):
            declared[name] = output
    return declared
