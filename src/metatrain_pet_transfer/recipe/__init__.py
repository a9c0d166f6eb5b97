"""The steps of the transfer recipe, one module per step.

The trainer (:mod:`metatrain_pet_transfer.trainer`) calls them in order, between
metatrain's fine-tuning set-up (new heads and composition model for new targets) and
PET's training loop:

- :mod:`.species`: atomic types the checkpoint lacks are added to the model (at
  ``restart``, through ``PETTransfer.restart``), their rows initialised and, with
  ``heads`` or ``lora``, made trainable;
- :mod:`.species`: atomic types the checkpoint never saw get new rows in every
  per-type tensor (the model itself is extended in ``PETTransfer.restart``);
- :mod:`.alignment`: new energy heads start as copies of the pretrained head, with a
  composition model fitted on the residual "new labels minus pretrained predictions";
- :mod:`.lora`: LoRA adapters start as a no-op;
- :mod:`.distillation`: with ``keep_pretrained_heads``, the old energy heads train on
  the pretrained model's own predictions, or on old-level frames (:mod:`.replay`);
  with ``lora`` they are served exactly (:mod:`.pretrained_level`);
- :mod:`.energy_levels`: the exported model serves ``mtt::energy_<level>`` also as the
  variant ``energy/<level>``.

A new step is a new module here, called from the trainer.
"""
