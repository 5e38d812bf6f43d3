"""Where the random draws of a training step come from: one replaceable source.

A training step (:mod:`rootedgan.training.module`) asks its source for every random quantity it uses: each
phase's latents and generated labels, the style-mixing cutoff and second latents, the path-length probe,
and the synthesis noise mode. Swapping the source changes nothing else in the step.

* :class:`SeededRandomness` (the default) draws from PyTorch's generators, re-seeded at the start of
  every step from ``(seed, rank, step)``. A resumed run therefore draws exactly what the uninterrupted
  run drew, and no state needs to be checkpointed. The CPU generator's state is restored after the step
  (user code around training is not disturbed); CUDA generators are only re-seeded, which needs no
  device synchronisation.
* :class:`ReplayRandomness` returns recorded draws, e.g. NVIDIA's own training iterations
  (``tests/fixtures/nvidia/tiny32.train4.npz``), so that the real ``training_step`` can be checked
  against another implementation draw for draw.
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
    """What a training step draws. ``phase`` is one of :data:`PHASES`."""

    #: ``noise_mode`` of the synthesis network during training (``random``, ``const`` or ``none``).
    noise_mode: str

    def step(self, step: int, device: torch.device) -> contextlib.AbstractContextManager[None]:
        """Context of one training step (all other draws happen inside it)."""
        ...

    def latents(self, phase: str, n: int, z_dim: int, device: torch.device) -> torch.Tensor:
        """``[n, z_dim]`` latents of a phase."""
        ...

    def labels(self, phase: str, real_c: torch.Tensor) -> torch.Tensor:
        """``[N, c_dim]`` labels to generate with, drawn from the real batch's labels."""
        ...

    def mixing_cutoff(self, phase: str, num_ws: int, prob: float) -> int | None:
        """Style mixing: the first ws index taken from the second latent, or None for no mixing."""
        ...

    def mixing_latents(self, phase: str, z: torch.Tensor) -> torch.Tensor:
        """The second latents of style mixing, shaped like ``z``."""
        ...

    def pl_noise(self, img: torch.Tensor) -> torch.Tensor:
        """Path-length probe ``y ~ N(0, I) / sqrt(H * W)`` shaped like ``img``."""
        ...


class SeededRandomness:
    """PyTorch's generators, seeded per step from ``(seed, rank, step)``."""

    noise_mode = "random"

    def __init__(self, seed: int, rank: int = 0) -> None:
        self.seed = int(seed)
        self.rank = int(rank)

    @contextlib.contextmanager
    def step(self, step: int, device: torch.device) -> Iterator[None]:
        # fork_rng on a CUDA device would copy the generator state to the host (a synchronisation) twice
        # per step; re-seeding needs none, so only the CPU state is saved and restored.
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
    """Recorded draws, one entry per step: ``z_<phase>`` ``[steps, N, z_dim]`` and ``pl_noise``
    ``[steps, n, C, H, W]`` (already divided by ``sqrt(H * W)``), as in NVIDIA's ``tiny32.train4.npz``.

    Labels are the real batch's own (no shuffling) and the synthesis noise is ``const`` unless told
    otherwise. Style mixing cannot be replayed (no recorded cutoffs): a mixing probability > 0 raises.
    """

    def __init__(self, arrays: Mapping[str, np.ndarray], noise_mode: str = "const") -> None:
        self.arrays = arrays
        self.noise_mode = noise_mode
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
