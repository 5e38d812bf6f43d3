"""One finetune: the LightningModule (``module``), its settings, losses, randomness, optimizers,
augmentation, orthogonal finetuning, snapshots, resume, progress and the ``gan_ddp`` strategy."""
