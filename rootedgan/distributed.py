"""Where this process stands in ``torch.distributed``: one helper for the whole package."""

from __future__ import annotations

import torch.distributed as dist


def rank_world() -> tuple[int, int]:
    """``(rank, world_size)`` of ``torch.distributed``; ``(0, 1)`` when it is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1
