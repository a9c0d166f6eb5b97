"""Checks of a run's inputs, before any training step.

:func:`.run_inputs.check_run_inputs` is the one entry point (called by the trainer):
it runs every check on every dataset section and raises one error listing every
problem found, each naming the file, key or option at fault. The rules live in
:mod:`.gradients` (requested forces, stress and virial labels exist and fit) and
:mod:`.labels` (the labels themselves, structure by structure). The checkpoint given
as ``training.finetune.read_from`` is checked earlier, during option validation
(:mod:`metatrain_pet_transfer.checkpoints`).
"""
