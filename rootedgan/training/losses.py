"""Adversarial loss primitives, the G/D objectives built from them, and StyleGAN2's regularizers.

A primitive ``phi`` replaces ``softplus`` everywhere in StyleGAN2's non-saturating logistic loss:
G minimizes ``phi(-D(G(z)))``; D minimizes ``phi(D(G(z))) + phi(-D(x))``. A loss is a small class that
carries its settings (EDM's habit), registered in :data:`LOSSES`; :func:`make_loss` builds one from a YAML
mapping (``{name: rooted, k: 20}``) or the short form (``rooted:20``). Adding a loss is adding one class.

Rooted logistic objective (arXiv 2310.03890), root ``k > 1``::

    rooted(u) = k * (1 + e^u)^(1/k) = k * exp(softplus(u) / k)        [- k with subtract_k]

It tends to softplus + k as k grows; ``-k`` (``subtract_k``) makes it a tight upper bound of softplus
without changing any gradient. Its gradient ``exp(softplus(u)/k) * sigmoid(u)`` grows like ``e^(u/k)``;
at ``u = 1e4`` that is ``e^5000``, beyond even float64. So the loss we optimise is defined as rooted up
to the logit ``u_cap`` where the gradient reaches ``max_grad``, continued linearly (value and slope
continuous, still convex and increasing) above it. The capped fraction is reported for logging.

Scaled losses (controls for loss comparisons), written ``BASE*FACTOR`` in ``model.loss``:

* ``logistic*2`` (any loss, any constant ``c > 0``): every G and D adversarial term times ``c``. Under
  Adam this changes almost nothing: Adam's update is invariant to a constant gradient scale (up to its
  ``eps``), so for G it is the base loss, and for D, whose Adam also takes the R1 steps, it is the base
  loss with ``r1_gamma / c`` (the adversarial term weighs ``c`` times more against R1). It isolates that
  balance, not the step size.
* ``logistic*rooted:K``: logistic, each term's batch scaled by the (detached) factor that gives it the
  same total per-sample gradient as ``rooted:K`` on that batch,
  ``c = sum_i rooted_K'(u_i) / sum_i sigmoid(u_i)``. Its steps are as large as rooted's (Adam sees the
  same rise in gradient size when D grows confident), but every sample in the batch is weighted as
  logistic weighs it. ``rooted:K`` minus this control is the effect of rooted's per-sample reweighting;
  this control minus ``logistic`` is the effect of its step sizes.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from rootedgan.errors import SettingError

DEFAULT_ROOT = 20.0  # the study: k = 2 (the authors') was worse than logistic, k = 20 no worse
DEFAULT_MAX_GRAD = 1e6


def _finite_positive(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def _validate_root(k: Any) -> float:
    if not (_finite_positive(k) and k > 1):
        raise SettingError(
            f"the rooted loss needs a root k > 1 (got k={k!r}): k = 1 is exp(softplus(u)), which "
            f"overflows and is not a valid objective, and k <= 0 inverts or breaks it. Typical values: 2 "
            f"(the paper's authors) to {DEFAULT_ROOT:g} (the default)."
        )
    return float(k)


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


def rooted_slope(
    u: torch.Tensor, k: float = DEFAULT_ROOT, max_grad: float | None = DEFAULT_MAX_GRAD
) -> torch.Tensor:
    """The derivative of :func:`rooted` in closed form (float32 or wider, no autograd):
    ``exp(softplus(u) / k) * sigmoid(u)`` below the cap, ``max_grad`` above it."""
    k = _validate_root(k)
    x = u.float() if u.dtype in (torch.float16, torch.bfloat16) else u
    cap = rooted_cap(k, max_grad)
    inside = x.clamp(max=cap) if math.isfinite(cap) else x
    slope = torch.exp(F.softplus(inside) / k) * torch.sigmoid(inside)
    if math.isfinite(cap):
        slope = torch.where(x > cap, torch.full_like(slope, float(max_grad)), slope)
    return slope


def capped_fraction(
    logits: torch.Tensor, k: float, max_grad: float | None = DEFAULT_MAX_GRAD
) -> torch.Tensor:
    """Fraction of ``logits`` (as they enter ``rooted``) beyond the linear-continuation point."""
    cap = rooted_cap(_validate_root(k), max_grad)
    return (logits.detach().float() > cap).float().mean()


@dataclass(frozen=True, kw_only=True)
class AdversarialLoss:
    """An adversarial loss: the primitive ``phi`` and the G and D objectives built from it (per sample, not
    reduced). ``scale`` multiplies every term by a constant (a control: module docstring)."""

    name: ClassVar[str]
    scale: float = 1.0

    def __post_init__(self) -> None:
        if not _finite_positive(self.scale):
            raise SettingError(f"the loss scale must be a finite number > 0, got {self.scale!r}")

    def phi(self, u: torch.Tensor) -> torch.Tensor:
        """The elementwise primitive (``softplus`` for logistic)."""
        raise NotImplementedError

    def term(self, u: torch.Tensor) -> torch.Tensor:
        """``phi(u)`` per sample, times ``scale``."""
        value = self.phi(u)
        return value * self.scale if self.scale != 1.0 else value

    def generator(self, fake_logits: torch.Tensor) -> torch.Tensor:
        """Non-saturating G objective ``phi(-D(G(z)))``."""
        return self.term(-fake_logits)

    def discriminator_fake(self, fake_logits: torch.Tensor) -> torch.Tensor:
        """D term on generated images ``phi(D(G(z)))``."""
        return self.term(fake_logits)

    def discriminator_real(self, real_logits: torch.Tensor) -> torch.Tensor:
        """D term on real images ``phi(-D(x))``."""
        return self.term(-real_logits)

    def capped(self, u: torch.Tensor) -> torch.Tensor:
        """Fraction of primitive inputs ``u`` on the rooted loss's linear continuation (0 for the others)."""
        return torch.zeros((), device=u.device)

    def lower_bound(self) -> float:
        """Infimum of one per-sample term."""
        return 0.0

    @property
    def label(self) -> str:
        """The short form (``rooted:4``, ``logistic*2``, ``logistic*rooted:2``): run names, logs, reports."""
        return self._label() + (f"*{self.scale:g}" if self.scale != 1.0 else "")

    def _label(self) -> str:
        return self.name

    def spec(self) -> dict[str, Any]:
        """The settings as a plain dict, ``make_loss(spec())`` rebuilds the loss (checkpoints, YAML)."""
        return {"name": self.name, **asdict(self)}


@dataclass(frozen=True, kw_only=True)
class Logistic(AdversarialLoss):
    """StyleGAN2's non-saturating logistic loss: ``phi = softplus``."""

    name: ClassVar[str] = "logistic"

    def phi(self, u: torch.Tensor) -> torch.Tensor:
        return logistic(u)


@dataclass(frozen=True, kw_only=True)
class Rooted(AdversarialLoss):
    """The rooted logistic objective with root ``k``, linear above the logit where its slope reaches
    ``max_grad`` (None: the raw formula), minus ``k`` with ``subtract_k``."""

    name: ClassVar[str] = "rooted"
    k: float = DEFAULT_ROOT
    max_grad: float | None = DEFAULT_MAX_GRAD
    subtract_k: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        _validate_root(self.k)
        if self.max_grad is not None and not (_finite_positive(self.max_grad) and self.max_grad > 1):
            raise SettingError(f"the rooted loss's max_grad must be > 1 or null, got {self.max_grad!r}")
        if not isinstance(self.subtract_k, bool):
            raise SettingError(f"the rooted loss's subtract_k must be true or false, got {self.subtract_k!r}")

    def phi(self, u: torch.Tensor) -> torch.Tensor:
        return rooted(u, k=self.k, subtract_k=self.subtract_k, max_grad=self.max_grad)

    def capped(self, u: torch.Tensor) -> torch.Tensor:
        return capped_fraction(u, self.k, self.max_grad)

    def lower_bound(self) -> float:
        return 0.0 if self.subtract_k else float(self.k) * float(self.scale)

    def _label(self) -> str:
        return f"rooted:{self.k:g}"


@dataclass(frozen=True, kw_only=True)
class RootedStepLogistic(AdversarialLoss):
    """The control ``logistic*rooted:K``: logistic, each term's batch scaled by the detached factor that gives
    it the same total per-sample gradient as ``rooted:K`` on that batch (module docstring)."""

    name: ClassVar[str] = "logistic*rooted"
    k: float = DEFAULT_ROOT
    max_grad: float | None = DEFAULT_MAX_GRAD

    def __post_init__(self) -> None:
        super().__post_init__()
        _validate_root(self.k)

    def phi(self, u: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            x = u.detach()
            x = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
            total = torch.sigmoid(x).sum().clamp(min=torch.finfo(x.dtype).tiny)
            factor = rooted_slope(x, self.k, self.max_grad).sum() / total
        return logistic(u) * factor

    def _label(self) -> str:
        return f"logistic*rooted:{self.k:g}"


LOSSES: dict[str, type[AdversarialLoss]] = {cls.name: cls for cls in (Logistic, Rooted, RootedStepLogistic)}
DEFAULT_LOSS = "logistic"


def make_loss(spec: str | Mapping[str, Any] | AdversarialLoss | None = None) -> AdversarialLoss:
    """The loss of a setting: an instance, a mapping (``{name: rooted, k: 20}``, as in YAML and checkpoints)
    or the short form ``logistic``, ``rooted``, ``rooted:K``, each optionally ``*C`` (a constant scale,
    ``logistic*2``), or ``logistic*rooted:K`` (the step-size control). None: the default, logistic."""
    if isinstance(spec, AdversarialLoss):
        return spec
    if spec is None:
        spec = DEFAULT_LOSS
    if isinstance(spec, str):
        spec = _parse_short(spec)
    if not isinstance(spec, Mapping):
        raise SettingError(f"a loss is a name (rooted:4) or a mapping ({{name: rooted, k: 4}}), got {spec!r}")
    settings = dict(spec)
    cls = LOSSES.get(settings.pop("name", None))
    if cls is None:
        raise SettingError(f"unknown loss {spec.get('name')!r}; expected one of {', '.join(LOSSES)}")
    known = {f.name for f in fields(cls)}
    if set(settings) - known:
        unknown = ", ".join(sorted(map(str, set(settings) - known)))
        raise SettingError(f"the {cls.name} loss has no setting {unknown}; it has {', '.join(sorted(known))}")
    try:
        return cls(**settings)
    except TypeError as err:
        raise SettingError(f"loss {spec!r}: {err}") from None


def _number(text: str, spec: str, example: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise SettingError(f"cannot read {text!r} in loss {spec!r}; use e.g. {example}") from None


def _parse_short(spec: str) -> dict[str, Any]:
    base, star, factor = (part.strip() for part in spec.partition("*"))
    name, colon, root = base.partition(":")
    out: dict[str, Any] = {"name": name}
    if colon:
        if name != "rooted":
            raise SettingError(f"only the rooted loss takes a root, got {spec!r}; use e.g. rooted:2")
        out["k"] = _number(root, spec, "rooted:2")
    if star:
        if factor.partition(":")[0] == "rooted":
            if name != "logistic" or colon:
                raise SettingError(f"only logistic can be matched to rooted's gradient, got {spec!r}")
            out["name"] = RootedStepLogistic.name
            matched = factor.partition(":")[2]
            if matched:
                out["k"] = _number(matched, spec, "logistic*rooted:2")
        else:
            out["scale"] = _number(factor, spec, "logistic*2 or logistic*rooted:2")
    return out


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
