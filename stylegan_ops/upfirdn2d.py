"""Upsample, FIR-filter, downsample: the resampling primitive of StyleGAN2.

``upfirdn2d`` inserts ``up - 1`` zeros after every sample, pads (negative padding crops), convolves
with the FIR filter ``f`` (a true convolution; ``flip_filter=True`` makes it a correlation) scaled by
``gain``, and keeps every ``down``-th sample. The pure-PyTorch reference here is the specification.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from stylegan_ops._impl import resolve_impl

IntPair = int | Sequence[int]
Padding = int | Sequence[int]

#: Implementation for plain filtering (up = down = 1) only, over ``STYLEGAN_OPS_IMPL``: ``ref`` sends those
#: calls to the reference (a cuDNN depthwise convolution on a GPU), which an H200 measured 2x faster than our
#: kernel at 32 px and above (README, Performance). Unset: the same choice as every other call.
FILTER_IMPL_ENV_VAR = "STYLEGAN_OPS_FILTER_IMPL"


def _pair(value: IntPair, name: str) -> tuple[int, int]:
    """``v`` -> ``(v, v)``; ``(vx, vy)`` stays. Values must be integers >= 1."""
    if isinstance(value, int):
        pair = (value, value)
    else:
        pair = tuple(int(v) for v in value)
        if len(pair) != 2:
            raise ValueError(f"{name} must be an int or a pair (x, y), got {value!r}")
    if min(pair) < 1:
        raise ValueError(f"{name} must be >= 1, got {value!r}")
    return pair  # type: ignore[return-value]


def parse_padding(padding: Padding) -> tuple[int, int, int, int]:
    """``p`` -> ``(p, p, p, p)``; ``(px, py)`` -> ``(px, px, py, py)``; ``(x0, x1, y0, y1)`` stays."""
    if isinstance(padding, int):
        return (padding, padding, padding, padding)
    pad = [int(p) for p in padding]
    if len(pad) == 2:
        return (pad[0], pad[0], pad[1], pad[1])
    if len(pad) == 4:
        return (pad[0], pad[1], pad[2], pad[3])
    raise ValueError(f"padding must be an int, (px, py) or (x0, x1, y0, y1), got {padding!r}")


def filter_size(f: torch.Tensor | None) -> tuple[int, int]:
    """``(width, height)`` of a 2-D or separable 1-D filter; ``(1, 1)`` for None."""
    if f is None:
        return 1, 1
    if f.ndim not in (1, 2):
        raise ValueError(f"filter must be 1-D (separable) or 2-D, got shape {tuple(f.shape)}")
    fw = f.shape[-1]
    fh = f.shape[0]
    return fw, fh


def setup_filter(
    f: Sequence[float] | np.ndarray | torch.Tensor | None,
    device: torch.device | str = "cpu",
    normalize: bool = True,
    flip_filter: bool = False,
    gain: float = 1,
    separable: bool | None = None,
) -> torch.Tensor:
    """Turn a filter description into the float32 tensor ``upfirdn2d`` takes.

    A 1-D kernel ``k`` becomes separable (kept 1-D) when ``separable`` is True, or when it is None and
    ``k`` has 8 or more taps; otherwise it becomes ``outer(k, k)``. ``normalize`` divides by the sum;
    ``gain`` multiplies the overall filter (each axis of a separable one gets ``sqrt(gain)``).
    """
    if f is None:
        f = [1.0]
    f = torch.as_tensor(f, dtype=torch.float32)
    if f.ndim == 0:
        f = f[None]
    if f.ndim not in (1, 2) or f.numel() == 0:
        raise ValueError(f"filter must be a non-empty 1-D or 2-D array, got shape {tuple(f.shape)}")
    if separable is None:
        separable = f.ndim == 1 and f.numel() >= 8
    if f.ndim == 1 and not separable:
        f = torch.outer(f, f)
    if f.ndim != (1 if separable else 2):
        raise ValueError("a 2-D filter cannot be made separable")
    if normalize:
        f = f / f.sum()
    if flip_filter:
        f = f.flip(list(range(f.ndim)))
    f = f * (gain ** (f.ndim / 2))
    return f.to(device=device)


def output_size(in_size: int, up: int, down: int, pad0: int, pad1: int, taps: int) -> int:
    """Length of one axis after upfirdn2d: ``ceil((in*up + pad0 + pad1 - taps + 1) / down)``."""
    return (in_size * up + pad0 + pad1 - taps + down) // down


def upfirdn2d_ref(
    x: torch.Tensor,
    f: torch.Tensor | None,
    up: IntPair = 1,
    down: IntPair = 1,
    padding: Padding = 0,
    flip_filter: bool = False,
    gain: float = 1,
) -> torch.Tensor:
    """Reference implementation with plain PyTorch ops (differentiable to any order)."""
    if x.ndim != 4:
        raise ValueError(f"x must be NCHW, got shape {tuple(x.shape)}")
    if f is None:
        f = torch.ones([1, 1], dtype=torch.float32, device=x.device)
    upx, upy = _pair(up, "up")
    downx, downy = _pair(down, "down")
    px0, px1, py0, py1 = parse_padding(padding)
    fw, fh = filter_size(f)
    n, c, h, w = x.shape
    if output_size(w, upx, downx, px0, px1, fw) < 1 or output_size(h, upy, downy, py0, py1, fh) < 1:
        raise ValueError(
            f"upfirdn2d: input {h}x{w} with up={up}, down={down}, padding={padding} and a "
            f"{fh}x{fw} filter leaves no output"
        )

    # Zero insertion: each sample is followed by up-1 zeros.
    x = x.reshape(n, c, h, 1, w, 1)
    x = F.pad(x, [0, upx - 1, 0, 0, 0, upy - 1])
    x = x.reshape(n, c, h * upy, w * upx)

    # Pad (positive part), then crop (negative part).
    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    x = x[:, :, max(-py0, 0) : x.shape[2] - max(-py1, 0), max(-px0, 0) : x.shape[3] - max(-px1, 0)]

    # FIR filter: a depthwise convolution (one group per channel, the batch kept as the batch; folding
    # the batch into the groups makes PyTorch's double backward run one small convolution per group).
    # conv2d correlates, so a true convolution flips the filter first.
    f = f.to(dtype=x.dtype, device=x.device)
    if not flip_filter:
        f = f.flip(list(range(f.ndim)))
    f = f * (gain ** (f.ndim / 2))
    if f.ndim == 2:
        x = F.conv2d(x, f[None, None].repeat(c, 1, 1, 1), groups=c)
    else:
        x = F.conv2d(x, f[None, None, None, :].repeat(c, 1, 1, 1), groups=c)
        x = F.conv2d(x, f[None, None, :, None].repeat(c, 1, 1, 1), groups=c)

    return x[:, :, ::downy, ::downx]


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
        padding: ``p``, ``(px, py)`` or ``(x0, x1, y0, y1)`` applied after upsampling;
            negative values crop.
        flip_filter: False = true convolution (StyleGAN's convention), True = correlation.
        gain: overall filter gain.
        impl: ``'cuda'``, ``'ref'``, ``'auto'`` or None (environment variable ``STYLEGAN_OPS_IMPL``; for plain
            filtering, up = down = 1, ``STYLEGAN_OPS_FILTER_IMPL`` first when set).

    Returns:
        ``[N, C, H', W']`` with ``W' = ceil((W*up + x0 + x1 - fw + 1) / down)`` (same for H).
    """
    if impl is None and _pair(up, "up") == (1, 1) and _pair(down, "down") == (1, 1):
        impl = os.environ.get(FILTER_IMPL_ENV_VAR) or None
    if resolve_impl("upfirdn2d", impl, x) == "cuda":
        from stylegan_ops._upfirdn2d_cuda import upfirdn2d_cuda

        if f is None:
            f = torch.ones([1, 1], dtype=torch.float32, device=x.device)
        return upfirdn2d_cuda(
            x,
            f,
            up=_pair(up, "up"),
            down=_pair(down, "down"),
            padding=parse_padding(padding),
            flip_filter=flip_filter,
            gain=float(gain),
        )
    return upfirdn2d_ref(x, f, up=up, down=down, padding=padding, flip_filter=flip_filter, gain=gain)


def _centered_padding(f: torch.Tensor, padding: Padding, factor: tuple[int, int], up: bool) -> list[int]:
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
    fw, fh = filter_size(f)
    px0, px1, py0, py1 = parse_padding(padding)
    pad = [px0 + fw // 2, px1 + (fw - 1) // 2, py0 + fh // 2, py1 + (fh - 1) // 2]
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
    pad = _centered_padding(f, padding, (upx, upy), up=True)
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
    pad = _centered_padding(f, padding, (downx, downy), up=False)
    return upfirdn2d(x, f, down=(downx, downy), padding=pad, flip_filter=flip_filter, gain=gain, impl=impl)
