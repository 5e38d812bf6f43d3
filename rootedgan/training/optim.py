"""Optimizer presets: StyleGAN's Adam (the default) and the golden-ratio SGD preset.

Golden-ratio SGD (``golden``): plain SGD with momentum, with constants that are, exactly:

* ``PHI = (1 + sqrt 5) / 2`` (the golden ratio, the positive root of ``x^2 = x + 1``);
* momentum ``GOLDEN_MOMENTUM = sqrt(2) / PHI``, which equals ``sqrt(3 - sqrt 5) = 0.8740320...``
  (``1 / PHI^2 = 2 - PHI``);
* learning rate ``GOLDEN_LR = (1 - GOLDEN_MOMENTUM)^2 = 4 - sqrt 5 - 2 sqrt(3 - sqrt 5) = 0.0158660...``.

Where they come from, and what is not confirmed: Jaeger (arXiv 2006.04751, "The Golden Ratio of Learning
and Momentum") ties SGD's learning rate and momentum to the golden ratio, and Bui, Yu, Kantipudi, Yaniv and
Jaeger (arXiv 2605.20009, "Training Neural Networks with Optimal Double-Bayesian Learning") are reported,
in summaries of that paper, to derive a learning rate of about 0.016 and a momentum weight of about 0.874.
We could not read either derivation. The two expressions above are rootedgan's: they reproduce those two
rounded values, and the learning rate is defined from the momentum; that the papers use exactly these
expressions is not confirmed. Both papers train classifiers, not GANs. Treat the preset as an experiment.

StyleGAN's default stays Adam with betas (0, 0.99). Lazy regularization (interval I, ``c = I/(I+1)``)
rescales Adam as ``lr * c``, ``beta ** c``; the golden preset is rescaled the same way (``lr * c``,
``momentum ** c``), so that both keep StyleGAN's per-image update statistics.
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
GOLDEN_LR = (1 - math.sqrt(2) / PHI) ** 2
GOLDEN_SOURCE = (
    "momentum sqrt(2)/phi, lr (1 - momentum)^2: rootedgan's expressions for the values (about 0.874 and "
    "0.016) reported for arXiv 2605.20009 (Jaeger et al.; see also arXiv 2006.04751); not confirmed "
    "from the papers' derivations"
)


def group_settings(
    name: str, lr: float, betas: tuple[float, float] = (0.0, 0.99), reg_interval: int = 0
) -> dict[str, Any]:
    """The param-group settings of an optimizer: ``adam``: ``lr``, ``betas``; ``golden``: the golden-ratio lr
    and momentum (``lr`` and ``betas`` ignored). Both rescaled for lazy regularization every ``reg_interval``
    steps (0: none); the golden momentum plays beta1's role in the rescaling."""
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
    """``adam``: Adam(eps=1e-8) or ``golden``: SGD with momentum, set by :func:`group_settings`. ``fused``:
    PyTorch's fused implementation (one kernel for all parameters); same update up to rounding."""
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
