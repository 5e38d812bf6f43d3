"""``gan_ddp``: Lightning's DDP strategy without the DistributedDataParallel wrapper.

A GAN step runs several backward passes (G main, G reg, D main + R1) through different sub-networks,
and each leaves parameters unused. DistributedDataParallel's reducer expects one backward per forward
over a fixed parameter set, so wrapping the module fails or needs ``find_unused_parameters`` and still
syncs the wrong things. Like NVIDIA's training loop, :class:`rootedgan.training.module.FinetuneModule`
all-reduces the gradients of each phase itself; this strategy keeps everything else from DDP
(process group, ranks, launchers, samplers, checkpoint IO) and only skips the wrapping.
"""

from __future__ import annotations

import os

import torch
from lightning.pytorch.overrides.distributed import _sync_module_states
from lightning.pytorch.strategies import DDPStrategy, StrategyRegistry


class GANDDPStrategy(DDPStrategy):
    """DDP for modules that synchronise their own gradients (see module docstring)."""

    strategy_name = "gan_ddp"

    def setup_environment(self) -> None:
        # Several CPU processes on one machine: split the cores instead of oversubscribing them
        # (gloo's busy-waiting makes oversubscription very slow).
        if self.root_device.type == "cpu" and self.num_processes > 1:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // self.num_processes))
        super().setup_environment()

    def configure_ddp(self) -> None:
        # Same start for every rank (what the DDP wrapper's constructor would have broadcast).
        _sync_module_states(self.model)


if "gan_ddp" not in StrategyRegistry:
    StrategyRegistry.register(
        "gan_ddp",
        GANDDPStrategy,
        description="DDP without the module wrapper; the GAN module syncs its own grads",
    )
