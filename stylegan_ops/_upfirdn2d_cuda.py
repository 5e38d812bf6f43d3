"""Autograd wrapper of the upfirdn2d CUDA kernel, differentiable to any order: upfirdn2d is linear in ``x``,
and its adjoint is again an upfirdn2d (:func:`adjoint_params`), so the backward pass calls the kernel too.

Along one axis (length ``L``, up ``U``, down ``D``, padding ``P0, P1``, ``K`` taps, output length ``O``) the
forward pass is ``Down_D . Corr_w . Pad . ZeroInsert_U``. In reverse: ``Down_D^T`` zero-inserts ``D - 1``
and pads/crops to the correlation's length ``L*U + P0 + P1 - K + 1``; ``Corr_w^T`` is a full correlation
with the reversed weights (``flip_filter`` toggled); ``Pad^T`` crops (folded into the padding);
``ZeroInsert_U^T`` keeps every ``U``-th sample. So ``up' = D``, ``down' = U``, ``pad0' = K - 1 - P0``,
``pad1' = L*U + P0 - O*D``, the same gain, and the output length is exactly ``L``.

``plugin``: the compiled extension (:func:`stylegan_ops.build.get_plugin`) or, in tests, the CPU emulation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from stylegan_ops._upfirdn2d_ref import check_call, output_size, reference

#: A benchmark hook, not a setting: the kernel's ``tiled`` argument. -1 runs the shared-memory tiles
#: (``upfirdn2d_tiled_kernel``) wherever they apply (filters up to 64 taps, factors up to 8), else the gather;
#: 0 the one-thread-per-output gather everywhere (bench/ops.py's gather column, bench/train.py's
#: ``gather_kernel`` lever).
_TILED = -1


def adjoint_axis(
    in_size: int, up: int, down: int, pad0: int, pad1: int, taps: int
) -> tuple[int, int, int, int]:
    """Adjoint parameters of one axis: ``(up', down', pad0', pad1')`` (see the module docstring)."""
    out = output_size(in_size, up, down, pad0, pad1, taps)
    return down, up, taps - 1 - pad0, in_size * up + pad0 - out * down


def adjoint_params(
    *,
    in_h: int,
    in_w: int,
    fw: int,
    fh: int,
    up: tuple[int, int],
    down: tuple[int, int],
    padding: tuple[int, int, int, int],
    flip_filter: bool,
    gain: float,
) -> dict[str, Any]:
    """The keyword arguments (``up``, ``down``, ``padding``, ``flip_filter``, ``gain``) of the upfirdn2d
    whose output on ``dy`` is ``dL/dx`` for ``y = upfirdn2d(x, f, up, down, padding, flip_filter, gain)``,
    ``x`` of spatial size ``[in_h, in_w]``, an ``fh x fw`` filter (``fw = fh = len(f)`` if separable)."""
    upx, downx, px0, px1 = adjoint_axis(in_w, up[0], down[0], padding[0], padding[1], fw)
    upy, downy, py0, py1 = adjoint_axis(in_h, up[1], down[1], padding[2], padding[3], fh)
    adjoint = {"up": (upx, upy), "down": (downx, downy), "padding": (px0, px1, py0, py1)}
    return {**adjoint, "flip_filter": not flip_filter, "gain": gain}


@dataclass(frozen=True)
class _Config:
    plugin: Any
    up: tuple[int, int]
    down: tuple[int, int]
    padding: tuple[int, int, int, int]
    flip_filter: bool
    gain: float
    tiled: int


def _run(x: torch.Tensor, f: torch.Tensor, cfg: _Config) -> torch.Tensor:
    """The kernel's forward pass, ``x [N, C, H, W]``: one pass for a 2-D filter, x then y for a 1-D one."""
    plugin = cfg.plugin
    x = x.contiguous()
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    f = f.to(device=x.device, dtype=acc)
    upx, upy = cfg.up
    downx, downy = cfg.down
    px0, px1, py0, py1 = cfg.padding
    flip, tiled = cfg.flip_filter, cfg.tiled
    if f.ndim == 2:
        return plugin.upfirdn2d(
            x, f.contiguous(), upx, upy, downx, downy, px0, px1, py0, py1, flip, cfg.gain, tiled
        )
    fx, fy = f.reshape(1, -1).contiguous(), f.reshape(-1, 1).contiguous()
    y = plugin.upfirdn2d(x, fx, upx, 1, downx, 1, px0, px1, 0, 0, flip, cfg.gain, tiled)
    return plugin.upfirdn2d(y, fy, 1, upy, 1, downy, 0, 0, py0, py1, flip, 1.0, tiled)


class _UpFirDn2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, f: torch.Tensor, cfg: _Config) -> torch.Tensor:
        ctx.save_for_backward(f)
        ctx.cfg = cfg
        ctx.in_hw = (x.shape[2], x.shape[3])
        return _run(x, f, cfg)

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        (f,) = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None
        c, (in_h, in_w) = ctx.cfg, ctx.in_hw
        op = dict(up=c.up, down=c.down, padding=c.padding, flip_filter=c.flip_filter, gain=c.gain)
        adj = adjoint_params(in_h=in_h, in_w=in_w, fw=f.shape[-1], fh=f.shape[0], **op)
        return upfirdn2d_cuda(dy, f, plugin=c.plugin, **adj), None, None


def upfirdn2d_cuda(
    x: torch.Tensor,
    f: torch.Tensor,
    *,
    up: tuple[int, int],
    down: tuple[int, int],
    padding: tuple[int, int, int, int],
    flip_filter: bool,
    gain: float,
    plugin: Any = None,
) -> torch.Tensor:
    """Upsample, FIR-filter, downsample with the compiled kernel (the arguments of :func:`upfirdn2d`, the
    factors and padding as tuples). x: ``[N, C, H, W]`` in float32, float64, float16 or bfloat16 (half types
    accumulate in float32); f: ``[fh, fw]``, or ``[k]`` applied along x then y. Differentiable with respect to
    ``x`` to any order; a filter that requires grad takes the reference path (the kernel has no filter
    gradient). ``plugin``: the kernel module, by default the CUDA extension."""
    up, down, padding = check_call(x, f, up, down, padding)
    if f.requires_grad and torch.is_grad_enabled():
        return reference(x, f, up, down, padding, flip_filter, gain)
    if plugin is None:
        from stylegan_ops.build import get_plugin  # lazily: the build machinery is only needed on a GPU

        plugin = get_plugin("upfirdn2d", required=True)
    cfg = _Config(plugin, up, down, padding, bool(flip_filter), float(gain), _TILED)
    return _UpFirDn2d.apply(x, f, cfg)
