"""``gan_ddp``: Lightning's DDP strategy without the DistributedDataParallel wrapper.

A GAN step's several backward passes through different sub-networks leave parameters unused, which DDP's
reducer cannot sync. Like NVIDIA's loop, ``FinetuneModule`` all-reduces each phase's gradients itself; this
keeps the rest of DDP (process group, launchers, samplers, checkpoint IO) and only skips the wrapping.
"""

from __future__ import annotations

import os

import torch
from lightning.pytorch.overrides.distributed import _sync_module_states
from lightning.pytorch.strategies import DDPStrategy, StrategyRegistry


class GANDDPStrategy(DDPStrategy):
    """DDP for modules that synchronise their own gradients."""

    strategy_name = "gan_ddp"

    def setup_environment(self) -> None:
        # Several CPU processes: split the cores (gloo's busy-waiting makes oversubscription very slow).
        if self.root_device.type == "cpu" and self.num_processes > 1:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // self.num_processes))
        super().setup_environment()

    def configure_ddp(self) -> None:
        # Same start for every rank (what the DDP wrapper's constructor would have broadcast).
        _sync_module_states(self.model)


if "gan_ddp" not in StrategyRegistry:
    StrategyRegistry.register("gan_ddp", GANDDPStrategy, description="DDP without the module wrapper")
