"""Autograd wrapper of the bias_act CUDA kernel, differentiable twice.

With ``z = x + b``, ``m`` the clamp mask (1 where the unclamped output lies in ``[-clamp, clamp]``) and the
kernel modes of ``csrc/bias_act_math.h``: forward ``y = clamp(gain * act(z))`` (mode 0); backward
``dx = dy * gain * act'(z) * m`` (mode 1), ``db`` its sum over the non-``dim`` axes; double backward
``d(dx)/d(dy)`` by mode 1 again and ``d(dx)/dz = dy * gain * act''(z) * m`` (mode 2). Third-order
derivatives with respect to ``x``/``b`` raise (the reference supports any order).

Linear, relu and lrelu with ``gain > 0`` and ``alpha >= 0`` (every call of the StyleGAN networks) keep the
output ``y`` instead of ``x`` for the backward pass and take ``dx`` from it (modes 4 and 3), as NVIDIA's
plugin does: the next layer keeps ``y`` anyway, while ``x`` (the convolution's output) would be held only
for this op, one activation tensor per layer. The gradient is mode 1's (the mask included: an output inside
the clamp that would be stored as ``+-clamp`` is stored one step inside instead); differentiable to any order.

``plugin``: the compiled extension (:func:`stylegan_ops.build.get_plugin`) or, in tests, the CPU emulation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from stylegan_ops._bias_act_fused import grads_from_output

if TYPE_CHECKING:  # a type only: importing bias_act here would make an import cycle
    from stylegan_ops.bias_act import ActivationSpec

MODE_FORWARD = 0
MODE_GRAD = 1
MODE_GRAD2 = 2
MODE_GRAD_Y = 3
MODE_FORWARD_KEEP = 4

_KEEP_OUTPUT = True  # benchmark hook (bench/common.py set_ops_hooks): False keeps x, as before 2026-12-07

#: Activations whose second derivative is zero almost everywhere (mode 2 would return zeros).
_PIECEWISE_LINEAR = {1, 2, 3}  # linear, relu, lrelu


@dataclass(frozen=True)
class _Config:
    plugin: Any
    dim: int
    act: int
    alpha: float
    gain: float
    clamp: float

    def run(
        self, mode: int, x: torch.Tensor, b: torch.Tensor | None, dy: torch.Tensor | None
    ) -> torch.Tensor:
        return self.plugin.bias_act(x, b, dy, mode, self.act, self.alpha, self.gain, self.clamp, self.dim)


def _sum_to_bias(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sum ``t`` over every axis but ``dim``: ``[..., C (at dim), ...] -> [C]``."""
    axes = [d for d in range(t.ndim) if d != dim]
    return t.sum(dim=axes) if axes else t


class _BiasActGrad2(torch.autograd.Function):
    """``w * gain * act''(z) * m`` (mode 2); differentiable once more only with respect to ``w``."""

    @staticmethod
    def forward(
        ctx: Any, w: torch.Tensor, x: torch.Tensor, b: torch.Tensor | None, cfg: _Config
    ) -> torch.Tensor:
        ctx.save_for_backward(x, b)
        ctx.cfg = cfg
        return cfg.run(MODE_GRAD2, x, b, w.contiguous())

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None]:
        x, b = ctx.saved_tensors
        cfg: _Config = ctx.cfg
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            raise NotImplementedError(
                "bias_act CUDA kernel: third-order derivatives with respect to x or b are not implemented; "
                "use impl='ref' (or STYLEGAN_OPS_IMPL=ref) for them"
            )
        gw = _BiasActGrad2.apply(g, x, b, cfg) if ctx.needs_input_grad[0] else None
        return gw, None, None, None


class _BiasActGrad(torch.autograd.Function):
    """``dx = dy * gain * act'(z) * m`` (mode 1), differentiable with respect to dy, x and b."""

    @staticmethod
    def forward(
        ctx: Any, dy: torch.Tensor, x: torch.Tensor, b: torch.Tensor | None, cfg: _Config
    ) -> torch.Tensor:
        dy = dy.contiguous()
        ctx.save_for_backward(dy, x, b)
        ctx.cfg = cfg
        return cfg.run(MODE_GRAD, x, b, dy)

    @staticmethod
    def backward(
        ctx: Any, ddx: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, None]:
        dy, x, b = ctx.saved_tensors
        cfg: _Config = ctx.cfg
        ddx = ddx.contiguous()
        g_dy = g_x = g_b = None
        if ctx.needs_input_grad[0]:
            g_dy = _BiasActGrad.apply(ddx, x, b, cfg)
        if (ctx.needs_input_grad[1] or ctx.needs_input_grad[2]) and cfg.act not in _PIECEWISE_LINEAR:
            g_z = _BiasActGrad2.apply(ddx * dy, x, b, cfg)
            g_x = g_z if ctx.needs_input_grad[1] else None
            g_b = _sum_to_bias(g_z, cfg.dim) if ctx.needs_input_grad[2] else None
        return g_dy, g_x, g_b, None


class _BiasAct(torch.autograd.Function):
    """``y = clamp(gain * act(x + b))`` (mode 0)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, b: torch.Tensor | None, cfg: _Config) -> torch.Tensor:
        ctx.save_for_backward(x, b)
        ctx.cfg = cfg
        return cfg.run(MODE_FORWARD, x, b, None)

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        x, b = ctx.saved_tensors
        cfg: _Config = ctx.cfg
        if not (ctx.needs_input_grad[0] or ctx.needs_input_grad[1]):
            return None, None, None
        dx = _BiasActGrad.apply(dy, x, b, cfg)
        db = _sum_to_bias(dx, cfg.dim) if ctx.needs_input_grad[1] else None
        return (dx if ctx.needs_input_grad[0] else None), db, None


class _BiasActGradFromOutput(torch.autograd.Function):
    """``dy * gain * act'(y) * [|y| < clamp]`` (mode 3): linear in ``dy``, with a derivative with respect to
    ``y`` that is zero almost everywhere, so any order of derivative is this op again."""

    @staticmethod
    def forward(ctx: Any, dy: torch.Tensor, y: torch.Tensor, cfg: _Config) -> torch.Tensor:
        ctx.save_for_backward(y)
        ctx.cfg = cfg
        return cfg.run(MODE_GRAD_Y, y, None, dy.contiguous())

    @staticmethod
    def backward(ctx: Any, ddx: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        (y,) = ctx.saved_tensors
        grad = _BiasActGradFromOutput.apply(ddx, y, ctx.cfg) if ctx.needs_input_grad[0] else None
        return grad, None, None


class _BiasActKeepOutput(torch.autograd.Function):
    """``y = clamp(gain * act(x + b))`` (mode 4), keeping only ``y`` for the backward pass."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, b: torch.Tensor | None, cfg: _Config) -> torch.Tensor:
        y = cfg.run(MODE_FORWARD_KEEP, x, b, None)
        ctx.save_for_backward(y)
        ctx.cfg = cfg
        return y

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        return grads_from_output(ctx, dy, _BiasActGradFromOutput.apply)


def bias_act_cuda(
    x: torch.Tensor,
    b: torch.Tensor | None,
    *,
    dim: int,
    spec: ActivationSpec,
    alpha: float,
    gain: float,
    clamp: float,
    plugin: Any = None,
) -> torch.Tensor:
    """``clamp(act(x + b) * gain, -clamp, clamp)`` with the compiled kernel, for arguments resolved by
    :func:`stylegan_ops.bias_act.resolve_bias_act_args` (``spec.cuda_idx`` selects the activation; ``clamp <
    0``: none). x: any shape, float32, float64, float16 or bfloat16 (half types compute in float32); b:
    ``[x.shape[dim]]`` or None, cast to ``x.dtype``. Returns a contiguous tensor like ``x``, differentiable
    twice with respect to ``x`` and ``b``. ``plugin``: the kernel module, by default the CUDA extension."""
    if b is None and spec.cuda_idx == 1 and gain == 1 and clamp < 0:
        return x  # identity, as in the reference
    if plugin is None:
        from stylegan_ops.build import get_plugin  # lazily: the build machinery is only needed on a GPU

        plugin = get_plugin("bias_act", required=True)
    b = b.to(dtype=x.dtype).contiguous() if b is not None else None
    cfg = _Config(plugin, int(dim), int(spec.cuda_idx), float(alpha), float(gain), float(clamp))
    # y's sign is z's and the stored clamp is finite; without a backward pass, mode 0's output exactly
    keep_output = cfg.gain > 0 and cfg.alpha >= 0 and cfg.clamp != 0 and cfg.clamp < torch.finfo(x.dtype).max
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or (b is not None and b.requires_grad))
    if cfg.act in _PIECEWISE_LINEAR and keep_output and needs_grad and _KEEP_OUTPUT:
        return _BiasActKeepOutput.apply(x.contiguous(), b, cfg)
    return _BiasAct.apply(x.contiguous(), b, cfg)
