"""The reference ``upfirdn2d`` (plain PyTorch, differentiable to any order) and its argument helpers: a leaf
that the dispatcher (:mod:`stylegan_ops.upfirdn2d`) and the CUDA wrapper both import."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

IntPair = int | Sequence[int]
Padding = int | Sequence[int]


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
    pad = [padding] * 4 if isinstance(padding, int) else [int(p) for p in padding]
    pad = [pad[0], pad[0], pad[1], pad[1]] if len(pad) == 2 else pad
    if len(pad) != 4:
        raise ValueError(f"padding must be an int, (px, py) or (x0, x1, y0, y1), got {padding!r}")
    return tuple(pad)  # type: ignore[return-value]


def filter_size(f: torch.Tensor | None) -> tuple[int, int]:
    """``(width, height)`` of a 2-D or separable 1-D filter; ``(1, 1)`` for None."""
    if f is None:
        return 1, 1
    if f.ndim not in (1, 2):
        raise ValueError(f"filter must be 1-D (separable) or 2-D, got shape {tuple(f.shape)}")
    return f.shape[-1], f.shape[0]


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


def check_call(
    x: torch.Tensor, f: torch.Tensor, up: IntPair, down: IntPair, padding: Padding
) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int, int, int]]:
    """``(up, down, padding)`` of one upfirdn2d call, parsed; a ValueError for a call that cannot run (``x``
    not NCHW, an empty or 3-D filter, a factor below 1, no output left)."""
    if x.ndim != 4:
        raise ValueError(f"x must be NCHW, got shape {tuple(x.shape)}")
    if f.numel() == 0:
        raise ValueError(f"filter must be non-empty, got shape {tuple(f.shape)}")
    up, down, pad = _pair(up, "up"), _pair(down, "down"), parse_padding(padding)
    (fw, fh), (h, w) = filter_size(f), x.shape[2:]
    if output_size(w, up[0], down[0], *pad[:2], fw) < 1 or output_size(h, up[1], down[1], *pad[2:], fh) < 1:
        raise ValueError(
            f"upfirdn2d: input {h}x{w} with up={up}, down={down}, padding={pad} and a {fh}x{fw} filter "
            "leaves no output"
        )
    return up, down, pad


def reference(
    x: torch.Tensor,
    f: torch.Tensor,
    up: tuple[int, int],
    down: tuple[int, int],
    padding: tuple[int, int, int, int],
    flip_filter: bool,
    gain: float,
) -> torch.Tensor:
    """The reference computation, for arguments checked and parsed by :func:`check_call`."""
    (upx, upy), (downx, downy), (px0, px1, py0, py1) = up, down, padding
    n, c, h, w = x.shape

    # Zero insertion: each sample is followed by up-1 zeros. Steps that would change nothing are skipped:
    # a pad by zero still copies, and a full slice still costs a zero-fill and a copy in its backward.
    if upx > 1 or upy > 1:
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, [0, upx - 1, 0, 0, 0, upy - 1])
        x = x.reshape(n, c, h * upy, w * upx)

    # Pad (positive part), then crop (negative part). conv2d pads equal amounts on both sides itself,
    # without the padded copy (and without the slice of the gradient that its backward would need).
    pad = [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)]
    conv_pad = (0, 0)
    if min(px0, px1, py0, py1) >= 0 and px0 == px1 and py0 == py1:
        conv_pad = (py0, px0)
    elif any(pad):
        x = F.pad(x, pad)
    if min(px0, px1, py0, py1) < 0:
        x = x[:, :, max(-py0, 0) : x.shape[2] - max(-py1, 0), max(-px0, 0) : x.shape[3] - max(-px1, 0)]

    # FIR filter: a depthwise convolution (one group per channel, the batch kept as the batch; folding
    # the batch into the groups makes PyTorch's double backward run one small convolution per group).
    # conv2d correlates, so a true convolution flips the filter first. Keeping every down-th sample is the
    # convolution's stride: the samples in between are never computed.
    f = f.to(dtype=x.dtype, device=x.device)
    if not flip_filter:
        f = f.flip(list(range(f.ndim)))
    f = f * (gain ** (f.ndim / 2))
    if f.ndim == 2:
        return F.conv2d(
            x, f[None, None].repeat(c, 1, 1, 1), stride=(downy, downx), padding=conv_pad, groups=c
        )
    # Separable: along x, then along y (each pass pads and strides its own axis).
    x = F.conv2d(
        x, f[None, None, None, :].repeat(c, 1, 1, 1), stride=(1, downx), padding=(0, conv_pad[1]), groups=c
    )
    return F.conv2d(
        x, f[None, None, :, None].repeat(c, 1, 1, 1), stride=(downy, 1), padding=(conv_pad[0], 0), groups=c
    )
