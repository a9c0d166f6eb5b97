"""LoRA that starts at the pretrained model.

metatrain's ``LoRALinear`` initialises both low-rank factors randomly, so the
adapted layers differ from the pretrained ones before the first step, and training
starts away from the (aligned) pretrained model; the ``native-lora`` and
``plugin-lora`` rows of ``bench/learning_curve.py`` compare the two starts. LoRA as
published (Hu et al. 2021; also the
default of Hugging Face's PEFT) sets the second factor ``B`` to zero, so that the
adapters are a no-op until training moves them. Here the adapters are injected
with metatrain's own ``inject_lora_layers`` before PET's trainer runs, and ``B``
is zeroed; the trainer then finds LoRA already applied and only freezes the
other weights.
"""

import logging

import torch
from metatrain.pet.modules.finetuning import LoRALinear, inject_lora_layers


logger = logging.getLogger(__name__)


def start_lora_at_pretrained(model, finetune: dict):
    """Inject LoRA adapters whose product is zero (``B = 0``), unless present.

    :param model: the PET model, before PET's trainer applies the strategy
    :param finetune: the ``training.finetune`` options (method ``lora``)
    :return: the model (modified in place)
    """
    if any(isinstance(module, LoRALinear) for module in model.modules()):
        return model  # restarted run: the adapters carry trained weights
    config = finetune.get("config", {})
    parameter = next(model.parameters())
    inject_lora_layers(
        model,
        target_modules=tuple(
            config.get("target_modules", ["input_linear", "output_linear"])
        ),
        rank=config.get("rank", 4),
        alpha=config.get("alpha", 8),
        device=parameter.device,
        dtype=parameter.dtype,
    )
    adapters = [m for m in model.modules() if isinstance(m, LoRALinear)]
    with torch.no_grad():
        for adapter in adapters:
            adapter.lora_B.weight.zero_()
    logger.info(
        f"LoRA: {len(adapters)} adapters start as a no-op (B = 0): the model "
        "predicts exactly as before training"
    )
    return model
