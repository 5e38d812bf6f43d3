"""Autograd wrapper of the upfirdn2d CUDA kernel, differentiable to any order.

upfirdn2d is linear in ``x``, so its gradient is the adjoint operator applied to ``dy``, and the
adjoint of an upfirdn2d is again an upfirdn2d (:func:`adjoint_params`): the backward pass calls
:func:`upfirdn2d_cuda` itself, and gradients of any order follow.

Derivation, along one axis with input length ``L``, up ``U``, down ``D``, padding ``P0, P1`` and ``K``
taps, output length ``O``. The forward pass is ``Down_D . Corr_w . Pad_{P0,P1} . ZeroInsert_U``
(``Corr_w`` a valid correlation with the effective weights ``w``). Taking adjoints in reverse order:

* ``Down_D^T`` inserts ``D - 1`` zeros after each gradient sample (length ``O*D``) and pads/crops the
  end to the correlation's output length ``Lc = L*U + P0 + P1 - K + 1``;
* ``Corr_w^T`` is a full correlation with the reversed weights: pad ``K - 1`` on both sides and
  correlate with ``w`` flipped (so ``flip_filter`` toggles);
* ``Pad^T`` crops ``P0`` at the start and ``P1`` at the end (a negative value pads with zeros); cropping
  a valid correlation's output equals cropping its input, so this folds into the padding;
* ``ZeroInsert_U^T`` keeps every ``U``-th sample: a downsampling by ``U``.

Together: ``up' = D``, ``down' = U``, ``pad0' = K - 1 - P0`` and
``pad1' = (Lc - O*D) + (K - 1) - P1 = L*U + P0 - O*D``, same gain, flipped filter orientation; the
output length comes out as exactly ``L``.

The kernel module (``plugin``) is normally the compiled CUDA extension from
:func:`stylegan_ops.build.get_plugin`; the tests pass the CPU emulation instead, which has the same
``upfirdn2d(x, f, upx, upy, downx, downy, padx0, padx1, pady0, pady1, flip, gain, tiled)`` function
(``tiled``: -1 the shared-memory tiles where they apply, 0 the gather everywhere).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from stylegan_ops._upfirdn2d_ref import check_call, output_size, upfirdn2d_ref

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
    """Parameters of the upfirdn2d that computes the gradient with respect to ``x``.

    For ``y = upfirdn2d(x, f, up, down, padding, flip_filter, gain)`` with ``x`` of spatial size
    ``[in_h, in_w]`` and an ``fh x fw`` filter (``fw = fh = len(f)`` for a separable 1-D one),
    ``upfirdn2d(dy, f, **adjoint_params(...))`` is ``dL/dx`` (shape ``[N, C, in_h, in_w]``).

    Args:
        up, down: ``(x, y)`` factors; padding: ``(x0, x1, y0, y1)``.

    Returns:
        A dict with ``up``, ``down`` (``(x, y)``), ``padding`` (``(x0, x1, y0, y1)``), ``flip_filter``
        and ``gain``, the keyword arguments of ``upfirdn2d`` / ``upfirdn2d_ref``.
    """
    upx, downx, px0, px1 = adjoint_axis(in_w, up[0], down[0], padding[0], padding[1], fw)
    upy, downy, py0, py1 = adjoint_axis(in_h, up[1], down[1], padding[2], padding[3], fh)
    return {
        "up": (upx, upy),
        "down": (downx, downy),
        "padding": (px0, px1, py0, py1),
        "flip_filter": not flip_filter,
        "gain": gain,
    }


@dataclass(frozen=True)
class _Config:
    plugin: Any
    up: tuple[int, int]
    down: tuple[int, int]
    padding: tuple[int, int, int, int]
    flip_filter: bool
    gain: float
    tiled: int = -1


def _run(plugin: Any, x: torch.Tensor, f: torch.Tensor, cfg: _Config) -> torch.Tensor:
    """Forward computation with the kernel: one pass for a 2-D filter, x then y for a 1-D one.

    x: ``[N, C, H, W]``; f: float32/float64 ``[fh, fw]`` or ``[k]``, on x's device.
    """
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
        return _run(cfg.plugin, x, f, cfg)

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        (f,) = ctx.saved_tensors
        cfg: _Config = ctx.cfg
        if not ctx.needs_input_grad[0]:
            return None, None, None
        fw = f.shape[-1]
        fh = f.shape[0]
        adj = adjoint_params(
            in_h=ctx.in_hw[0],
            in_w=ctx.in_hw[1],
            fw=fw,
            fh=fh,
            up=cfg.up,
            down=cfg.down,
            padding=cfg.padding,
            flip_filter=cfg.flip_filter,
            gain=cfg.gain,
        )
        dx = upfirdn2d_cuda(dy, f, plugin=cfg.plugin, **adj)
        return dx, None, None


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
    """Upsample, FIR-filter, downsample with the compiled kernel (arguments already parsed).

    Args:
        x: ``[N, C, H, W]``; float32, float64, float16 or bfloat16 (half types accumulate in float32).
        f: ``[fh, fw]`` filter, or a separable ``[k]`` one applied along x then y.
        up, down: ``(x, y)`` factors >= 1; padding: ``(x0, x1, y0, y1)``, negative crops.
        flip_filter: False = true convolution, True = correlation. gain: overall filter gain.
        plugin: kernel module; default: the CUDA extension from :func:`stylegan_ops.build.get_plugin`.

    Returns:
        ``[N, C, H', W']`` like :func:`stylegan_ops.upfirdn2d.upfirdn2d_ref`, differentiable with respect
        to ``x`` to any order. A filter that requires grad takes the reference path (the kernel has no
        filter gradient).
    """
    up, down, padding = check_call(x, f, up, down, padding)
    if f.requires_grad and torch.is_grad_enabled():
        return upfirdn2d_ref(x, f, up=up, down=down, padding=padding, flip_filter=flip_filter, gain=gain)
    if plugin is None:
        from stylegan_ops.build import get_plugin

        plugin = get_plugin("upfirdn2d", required=True)
    cfg = _Config(
        plugin=plugin,
        up=up,
        down=down,
        padding=padding,
        flip_filter=bool(flip_filter),
        gain=float(gain),
        tiled=_TILED,
    )
    return _UpFirDn2d.apply(x, f, cfg)
