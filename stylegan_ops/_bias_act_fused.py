"""``bias_act`` for linear, relu and lrelu as one autograd node of PyTorch ops (README, "The custom ops").

The reference's arithmetic runs in place on one fresh tensor and only the output ``y`` is kept: with ``gain >
0`` and ``alpha >= 0``, ``y > 0`` exactly where ``x + b > 0``, so ``dx = [|y| < clamp] * act'(y) * (gain *
dy)`` follows from ``y`` (and ``d(dx)/dy = 0`` almost everywhere): differentiable to any order. Unlike the
reference (like NVIDIA's plugin), no gradient passes where the unclamped output is exactly ``+-clamp``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

#: Activations this path covers (their names in :data:`stylegan_ops.bias_act.ACTIVATIONS`).
FUSED_ACTIVATIONS = ("linear", "relu", "lrelu")


def fusable(
    act: str, x: torch.Tensor, b: torch.Tensor | None, alpha: float, gain: float, clamp: float
) -> bool:
    """Whether :func:`bias_act_fused` applies: a covered activation with a bias of ``x``'s dtype, a
    positive gain, a non-negative lrelu slope and no zero clamp (``y`` must have the sign of ``x + b``)."""
    return (
        act in FUSED_ACTIVATIONS
        and b is not None
        and b.dtype == x.dtype
        and x.dtype.is_floating_point
        and gain > 0
        and alpha >= 0
        and clamp != 0
    )


class _Config:
    """The resolved arguments of one call (plain Python numbers, fixed for its backward passes)."""

    __slots__ = ("act", "alpha", "clamp", "dim", "gain")

    def __init__(self, act: str, dim: int, alpha: float, gain: float, clamp: float) -> None:
        self.act, self.dim, self.alpha, self.gain, self.clamp = act, dim, alpha, gain, clamp


def _masked_slope(dy: torch.Tensor, y: torch.Tensor, cfg: _Config, transposed: bool) -> torch.Tensor:
    """``[|y| < clamp] * act'(y) * gain * dy`` in the reference's order of rounding: gain, slope, mask for
    the backward pass; the transpose (mask, slope, gain) for the double backward; and so on alternately."""
    steps = (_times_gain, _times_slope, _times_mask)
    for step in reversed(steps) if transposed else steps:
        dy = step(dy, y, cfg)
    return dy


def _times_gain(d: torch.Tensor, y: torch.Tensor, cfg: _Config) -> torch.Tensor:
    return d * cfg.gain if cfg.gain != 1 else d


def _times_slope(d: torch.Tensor, y: torch.Tensor, cfg: _Config) -> torch.Tensor:
    if cfg.act == "lrelu":
        return torch.ops.aten.leaky_relu_backward(d, y, cfg.alpha, True)
    if cfg.act == "relu":
        return torch.ops.aten.threshold_backward(d, y, 0)
    return d


def _times_mask(d: torch.Tensor, y: torch.Tensor, cfg: _Config) -> torch.Tensor:
    return torch.ops.aten.hardtanh_backward(d, y, -cfg.clamp, cfg.clamp) if cfg.clamp >= 0 else d


class _BiasActGrad(torch.autograd.Function):
    """``dx`` from ``dy`` and the saved output ``y``; linear in ``dy``, constant in ``y`` (a.e.)."""

    @staticmethod
    def forward(ctx: Any, dy: torch.Tensor, y: torch.Tensor, cfg: _Config, transposed: bool) -> torch.Tensor:
        ctx.save_for_backward(y)
        ctx.cfg, ctx.transposed = cfg, transposed
        return _masked_slope(dy, y, cfg, transposed)

    @staticmethod
    def backward(ctx: Any, ddx: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None]:
        (y,) = ctx.saved_tensors
        grad = _BiasActGrad.apply(ddx, y, ctx.cfg, not ctx.transposed) if ctx.needs_input_grad[0] else None
        return grad, None, None, None


def _inside(y: torch.Tensor, clamp: float) -> bool:
    """Whether every element of a CPU tensor lies strictly inside ``(-clamp, clamp)`` (False with a NaN): then
    the clamp changes nothing and its mask passes every gradient, so both can be skipped. (On a GPU the read
    back to the host would wait for the device: there the clamp is kept.)"""
    if y.numel() == 0:
        return True
    lo, hi = torch.aminmax(y)
    return bool(-clamp < lo.item() and hi.item() < clamp)


class _BiasAct(torch.autograd.Function):
    """``y = clamp(act(x + b) * gain)`` computed in place on the sum; only ``y`` is saved."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, b: torch.Tensor, cfg: _Config) -> torch.Tensor:
        shape = [1] * x.ndim
        shape[cfg.dim] = -1
        y = x + b.reshape(shape)
        if cfg.act == "lrelu":
            F.leaky_relu(y, cfg.alpha, inplace=True)
        elif cfg.act == "relu":
            y.relu_()
        if cfg.gain != 1:
            y.mul_(cfg.gain)
        if cfg.clamp >= 0:
            # one read instead of two read-writes; not under torch.compile (a host read breaks the graph)
            if y.device.type == "cpu" and not torch.compiler.is_compiling() and _inside(y, cfg.clamp):
                cfg = _Config(cfg.act, cfg.dim, cfg.alpha, cfg.gain, -1.0)
            else:
                y.clamp_(-cfg.clamp, cfg.clamp)
        ctx.save_for_backward(y)
        ctx.cfg = cfg
        return y

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        return grads_from_output(ctx, dy, lambda dy, y, cfg: _BiasActGrad.apply(dy, y, cfg, False))


def grads_from_output(
    ctx: Any, dy: torch.Tensor, grad: Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]
) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
    """The backward pass of a bias_act node that kept only its output ``y``: ``dx = grad(dy, y, cfg)`` and
    ``db``, its sum over every axis but ``cfg.dim`` (each when its input needs it; ``None`` for cfg)."""
    (y,) = ctx.saved_tensors
    cfg = ctx.cfg
    if not (ctx.needs_input_grad[0] or ctx.needs_input_grad[1]):
        return None, None, None
    dx = grad(dy, y, cfg)
    db = dx.sum(dim=[d for d in range(dx.ndim) if d != cfg.dim]) if ctx.needs_input_grad[1] else None
    return (dx if ctx.needs_input_grad[0] else None), db, None


def bias_act_fused(
    x: torch.Tensor, b: torch.Tensor, *, dim: int, act: str, alpha: float, gain: float, clamp: float
) -> torch.Tensor:
    """``clamp(act(x + b) * gain, -clamp, clamp)`` as one autograd node, for arguments resolved and checked
    with :func:`fusable` (``clamp < 0``: none): a new tensor, the reference's output bit for bit."""
    return _BiasAct.apply(x, b, _Config(act, int(dim), float(alpha), float(gain), float(clamp)))
