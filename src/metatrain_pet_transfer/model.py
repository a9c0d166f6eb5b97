"""The model: metatrain's PET, under this architecture's name."""

from typing import Any, Dict, List, Literal, Optional, Tuple

import torch
from metatomic.torch import (
    AtomisticModel,
    ModelCapabilities,
    ModelMetadata,
    ModelOutput,
)
from metatrain.pet import PET

from . import restart_route
from .checks.eval_call import check_eval_targets
from .recipe import species
from .recipe.energy_levels import (
    EnergyVariants,
    describe_energy_outputs,
    energy_variant_aliases,
    variant_output,
)
from .recipe.pretrained_level import (
    PRETRAINED_BACKBONE_KEY,
    PretrainedLevel,
    adapters_off,
    pretrained_output_names,
    split_requests,
    without_adapters,
)
from .recipe.readouts import (
    READOUTS_KEY,
    ReadoutModel,
    finish_readouts,
    per_atom_requests,
)
from .restart_route import ARCHITECTURE_NAME
from .resume import restore_random_state


class PETTransfer(PET):
    """metatrain's PET whose checkpoints name the ``pet_transfer`` architecture.

    The weights, the forward pass, the export and the checkpoint format are PET's: a
    checkpoint of either architecture loads into either class. Only the name differs,
    so that ``mtt train --restart`` continues with this architecture's trainer.
    """

    @classmethod
    def adopt(cls, model: PET) -> "PETTransfer":
        """Take over a PET instance built by metatrain's fine-tuning path.

        ``mtt train`` builds the model from the class named in the pretrained
        checkpoint (usually ``pet``); the class adds no state, so the instance is
        re-classed in place and keeps every weight and buffer.

        :param model: a PET model
        :return: the same object, now a :class:`PETTransfer`
        """
        if not isinstance(model, PET):
            raise TypeError(
                "pet_transfer can only train PET models, but the checkpoint in "
                f"training.finetune.read_from holds a {type(model).__name__}"
            )
        if not isinstance(model, cls):
            model.__class__ = cls
        return model

    def restart(
        self, dataset_info, model_hypers: Optional[Dict[str, Any]] = None
    ) -> "PETTransfer":
        """PET's ``restart``, after extending the model to atomic types of the
        dataset it does not know (:mod:`.recipe.species`), in a run that selected
        ``pet_transfer`` (:mod:`.restart_route`; elsewhere PET's error stands).

        The extended model is a new object (PET's ``restart`` returns the model
        ``mtt train`` trains); it lists the added types in ``extended_atomic_types``
        for the trainer, which initialises their rows.
        """
        model = self
        added = species.new_atomic_types(self, dataset_info)
        if added and restart_route.extends_new_types(model_is_pet_transfer=True):
            model = species.extend_atomic_types(self, added)
            model.extended_atomic_types = added
        return restart_route.HOST_RESTART(
            model, dataset_info, model_hypers=model_hypers
        )

    @classmethod
    def load_checkpoint(
        cls,
        checkpoint: Dict[str, Any],
        context: Literal["restart", "finetune", "export"],
    ) -> "PETTransfer":
        model = super().load_checkpoint(checkpoint, context)
        model.readouts = checkpoint.get(READOUTS_KEY) or {}
        model.pretrained_level = checkpoint.get(PRETRAINED_BACKBONE_KEY) or []
        if context == "export":
            # `mtt eval model.ckpt` evaluates this object directly: inference mode
            model.eval()
            # and names a target the model does not serve before metatrain does
            check_eval_targets(*model.served_outputs())
        return model

    def served_outputs(self) -> Tuple[List[str], List[str]]:
        """The outputs ``mtt eval`` evaluates on this object (PET's
        ``supported_outputs``: the ``energy/<level>`` variants are the exported
        model's), and which of them are energies."""
        targets = self.dataset_info.targets
        names = list(self.supported_outputs())
        energies = [
            name
            for name in names
            if name in targets and targets[name].quantity == "energy"
        ]
        return names, energies

    def export(self, metadata: Optional[ModelMetadata] = None) -> AtomisticModel:
        """PET's export, plus ``energy/<level>`` outputs for ``mtt::`` energy
        targets, so that simulation engines can select the new level of theory
        (:mod:`.recipe.energy_levels`)."""
        aliases = energy_variant_aliases(self.dataset_info.targets, self.outputs)
        # metatomic warns (from C++, unfilterable) about energy variants without a
        # description: every energy output gets one before the model is declared
        describe_energy_outputs(self.outputs, aliases)
        exported = super().export(metadata)
        readouts = self.readouts
        pretrained_outputs = pretrained_output_names(self.pretrained_level)
        if not aliases and not readouts and not pretrained_outputs:
            return exported
        capabilities = exported.capabilities()
        # the outputs the model declares, not the capabilities' list: metatomic adds
        # deprecated names there (`features` next to `feature`), and declaring them
        # again would make it warn "the 'features' output name is deprecated"
        outputs = {name: capabilities.outputs[name] for name in self.outputs}
        for alias, target in aliases.items():
            outputs[alias] = variant_output(outputs[target], alias, target)
        capabilities = ModelCapabilities(
            outputs=outputs,
            atomic_types=capabilities.atomic_types,
            interaction_range=capabilities.interaction_range,
            length_unit=capabilities.length_unit,
            supported_devices=capabilities.supported_devices,
            dtype=capabilities.dtype,
        )
        module: torch.nn.Module = self.eval()
        if pretrained_outputs:
            # the old level from the backbone without its LoRA adapters
            pretrained = without_adapters(self)
            pretrained.pretrained_level = []
            pretrained.readouts = {}
            module = PretrainedLevel(module, pretrained.eval(), pretrained_outputs)
        if readouts:
            module = ReadoutModel(module, readouts)
        if aliases:
            module = EnergyVariants(module, aliases)
        return AtomisticModel(module.eval(), exported.metadata(), capabilities)

    def __call__(self, systems, outputs, selected_atoms=None):
        # PET's forward, then the readouts (:mod:`.recipe.readouts`): in training
        # and in `mtt eval` on a checkpoint. The export applies them in TorchScript
        # (`ReadoutModel`), which never calls this method.
        pretrained = pretrained_output_names(self.pretrained_level)
        if pretrained and any(name in pretrained for name in outputs):
            # the old level from the backbone without its LoRA adapters
            # (:mod:`.recipe.pretrained_level`), the new one with them
            new, old = split_requests(outputs, pretrained)
            results = self._call_with_readouts(systems, new, selected_atoms)
            with adapters_off(self):
                results.update(super().__call__(systems, old, selected_atoms))
            return results
        return self._call_with_readouts(systems, outputs, selected_atoms)

    def _call_with_readouts(self, systems, outputs, selected_atoms):
        readouts = self.readouts
        if not outputs:
            return {}
        if not readouts:
            return super().__call__(systems, outputs, selected_atoms)
        requested = per_atom_requests(outputs, readouts)
        results = super().__call__(systems, requested, selected_atoms)
        return finish_readouts(results, outputs, readouts, systems)

    def capabilities(self) -> ModelCapabilities:
        """What the exported model will declare; lets ``mtt eval`` take a ``.ckpt``."""
        return self.export().capabilities()

    def requested_inputs(self, use_new_names: bool = False) -> Dict[str, ModelOutput]:
        # `mtt eval` asks with `use_new_names=True`, the exported-model signature
        return super().requested_inputs()

    def get_checkpoint(self) -> Dict:
        checkpoint = super().get_checkpoint()
        checkpoint["architecture_name"] = ARCHITECTURE_NAME
        checkpoint[READOUTS_KEY] = dict(self.readouts)
        checkpoint[PRETRAINED_BACKBONE_KEY] = list(self.pretrained_level)
        checkpoint.update(self.__dict__.pop("_next_checkpoint_entries", {}))
        return checkpoint

    def attach_to_next_checkpoint(self, key: str, value: Any) -> None:
        """Add ``key: value`` to the next checkpoint :meth:`get_checkpoint` makes
        (the trainer's record, :mod:`.resume`: PET's trainer builds its checkpoints
        from this method's)."""
        self.__dict__.setdefault("_next_checkpoint_entries", {})[key] = value

    # PET's trainer reads `has_new_targets` only when it restores the optimizer state
    # of a restarted run, after its set-up (composition and scaler fits, data
    # loaders: they draw random numbers) and just before the first resumed epoch:
    # where the random state of the checkpoint is put back
    __jit_unused_properties__ = ["has_new_targets", "readouts", "pretrained_level"]

    @property
    def readouts(self) -> Dict[str, str]:
        """``{target: readout}`` of the targets not read out by PET's sum
        (:mod:`.recipe.readouts`)."""
        return self.__dict__.get("_readouts", {})

    @readouts.setter
    def readouts(self, value: Dict[str, str]) -> None:
        self.__dict__["_readouts"] = dict(value)

    @property
    def pretrained_level(self) -> List[str]:
        """The kept pretrained targets served by the backbone without its LoRA
        adapters (:mod:`.recipe.pretrained_level`): the old level, exactly."""
        return self.__dict__.get("_pretrained_level", [])

    @pretrained_level.setter
    def pretrained_level(self, value: List[str]) -> None:
        self.__dict__["_pretrained_level"] = list(value)

    @property
    def has_new_targets(self) -> bool:
        """Whether ``restart`` added targets (PET's attribute). Reading it puts back
        the random state given to :meth:`resume_random_state`, once."""
        state = self.__dict__.pop("_random_state_to_resume", None)
        if state is not None:
            restore_random_state(state)
        # an adopted PET instance holds it as a plain attribute
        plain = self.__dict__.get("has_new_targets", False)
        return self.__dict__.get("_has_new_targets", plain)

    @has_new_targets.setter
    def has_new_targets(self, value: bool) -> None:
        self.__dict__["_has_new_targets"] = bool(value)

    def resume_random_state(self, state: Dict[str, Any]) -> None:
        """Put back ``state`` (:func:`.resume.capture_random_state`) when PET's
        trainer next reads :attr:`has_new_targets`."""
        self.__dict__["_random_state_to_resume"] = state


# in a run that selected pet_transfer, a native PET whose data bring elements its
# checkpoint lacks reaches `PETTransfer.restart` instead of PET's error
restart_route.route_new_types(PETTransfer)
