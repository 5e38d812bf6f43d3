"""Seeds, latents, labels and devices as NVIDIA's tools define them: the library side of ``generate``,
``style-mixing``, ``project``, ``fid`` and the snapshot grids (commands import from here, never the
other way round).

Seed ``s`` is ``numpy.random.RandomState(s).randn(1, z_dim)``, as in NVIDIA's ``generate.py``, so the same
seed gives the same image as NVIDIA's tools on the same network.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from rootedgan.errors import UserError

MAX_SEEDS = 1_000_000  # one run writes at most this many images (latents are made batch by batch)


def parse_seeds(spec: str, max_count: int = MAX_SEEDS) -> list[int]:
    """``'0-3,10'`` -> ``[0, 1, 2, 3, 10]`` (ranges inclusive, order kept); at most ``max_count`` seeds,
    each in ``[0, 2**32)`` (NVIDIA's RandomState seeds). Counted before any list is made."""
    parts: list[tuple[int, int]] = []
    total = 0
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part:
                lo, hi = part.split("-", 1)
                lo_i, hi_i = int(lo), int(hi)
                if hi_i < lo_i:
                    raise ValueError
            else:
                lo_i = hi_i = int(part)
        except ValueError:
            raise UserError(f"cannot parse seeds {spec!r}: use numbers and ranges like 0-63,100") from None
        if lo_i < 0 or hi_i >= 2**32:
            raise UserError(f"seeds must be in [0, 2**32), got {part!r}")
        total += hi_i - lo_i + 1
        if total > max_count:
            raise UserError(
                f"--seeds {spec!r} asks for more than {max_count} images; split it into several runs"
            )
        parts.append((lo_i, hi_i))
    if not parts:
        raise UserError("no seeds given")
    return [seed for lo_i, hi_i in parts for seed in range(lo_i, hi_i + 1)]


def check_ops_setting() -> None:
    """A bad ``STYLEGAN_OPS_IMPL`` is a one-line error before any work (not at the first forward pass)."""
    from stylegan_ops._impl import requested_impl

    requested_impl()  # raises ImplSettingError, a UserError


def check_truncation(psi: float, cutoff: int | None = None) -> None:
    """One-line errors for a truncation psi that is not a finite number or a negative cutoff."""
    if isinstance(psi, bool) or not isinstance(psi, int | float) or not math.isfinite(psi):
        raise UserError(f"--trunc must be a finite number, got {psi!r}")
    if cutoff is not None and cutoff < 0:
        raise UserError(f"--trunc-cutoff must be >= 0, got {cutoff}")


def seed_latents(seeds: Sequence[int], z_dim: int) -> np.ndarray:
    """``[len(seeds), z_dim]`` float32 latents, one ``RandomState(seed).randn(1, z_dim)`` per seed."""
    return np.concatenate([np.random.RandomState(s).randn(1, z_dim) for s in seeds]).astype(np.float32)


def class_labels(c_dim: int, class_idx: int | None, count: int) -> torch.Tensor:
    """One-hot ``[count, c_dim]`` labels (``[count, 0]`` for unconditional networks)."""
    if c_dim == 0:
        if class_idx is not None:
            raise UserError("--class was given but the network is unconditional")
        return torch.zeros([count, 0])
    if class_idx is None:
        raise UserError(f"the network is conditional ({c_dim} classes): pass --class N")
    if not 0 <= class_idx < c_dim:
        raise UserError(f"--class must be in [0, {c_dim}), got {class_idx}")
    c = torch.zeros([count, c_dim])
    c[:, class_idx] = 1
    return c


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda`` without a GPU is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but torch sees no CUDA device")
    return torch.device(name)
