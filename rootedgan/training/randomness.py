"""Where a training step's random draws come from (latents, labels, style mixing, path-length probe).

* :class:`SeededRandomness` (the default): PyTorch's generators, re-seeded at every step from
  ``(seed, rank, step)``, so a resumed run draws what the uninterrupted run drew with no state to save.
* :class:`ReplayRandomness`: recorded draws (NVIDIA's own iterations, ``tests/fixtures/nvidia/``), so that
  the real ``training_step`` can be checked against another implementation draw for draw.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping
from typing import Protocol

import numpy as np
import torch

from rootedgan.sampling import derive_seed

PHASES = ("Gmain", "Greg", "Dmain", "Dreg")


class StepRandomness(Protocol):
    """What a training step draws (``phase``: one of :data:`PHASES`): inside the context ``step``, ``latents``
    ``[n, z_dim]``; ``labels`` to generate with, drawn from the real batch's; ``mixing_cutoff``, the first ws
    index taken from the second latent (None: no mixing); ``mixing_latents``, the second latents, shaped like
    ``z``; ``pl_noise``, the path-length probe ``N(0, I) / sqrt(H * W)`` shaped like ``img``."""

    noise_mode: str  # of the synthesis network during training: random, const or none

    def step(self, step: int, device: torch.device) -> contextlib.AbstractContextManager[None]: ...
    def latents(self, phase: str, n: int, z_dim: int, device: torch.device) -> torch.Tensor: ...
    def labels(self, phase: str, real_c: torch.Tensor) -> torch.Tensor: ...
    def mixing_cutoff(self, phase: str, num_ws: int, prob: float) -> int | None: ...
    def mixing_latents(self, phase: str, z: torch.Tensor) -> torch.Tensor: ...
    def pl_noise(self, img: torch.Tensor) -> torch.Tensor: ...


class SeededRandomness:
    """PyTorch's generators, seeded per step from ``(seed, rank, step)``."""

    noise_mode = "random"

    def __init__(self, seed: int, rank: int = 0) -> None:
        self.seed, self.rank = int(seed), int(rank)

    @contextlib.contextmanager
    def step(self, step: int, device: torch.device) -> Iterator[None]:
        # Only the CPU state is restored: saving a CUDA generator's state would sync; re-seeding does not.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(self.seed, self.rank, step))  # seeds every CUDA device too
            yield

    def latents(self, phase: str, n: int, z_dim: int, device: torch.device) -> torch.Tensor:
        return torch.randn([n, z_dim], device=device)

    def labels(self, phase: str, real_c: torch.Tensor) -> torch.Tensor:
        if real_c.shape[-1] == 0:
            return real_c
        return real_c[torch.randperm(real_c.shape[0]).to(real_c.device)]

    def mixing_cutoff(self, phase: str, num_ws: int, prob: float) -> int | None:
        # Drawn on the CPU generator: a host-side decision without a device synchronisation.
        if prob <= 0 or num_ws < 2 or float(torch.rand([])) >= prob:
            return None
        return int(torch.randint(1, num_ws, []))

    def mixing_latents(self, phase: str, z: torch.Tensor) -> torch.Tensor:
        return torch.randn_like(z)

    def pl_noise(self, img: torch.Tensor) -> torch.Tensor:
        return torch.randn_like(img) / math.sqrt(img.shape[2] * img.shape[3])


class ReplayRandomness:
    """Recorded ``z_<phase> [steps, N, z_dim]`` and ``pl_noise [steps, n, C, H, W]`` (over ``sqrt(H W)``);
    labels are the real batch's, noise ``const`` by default; style mixing cannot be replayed (it raises)."""

    def __init__(self, arrays: Mapping[str, np.ndarray], noise_mode: str = "const") -> None:
        self.arrays, self.noise_mode = arrays, noise_mode
        self._step: int | None = None

    @contextlib.contextmanager
    def step(self, step: int, device: torch.device) -> Iterator[None]:
        self._step = int(step)
        try:
            yield
        finally:
            self._step = None

    def _draw(self, key: str) -> np.ndarray:
        if self._step is None:
            raise RuntimeError("ReplayRandomness: draws happen inside step()")
        if key not in self.arrays:
            raise KeyError(f"no recorded {key!r}; recorded: {', '.join(sorted(self.arrays))}")
        record = self.arrays[key]
        if self._step >= len(record):
            raise IndexError(f"{key!r} holds {len(record)} steps; step {self._step} was asked for")
        return record[self._step]

    def latents(self, phase: str, n: int, z_dim: int, device: torch.device) -> torch.Tensor:
        z = torch.as_tensor(np.asarray(self._draw(f"z_{phase}")), device=device)
        if z.shape[0] < n or z.shape[1] != z_dim:
            raise ValueError(f"recorded z_{phase} is {tuple(z.shape)}; [{n}, {z_dim}] was asked for")
        return z[:n]

    def labels(self, phase: str, real_c: torch.Tensor) -> torch.Tensor:
        return real_c

    def mixing_cutoff(self, phase: str, num_ws: int, prob: float) -> int | None:
        if prob > 0:
            raise ValueError("ReplayRandomness cannot replay style mixing: set style_mixing_prob to 0")
        return None

    def mixing_latents(self, phase: str, z: torch.Tensor) -> torch.Tensor:
        raise ValueError("ReplayRandomness cannot replay style mixing")

    def pl_noise(self, img: torch.Tensor) -> torch.Tensor:
        noise = torch.as_tensor(np.asarray(self._draw("pl_noise")), device=img.device, dtype=img.dtype)
        if noise.shape != img.shape:
            raise ValueError(f"recorded pl_noise is {tuple(noise.shape)}; the image is {tuple(img.shape)}")
        return noise
