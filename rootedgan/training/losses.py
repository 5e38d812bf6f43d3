"""Adversarial losses, the G and D objectives built from them, and StyleGAN2's regularizers.

A loss is a primitive ``phi`` replacing ``softplus`` in StyleGAN2's non-saturating logistic loss (G:
``phi(-D(G(z)))``; D: ``phi(D(G(z))) + phi(-D(x))``), one class per loss in :data:`LOSSES`, built by
:func:`make_loss` (short forms and scaled controls: README "Comparing losses").

Rooted (arXiv 2310.03890): ``k exp(softplus(u) / k)``, ``k > 1``. Its slope grows like ``e^(u/k)`` and
overflows even float64 for large logits, so here it continues along its tangent above the logit where the
slope reaches ``max_grad`` (still convex and increasing; README "The rooted loss, and why it needs care").
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
            f"the rooted loss needs a root k > 1, got k={k!r} (k = 1 overflows, k <= 0 inverts the loss); "
            f"typical values: 2 (the paper's authors) to {DEFAULT_ROOT:g} (the default)"
        )
    return float(k)


def _wide(u: torch.Tensor) -> torch.Tensor:
    return u.float() if u.dtype in (torch.float16, torch.bfloat16) else u


@functools.lru_cache(maxsize=64)
def rooted_cap(k: float, max_grad: float | None) -> float:
    """The logit where the slope of rooted reaches ``max_grad`` (bisection in float64; inf for None)."""
    if max_grad is None:
        return math.inf
    if max_grad <= 1:
        raise ValueError(f"max_grad must be > 1, got {max_grad}")
    lo, hi = 0.0, k * math.log(max_grad) + 50
    for _ in range(200):  # the slope exp(softplus(u) / k) sigmoid(u) increases with u
        mid = 0.5 * (lo + hi)
        softplus = max(mid, 0.0) + math.log1p(math.exp(-abs(mid)))
        lo, hi = (mid, hi) if math.exp(softplus / k) / (1 + math.exp(-mid)) < max_grad else (lo, mid)
    return lo


def logistic(u: torch.Tensor) -> torch.Tensor:
    """``softplus(u) = log(1 + e^u)``, computed stably; float32 for low-precision inputs."""
    return F.softplus(_wide(u), beta=1, threshold=20)


def _below_cap(u: torch.Tensor, k: float, max_grad: float | None) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``(x, min(x, cap), cap)``: ``u`` in float32 or wider, and clamped at :func:`rooted_cap`."""
    x = _wide(u)
    cap = rooted_cap(k, max_grad)
    return x, (x.clamp(max=cap) if math.isfinite(cap) else x), cap


def rooted(
    u: torch.Tensor,
    k: float = DEFAULT_ROOT,
    subtract_k: bool = False,
    max_grad: float | None = DEFAULT_MAX_GRAD,
) -> torch.Tensor:
    """Elementwise rooted loss ``k exp(softplus(u) / k)`` (minus ``k`` with ``subtract_k``), continued along
    its tangent above ``rooted_cap(k, max_grad)`` (``max_grad=None``: the raw formula, which overflows).
    bf16/fp16 inputs are computed in float32 and the result is float32."""
    k = _validate_root(k)
    x, inside, cap = _below_cap(u, k, max_grad)
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
    x, inside, cap = _below_cap(u, k, max_grad)
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
    reduced). ``scale`` multiplies every term by a constant (a control)."""

    name: ClassVar[str]
    scale: float = 1.0

    def __post_init__(self) -> None:
        if not _finite_positive(self.scale):
            raise SettingError(f"the loss scale must be a finite number > 0, got {self.scale!r}")

    def phi(self, u: torch.Tensor) -> torch.Tensor:
        """The elementwise primitive: ``softplus`` unless a loss overrides it."""
        return logistic(u)

    def term(self, u: torch.Tensor) -> torch.Tensor:
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
        """The short form (``rooted:4``, ``logistic*2``): run names, logs, reports."""
        root = f":{self.k:g}" if hasattr(self, "k") else ""
        return self.name + root + (f"*{self.scale:g}" if self.scale != 1.0 else "")

    def spec(self) -> dict[str, Any]:
        """The settings as a plain dict, ``make_loss(spec())`` rebuilds the loss (checkpoints, YAML)."""
        return {"name": self.name, **asdict(self)}


@dataclass(frozen=True, kw_only=True)
class Logistic(AdversarialLoss):
    """StyleGAN2's non-saturating logistic loss: ``phi = softplus``."""

    name: ClassVar[str] = "logistic"


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


@dataclass(frozen=True, kw_only=True)
class RootedStepLogistic(AdversarialLoss):
    """The control ``logistic*rooted:K``: logistic times ``sum_i rooted_K'(u_i) / sum_i sigmoid(u_i)`` (per
    batch, detached), i.e. rooted's total gradient (step sizes) with logistic's per-sample weights."""

    name: ClassVar[str] = "logistic*rooted"
    k: float = DEFAULT_ROOT
    max_grad: float | None = DEFAULT_MAX_GRAD

    def __post_init__(self) -> None:
        super().__post_init__()
        _validate_root(self.k)

    def phi(self, u: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            x = _wide(u.detach())
            total = torch.sigmoid(x).sum().clamp(min=torch.finfo(x.dtype).tiny)
            factor = rooted_slope(x, self.k, self.max_grad).sum() / total
        return logistic(u) * factor


LOSSES: dict[str, type[AdversarialLoss]] = {cls.name: cls for cls in (Logistic, Rooted, RootedStepLogistic)}
DEFAULT_LOSS = "rooted"  # the product's loss, at DEFAULT_ROOT; logistic is one option away


def make_loss(spec: str | Mapping[str, Any] | AdversarialLoss | None = None) -> AdversarialLoss:
    """The loss of a setting: an instance, a mapping (``{name: rooted, k: 20}``: YAML, checkpoints), None
    (``DEFAULT_LOSS``: rooted, k = 20) or a short form: ``logistic``, ``rooted``, ``rooted:K``, each with an
    optional constant scale ``*C``, or ``logistic*rooted:K`` (the step-size control)."""
    if isinstance(spec, AdversarialLoss):
        return spec
    if spec is None or isinstance(spec, str):
        spec = _parse_short(DEFAULT_LOSS if spec is None else spec)
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
    return cls(**settings)


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


def r1_penalty(real_img: torch.Tensor, real_logits: torch.Tensor) -> torch.Tensor:
    """Per-sample ``||grad_x D(x)||^2`` ``[N]`` (``real_img`` must require grad), with its graph."""
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
    """``(penalty [N], new pl_mean)``: ``(|J^T y| - a)^2``, ``a = lerp(pl_mean, mean(lengths), decay)`` not
    detached (as NVIDIA's); ``batch_mean`` (e.g. all ranks') replaces only the value of ``mean(lengths)``."""
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
