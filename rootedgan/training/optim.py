"""Optimizer presets: StyleGAN's Adam (betas 0, 0.99; the default) and golden-ratio SGD (README "Optimizers").

Golden: SGD with momentum ``sqrt(2) / PHI = sqrt(3 - sqrt 5) = 0.87403...`` and learning rate
``(1 - momentum)^2 = 0.015866...``: rootedgan's expressions for the rounded values (0.874, 0.016) reported
for arXiv 2605.20009 (Jaeger et al.; see also arXiv 2006.04751). We could not read the derivation, so that
the papers use exactly these is not confirmed; both train classifiers, not GANs. Lazy regularization
rescales both presets alike (``lr * c``; ``beta1`` or the momentum ``** c``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from rootedgan.training.losses import lazy_regularization
from rootedgan.training.settings import OPTIMIZERS

PHI = (1 + math.sqrt(5)) / 2
GOLDEN_MOMENTUM = math.sqrt(2) / PHI
GOLDEN_LR = (1 - GOLDEN_MOMENTUM) ** 2
GOLDEN_SOURCE = (
    "momentum sqrt(2)/phi, lr (1 - momentum)^2: rootedgan's expressions for the values (about 0.874 and "
    "0.016) reported for arXiv 2605.20009 (Jaeger et al.; see also arXiv 2006.04751); not confirmed "
    "from the papers' derivations"
)


def group_settings(
    name: str, lr: float, betas: tuple[float, float] = (0.0, 0.99), reg_interval: int = 0
) -> dict[str, Any]:
    """Param-group settings: ``adam``: ``lr``, ``betas``; ``golden``: its own lr and momentum (``lr`` and
    ``betas`` ignored). Both rescaled for lazy regularization every ``reg_interval`` steps (0: none)."""
    if name == "adam":
        lr, betas = lazy_regularization(lr, betas, reg_interval)
        return {"lr": lr, "betas": betas}
    if name == "golden":
        lr, (momentum, _) = lazy_regularization(GOLDEN_LR, (GOLDEN_MOMENTUM, 0.0), reg_interval)
        return {"lr": lr, "momentum": momentum}
    raise ValueError(f"unknown optimizer {name!r}; expected one of {', '.join(OPTIMIZERS)}")


def build_optimizer(
    name: str,
    params: Iterable[torch.nn.Parameter],
    lr: float,
    betas: tuple[float, float] = (0.0, 0.99),
    reg_interval: int = 0,
    fused: bool = False,
) -> torch.optim.Optimizer:
    """Adam(eps=1e-8) or SGD with momentum (:func:`group_settings`); ``fused``: PyTorch's fused kernels."""
    settings = group_settings(name, lr, betas, reg_interval)
    impl = {"fused": True} if fused else {}
    if name == "adam":
        return torch.optim.Adam(params, eps=1e-8, **settings, **impl)
    return torch.optim.SGD(params, **settings, **impl)


def describe(optimizer: torch.optim.Optimizer) -> dict[str, float | str]:
    """Name and settings of an optimizer built here, for logging."""
    group = optimizer.param_groups[0]
    if isinstance(optimizer, torch.optim.SGD):
        return {"name": "golden", "lr": group["lr"], "momentum": group["momentum"], "source": GOLDEN_SOURCE}
    return {"name": "adam", "lr": group["lr"], "beta1": group["betas"][0], "beta2": group["betas"][1]}
