"""Upsample, FIR-filter, downsample: the resampling primitive of StyleGAN2.

``upfirdn2d`` inserts ``up - 1`` zeros after every sample, pads (negative padding crops), convolves
with the FIR filter ``f`` (a true convolution; ``flip_filter=True`` makes it a correlation) scaled by
``gain``, and keeps every ``down``-th sample. The pure-PyTorch reference (``impl='ref'``) is the
specification; it and the argument helpers live in :mod:`stylegan_ops._upfirdn2d_ref`.
"""

from __future__ import annotations

import functools

import torch

from stylegan_ops._impl import resolve_impl
from stylegan_ops._upfirdn2d_cuda import upfirdn2d_cuda
from stylegan_ops._upfirdn2d_ref import (
    IntPair,
    Padding,
    _pair,
    check_call,
    filter_size,
    output_size,
    parse_padding,
    reference,
    setup_filter,
)

__all__ = [
    "centered_padding",
    "downsample2d",
    "filter2d",
    "filter_size",
    "output_size",
    "parse_padding",
    "setup_filter",
    "upfirdn2d",
    "upfirdn2d_ref",
    "upsample2d",
]

#: A benchmark hook, not a setting: the implementation of plain filtering (up = down = 1, ``impl=None``) over
#: ``STYLEGAN_OPS_IMPL``. ``'ref'`` (bench/train.py's ``ref_filter`` lever) is a cuDNN depthwise convolution
#: on a GPU: 2x faster than our kernel forward and backward on an H200, but ~10x slower in the double
#: backward (R1, path length), so the training step ran at 0.31x (README, Performance).
_FILTER_IMPL: str | None = None


def upfirdn2d(
    x: torch.Tensor,
    f: torch.Tensor | None,
    up: IntPair = 1,
    down: IntPair = 1,
    padding: Padding = 0,
    flip_filter: bool = False,
    gain: float = 1,
    impl: str | None = None,
) -> torch.Tensor:
    """Upsample by ``up`` (zero insertion), pad, FIR-filter with ``f``, downsample by ``down``.

    Args:
        x: NCHW input.
        f: float32 filter from :func:`setup_filter`: 2-D ``[fh, fw]`` or separable 1-D ``[fw]``
            (applied along both axes); None for identity.
        up, down: integer factors, one for both axes or ``(x, y)``.
        padding: ``p``, ``(px, py)`` or ``(x0, x1, y0, y1)`` applied after upsampling; negative values crop.
        flip_filter: False = true convolution (StyleGAN's convention), True = correlation.
        gain: overall filter gain.
        impl: ``'cuda'``, ``'ref'``, ``'auto'`` or None (environment variable ``STYLEGAN_OPS_IMPL``).

    Returns:
        ``[N, C, H', W']`` with ``W' = ceil((W*up + x0 + x1 - fw + 1) / down)`` (same for H).
    """
    if impl is None and _pair(up, "up") == (1, 1) and _pair(down, "down") == (1, 1):
        impl = _FILTER_IMPL
    run = upfirdn2d_cuda if resolve_impl("upfirdn2d", impl, x) == "cuda" else reference
    if f is None:
        f = torch.ones([1, 1], dtype=torch.float32, device=x.device)
    up, down, padding = check_call(x, f, up, down, padding)
    return run(x, f, up=up, down=down, padding=padding, flip_filter=flip_filter, gain=gain)


#: The reference implementation (``impl='ref'``): plain PyTorch ops, differentiable to any order.
upfirdn2d_ref = functools.partial(upfirdn2d, impl="ref")


def centered_padding(
    f: torch.Tensor | None, padding: Padding, factor: tuple[int, int], up: bool
) -> list[int]:
    """``padding`` plus the filter padding that keeps a resampled grid centred, per axis with ``taps``
    filter taps and resampling ``factor``: upsampling adds ``(taps + factor - 1) // 2`` before and
    ``(taps - factor) // 2`` after; downsampling ``(taps - factor + 1) // 2`` and ``(taps - factor) // 2``."""

    def before(taps: int, k: int) -> int:
        return (taps + k - 1) // 2 if up else (taps - k + 1) // 2

    (fw, fh), (kx, ky) = filter_size(f), factor
    px0, px1, py0, py1 = parse_padding(padding)
    return [px0 + before(fw, kx), px1 + (fw - kx) // 2, py0 + before(fh, ky), py1 + (fh - ky) // 2]


def filter2d(
    x: torch.Tensor,
    f: torch.Tensor,
    padding: Padding = 0,
    flip_filter: bool = False,
    gain: float = 1,
    impl: str | None = None,
) -> torch.Tensor:
    """Filter with ``f`` keeping the size (extra ``padding`` grows it)."""
    pad = centered_padding(f, padding, (1, 1), up=True)
    return upfirdn2d(x, f, padding=pad, flip_filter=flip_filter, gain=gain, impl=impl)


def upsample2d(
    x: torch.Tensor,
    f: torch.Tensor,
    up: IntPair = 2,
    padding: Padding = 0,
    flip_filter: bool = False,
    gain: float = 1,
    impl: str | None = None,
) -> torch.Tensor:
    """Upsample by ``up`` with the interpolation filter ``f``: ``[N,C,H,W] -> [N,C,H*up,W*up]``."""
    upx, upy = _pair(up, "up")
    pad = centered_padding(f, padding, (upx, upy), up=True)
    return upfirdn2d(
        x, f, up=(upx, upy), padding=pad, flip_filter=flip_filter, gain=gain * upx * upy, impl=impl
    )


def downsample2d(
    x: torch.Tensor,
    f: torch.Tensor,
    down: IntPair = 2,
    padding: Padding = 0,
    flip_filter: bool = False,
    gain: float = 1,
    impl: str | None = None,
) -> torch.Tensor:
    """Low-pass with ``f`` and downsample by ``down``: ``[N,C,H,W] -> [N,C,H/down,W/down]``."""
    downx, downy = _pair(down, "down")
    pad = centered_padding(f, padding, (downx, downy), up=False)
    return upfirdn2d(x, f, down=(downx, downy), padding=pad, flip_filter=flip_filter, gain=gain, impl=impl)
