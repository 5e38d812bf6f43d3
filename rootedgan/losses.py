"""Adversarial loss primitives, the G/D objectives built from them, and StyleGAN2's regularizers.

A primitive ``phi`` replaces ``softplus`` everywhere in StyleGAN2's non-saturating logistic loss:
G minimizes ``phi(-D(G(z)))``; D minimizes ``phi(D(G(z))) + phi(-D(x))``. Adding a loss is adding one
elementwise function to :data:`LOSSES`.

Rooted logistic objective (arXiv 2310.03890), root ``k > 1``::

    rooted(u) = k * (1 + e^u)^(1/k) = k * exp(softplus(u) / k)        [- k with subtract_k]

It tends to softplus + k as k grows; ``-k`` (``subtract_k``) makes it a tight upper bound of softplus
without changing any gradient. Its gradient ``exp(softplus(u)/k) * sigmoid(u)`` grows like ``e^(u/k)``;
at ``u = 1e4`` that is ``e^5000``, beyond even float64. So the loss we optimise is defined as rooted up
to the logit ``u_cap`` where the gradient reaches ``max_grad``, continued linearly (value and slope
continuous, still convex and increasing) above it. The capped fraction is reported for logging.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

DEFAULT_ROOT = 2.0
DEFAULT_MAX_GRAD = 1e6

LossPrimitive = Callable[[torch.Tensor], torch.Tensor]


def _validate_root(k: float) -> float:
    k = float(k)
    if not math.isfinite(k) or k <= 1:
        raise ValueError(
            f"the rooted loss needs a root k > 1 (got k={k}): k = 1 is exp(softplus(u)), which "
            "overflows and is not a valid objective, and k <= 0 inverts or breaks it. Typical values: 2 to 8."
        )
    return k


@functools.lru_cache(maxsize=64)
def rooted_cap(k: float, max_grad: float | None) -> float:
    """The logit above which :func:`rooted` continues linearly: where its slope reaches ``max_grad``.

    Solves ``exp(softplus(u)/k) * sigmoid(u) = max_grad`` by bisection in float64 (monotone in u);
    cached per ``(k, max_grad)`` (a training step asks for it several times).
    """
    if max_grad is None:
        return math.inf
    if max_grad <= 1:
        raise ValueError(f"max_grad must be > 1, got {max_grad}")

    def slope(u: float) -> float:
        sp = max(u, 0.0) + math.log1p(math.exp(-abs(u)))
        return math.exp(sp / k) / (1 + math.exp(-u))

    lo, hi = 0.0, k * math.log(max_grad) + 50
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if slope(mid) < max_grad else (lo, mid)
    return lo


def logistic(u: torch.Tensor) -> torch.Tensor:
    """``softplus(u) = log(1 + e^u)``, computed stably; float32 for low-precision inputs."""
    x = u.float() if u.dtype in (torch.float16, torch.bfloat16) else u
    return F.softplus(x, beta=1, threshold=20)


def rooted(
    u: torch.Tensor,
    k: float = DEFAULT_ROOT,
    subtract_k: bool = False,
    max_grad: float | None = DEFAULT_MAX_GRAD,
) -> torch.Tensor:
    """Elementwise rooted logistic loss ``k * exp(softplus(u) / k)`` (minus ``k`` if ``subtract_k``).

    Finite with finite gradients for logits of any magnitude: above ``rooted_cap(k, max_grad)`` it
    continues along its tangent (slope ``max_grad``); ``max_grad=None`` disables that (and overflows
    for large logits, as the paper's reference implementation did). Low-precision inputs (bf16, fp16)
    are computed in float32 and the result is float32.
    """
    k = _validate_root(k)
    x = u.float() if u.dtype in (torch.float16, torch.bfloat16) else u
    cap = rooted_cap(k, max_grad)
    inside = x.clamp(max=cap) if math.isfinite(cap) else x
    scaled = F.softplus(inside) / k
    value = k * torch.expm1(scaled) if subtract_k else k * torch.exp(scaled)
    if math.isfinite(cap):
        # relu, not (x - inside): the latter sends +-max_grad through both branches and the tiny
        # true gradient is lost to float32 rounding.
        value = value + max_grad * (x - cap).clamp(min=0)
    return value


def capped_fraction(
    logits: torch.Tensor, k: float, max_grad: float | None = DEFAULT_MAX_GRAD
) -> torch.Tensor:
    """Fraction of ``logits`` (as they enter ``rooted``) beyond the linear-continuation point."""
    cap = rooted_cap(_validate_root(k), max_grad)
    return (logits.detach().float() > cap).float().mean()


LOSSES: dict[str, Callable[..., torch.Tensor]] = {"logistic": logistic, "rooted": rooted}


@dataclass(frozen=True)
class AdversarialLoss:
    """A primitive plus its settings; builds the G and D objectives (per-sample, not reduced)."""

    name: str = "rooted"
    k: float = DEFAULT_ROOT
    subtract_k: bool = False
    max_grad: float | None = DEFAULT_MAX_GRAD

    def __post_init__(self) -> None:
        if self.name not in LOSSES:
            raise ValueError(f"unknown loss {self.name!r}; expected one of {', '.join(LOSSES)}")
        if self.name == "rooted":
            _validate_root(self.k)

    @classmethod
    def parse(cls, spec: str, **kwargs) -> AdversarialLoss:
        """``'logistic'``, ``'rooted'`` or ``'rooted:K'`` (e.g. ``'rooted:4'``)."""
        name, _, root = spec.partition(":")
        if root:
            try:
                kwargs["k"] = float(root)
            except ValueError:
                raise ValueError(f"cannot read the root in loss {spec!r}; use e.g. rooted:2") from None
        return cls(name=name, **kwargs)

    @property
    def label(self) -> str:
        return f"rooted:{self.k:g}" if self.name == "rooted" else self.name

    def phi(self, u: torch.Tensor) -> torch.Tensor:
        if self.name == "rooted":
            return rooted(u, k=self.k, subtract_k=self.subtract_k, max_grad=self.max_grad)
        return LOSSES[self.name](u)

    def generator(self, fake_logits: torch.Tensor) -> torch.Tensor:
        """Non-saturating G objective ``phi(-D(G(z)))``."""
        return self.phi(-fake_logits)

    def discriminator_fake(self, fake_logits: torch.Tensor) -> torch.Tensor:
        """D term on generated images ``phi(D(G(z)))``."""
        return self.phi(fake_logits)

    def discriminator_real(self, real_logits: torch.Tensor) -> torch.Tensor:
        """D term on real images ``phi(-D(x))``."""
        return self.phi(-real_logits)

    def capped(self, u: torch.Tensor) -> torch.Tensor:
        """Fraction of primitive inputs ``u`` that fell on the linear continuation (0 for logistic)."""
        if self.name != "rooted":
            return torch.zeros((), device=u.device)
        return capped_fraction(u, self.k, self.max_grad)


# ---------------------------------------------------------------------------------------------
# Regularizers


def r1_penalty(real_img: torch.Tensor, real_logits: torch.Tensor) -> torch.Tensor:
    """Per-sample ``||grad_x D(x)||^2`` ``[N]``; ``real_img`` must require grad. Keeps the graph
    (``create_graph``) so the penalty can be minimised."""
    (grad,) = torch.autograd.grad(real_logits.sum(), real_img, create_graph=True, only_inputs=True)
    return grad.square().flatten(1).sum(dim=1)


def path_length(img: torch.Tensor, ws: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample Jacobian norm estimate ``|J_w^T y|`` ``[N]`` with the probe ``y ~ N(0, I) / sqrt(H*W)``
    (``noise``, shaped like ``img``; drawn here when None)."""
    if noise is None:
        noise = torch.randn_like(img) / math.sqrt(img.shape[2] * img.shape[3])
    (grad,) = torch.autograd.grad((img * noise).sum(), ws, create_graph=True, only_inputs=True)
    return grad.square().sum(dim=2).mean(dim=1).sqrt()


def path_length_penalty(
    lengths: torch.Tensor, pl_mean: torch.Tensor, decay: float = 0.01, batch_mean: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(penalty [N], new pl_mean)``: ``(|J^T y| - a)^2`` with ``a = lerp(pl_mean, mean(lengths), decay)``.

    As in NVIDIA's loss, ``a`` is not detached: the penalty's gradient also flows through the batch mean.
    ``batch_mean`` replaces the *value* of ``mean(lengths)`` (e.g. averaged over all ranks, detached);
    the gradient still flows through this rank's ``lengths.mean()``."""
    local = lengths.mean()
    if batch_mean is not None:
        local = local + (batch_mean.detach() - local.detach())
    new_mean = pl_mean.lerp(local, decay)
    return (lengths - new_mean).square(), new_mean


def lazy_regularization(
    lr: float, betas: tuple[float, float], interval: int
) -> tuple[float, tuple[float, float]]:
    """Adam settings for a net regularized every ``interval`` steps: ``lr * c`` and ``beta ** c``,
    ``c = I / (I + 1)`` (StyleGAN2, appendix B)."""
    if interval <= 0:
        return lr, betas
    c = interval / (interval + 1)
    return lr * c, (betas[0] ** c, betas[1] ** c)
