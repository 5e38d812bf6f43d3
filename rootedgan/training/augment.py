"""Differentiable discriminator augmentation: ADA's pipeline and p controller (Karras et al. 2020, arXiv
2006.06676, appendix B) and DiffAugment (arXiv 2006.10738); README "Augmentation (ADA, DiffAugment)".

ADA applies each transform per image with probability ``p`` (each of the two arbitrary rotations with
``1 - sqrt(1 - p)``); images that drew nothing in a stage leave it bit-identical. The geometric transforms
make one 3x3 matrix per image and one resampling at 2x with a symmetric biorthogonal (CDF 9/7) low-pass
pair whose up/down round trip is the identity, so flips and 90-degree rotations are exact; blits are exact
pixel gathers. Every op is linear in the image (gathers, convolutions, :func:`bilinear_sample`, whose
backward is again differentiable), so R1's double backward works. Per-image parameters come from torch's
CPU generator (same draws on CPU and GPU, no device sync), per-pixel noise from the images' device.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from rootedgan.errors import UserError
from rootedgan.training.settings import AugmentConfig
from stylegan_ops import setup_filter, upfirdn2d

BLIT = ("xflip", "rotate90", "xint")
GEOM = ("scale", "rotate", "aniso", "xfrac")
COLOR = ("brightness", "contrast", "lumaflip", "hue", "saturation")
FILTER, NOISE, CUTOUT = ("imgfilter",), ("noise",), ("cutout",)
TRANSFORMS = BLIT + GEOM + COLOR + FILTER + NOISE + CUTOUT
PRESETS: dict[str, tuple[str, ...]] = {
    "blit": BLIT, "geom": GEOM, "color": COLOR, "filter": FILTER, "noise": NOISE, "cutout": CUTOUT,
    "bg": BLIT + GEOM, "bgc": BLIT + GEOM + COLOR, "bgcf": BLIT + GEOM + COLOR + FILTER,
    "bgcfn": BLIT + GEOM + COLOR + FILTER + NOISE, "bgcfnc": TRANSFORMS,
}  # fmt: skip
DIFFAUGMENT_OPS = ("color", "translation", "cutout")
Reduce = Callable[[torch.Tensor], torch.Tensor]  # AdaController.update's all-reduce

# Strengths from the ADA paper, appendix B (images in [-1, 1]; sizes as fractions of the image size).
XINT_MAX = 0.125
SCALE_STD = 0.2 * math.log(2)  # std of log(s) for both scalings
XFRAC_STD = 0.125
BRIGHTNESS_STD = 0.2
CONTRAST_STD = 0.5 * math.log(2)
SATURATION_STD = math.log(2)
FILTER_STD = math.log(2)
FILTER_BANDS = (math.pi / 8, math.pi / 4, math.pi / 2)  # band edges in radians per sample
NOISE_STD = 0.1
CUTOUT_SIZE = 0.5
P_MAX = 1.0 - 2.0**-24  # largest float32 below 1: p stays in [0, 1)
WAVELET_ZEROS = 4  # CDF 9/7: 7-tap upsampling and 9-tap downsampling filters
BAND_FILTER_RADIUS = 24  # band filters have 49 taps


def biorthogonal_filters(zeros: int = WAVELET_ZEROS) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric low-pass pair ``(up, down)``, each summing to 1, whose 2x up-then-down round trip is the
    identity (Cohen-Daubechies-Feauveau; ``zeros = 4``: JPEG 2000's 7/9 taps). With ``y = sin^2(w/2)``,
    ``F(y) = (1 - y)^N sum_{k<N} C(N-1+k, k) y^k`` is half-band, so any split of ``F`` into polynomials in
    ``y`` is exact: each gets ``(1 - y)^(N/2)``, ``up`` the real roots of the sum, ``down`` the complex."""
    n = int(zeros)
    if n < 2 or n % 2:
        raise ValueError(f"zeros must be an even number >= 2, got {zeros}")
    y = np.array([-0.25, 0.5, -0.25])  # y as a symmetric 3-tap filter in z
    one_minus_y = np.array([0.25, 0.5, 0.25])
    roots = np.roots([math.comb(n - 1 + k, k) for k in reversed(range(n))])
    up = down = np.array([1.0])
    for _ in range(n // 2):
        up, down = np.convolve(up, one_minus_y), np.convolve(down, one_minus_y)
    for r in roots:  # factor (1 - y / r); a complex pair multiplies out to real taps
        if abs(r.imag) < 1e-9:
            up = np.convolve(up, np.array([0.0, 1.0, 0.0]) - y / r.real)
        else:
            down = np.convolve(down, np.array([0.0, 1.0, 0.0]) - y / r)
    up, down = np.real(up), np.real(down)
    return up / up.sum(), down / down.sum()


def band_filters(radius: int = BAND_FILTER_RADIUS) -> np.ndarray:
    """``[4, 2 radius + 1]`` 1-D band-passes split at :data:`FILTER_BANDS`: differences of nested zero-phase
    Hann-windowed sinc low-passes (DC gain 1), so the four sum to a unit impulse."""
    n = np.arange(-radius, radius + 1, dtype=np.float64)
    edges = [np.zeros_like(n)]
    for c in FILTER_BANDS:
        h = (c / math.pi) * np.sinc(c * n / math.pi) * 0.5 * (1 + np.cos(math.pi * n / (radius + 1)))
        edges.append(h / h.sum())
    edges.append((n == 0).astype(np.float64))
    return np.stack([edges[i + 1] - edges[i] for i in range(4)])


def band_energy_weights(size: int) -> np.ndarray:
    """Expected share of image energy per band, for equal energy per octave above ``2 pi / size`` (1/f^2)."""
    low = min(2 * math.pi / max(size, 2), FILTER_BANDS[0] / 2)
    edges = [low, *FILTER_BANDS, math.pi]
    octaves = np.array([math.log2(edges[i + 1] / edges[i]) for i in range(4)])
    return octaves / octaves.sum()


def _to(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return t.to(device=x.device, dtype=x.dtype, non_blocking=True)


class _GridSample(torch.autograd.Function):
    """Bilinear ``grid_sampler_2d`` (border, align_corners=False) or, with ``adjoint``, its image backward:
    each is the other's derivative, so any order works (older PyTorch lacks its second derivative)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, grid: torch.Tensor, adjoint: bool, shape: Any) -> torch.Tensor:
        ctx.save_for_backward(grid)
        ctx.adjoint, ctx.shape = adjoint, x.shape
        if not adjoint:
            return torch.grid_sampler_2d(x, grid, 0, 1, False)
        # The image's values only matter for the grid's gradient, which is not asked for: pass its shape.
        return torch.ops.aten.grid_sampler_2d_backward(
            x, x.new_empty(shape), grid, 0, 1, False, [True, False]
        )[0]

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        (grid,) = ctx.saved_tensors
        return _GridSample.apply(dy, grid, not ctx.adjoint, ctx.shape), None, None, None


def bilinear_sample(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Sample ``x [N, C, H, W]`` bilinearly at ``grid [N, Ho, Wo, 2]`` (normalised (x, y),
    align_corners=False, border padding): ``[N, C, Ho, Wo]``, differentiable to any order in ``x`` only."""
    if grid.requires_grad:
        raise ValueError("bilinear_sample differentiates w.r.t. the image only; detach the grid")
    return _GridSample.apply(x, grid.to(x.dtype), False, None)


def mirror_index(idx: torch.Tensor, size: int) -> torch.Tensor:
    """Fold integer indices of any value into ``[0, size)`` by mirroring about the edge samples."""
    if size == 1:
        return torch.zeros_like(idx)
    period = 2 * (size - 1)
    idx = torch.remainder(idx, period)
    return torch.where(idx >= size, period - idx, idx)


def mirror_pad(x: torch.Tensor, pad: Sequence[int]) -> torch.Tensor:
    """Reflection-pad ``x [N, C, H, W]`` by ``(x0, x1, y0, y1)`` pixels, any amount (``mode='reflect'``)."""
    x0, x1, y0, y1 = (int(v) for v in pad)
    h, w = x.shape[2:]
    x = x.index_select(3, mirror_index(torch.arange(-x0, w + x1, device=x.device), w))
    return x.index_select(2, mirror_index(torch.arange(-y0, h + y1, device=x.device), h))


def _affine(M: torch.Tensor, gx: torch.Tensor, gy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``M [n, 3, 3]`` applied to the grid of points ``(gx [W], gy [H])``: ``(x, y)``, each ``[n, H, W]``."""
    sx = M[:, 0, 0, None, None] * gx + M[:, 0, 1, None, None] * gy[:, None] + M[:, 0, 2, None, None]
    sy = M[:, 1, 0, None, None] * gx + M[:, 1, 1, None, None] * gy[:, None] + M[:, 1, 2, None, None]
    return sx, sy


def resample(
    x: torch.Tensor, G: torch.Tensor, f_up: torch.Tensor, f_down: torch.Tensor, max_pad: int | None = None
) -> torch.Tensor:
    """Warp ``x [N, C, H, W]`` with ``G [N, 3, 3]`` (float64, CPU), which maps an output pixel's centred
    coordinates ``(j - (W-1)/2, i - (H-1)/2, 1)`` to its input position. Reflect-pads as far as the warp
    reaches, at most ``max_pad`` pixels per side (default the size; beyond, the border repeats).
    ``f_up``, ``f_down``: :func:`biorthogonal_filters`; 2x sample ``q`` sits at pixel coordinate ``q / 2``."""
    h, w = x.shape[2:]
    t_up, t_down = f_up.shape[-1], f_down.shape[-1]
    m = (t_down - 1) // 2  # 2x samples per side that the downsampling filter consumes
    cx, cy = (w - 1) / 2, (h - 1) / 2
    # Where the 2x output grid (with its margin) reaches in the input: bounding box of its mapped corners.
    ux = torch.tensor([-m, 2 * w - 2 + m], dtype=torch.float64) / 2 - cx
    uy = torch.tensor([-m, 2 * h - 2 + m], dtype=torch.float64) / 2 - cy
    corners = torch.stack(torch.meshgrid(ux, uy, indexing="ij"), -1).reshape(4, 2)
    corners = torch.cat([corners, torch.ones(4, 1, dtype=torch.float64)], 1)
    src = torch.einsum("nij,kj->nki", G.to(torch.float64), corners)[..., :2].reshape(-1, 2)
    centre = torch.tensor([cx, cy], dtype=torch.float64)
    margin = 1.0 + t_up / 4  # bilinear footprint plus the upsampling filter's reach, in input pixels
    lo = margin - (src.min(0).values + centre)
    hi = margin + src.max(0).values - centre
    cap = max(w, h) if max_pad is None else int(max_pad)
    quantum = max(max(w, h) // 16, 1)  # few distinct shapes: convolution back ends cache per shape
    px0, py0, px1, py1 = (min(max(math.ceil(float(v) / quantum), 1) * quantum, cap) for v in (*lo, *hi))
    r = (t_up - 1) // 2  # centred: input sample i lands on 2x sample 2 i
    up = upfirdn2d(mirror_pad(x, (px0, px1, py0, py1)), f_up, up=2, padding=(r, r - 1, r, r - 1), gain=4)
    hup, wup = up.shape[2:]
    gx = torch.arange(-m, 2 * w - 1 + m, device=x.device, dtype=x.dtype) / 2 - cx
    gy = torch.arange(-m, 2 * h - 1 + m, device=x.device, dtype=x.dtype) / 2 - cy
    sx, sy = _affine(_to(G, x), gx, gy)
    qx = 2 * (sx + cx + px0)  # 2x sample index in the padded, upsampled image
    qy = 2 * (sy + cy + py0)
    grid = torch.stack([(2 * qx + 1) / wup - 1, (2 * qy + 1) / hup - 1], dim=-1)
    return upfirdn2d(bilinear_sample(up, grid), f_down, down=2)


def _eye(n: int, size: int) -> torch.Tensor:
    return torch.eye(size, dtype=torch.float64).repeat(n, 1, 1)


def scale2d(sx: torch.Tensor, sy: torch.Tensor) -> torch.Tensor:
    """``[n, 3, 3]`` float64 homogeneous 2-D scalings by ``sx, sy [n]``."""
    m = _eye(len(sx), 3)
    m[:, 0, 0], m[:, 1, 1] = sx, sy
    return m


def rotate2d(theta: torch.Tensor) -> torch.Tensor:
    """``[n, 3, 3]`` float64 rotations by ``theta [n]`` radians, counter-clockwise for y pointing up."""
    m = _eye(len(theta), 3)
    c, s = torch.cos(theta), torch.sin(theta)
    m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1] = c, -s, s, c
    return m


def translate2d(tx: torch.Tensor, ty: torch.Tensor) -> torch.Tensor:
    """``[n, 3, 3]`` float64 translations by ``tx, ty [n]`` pixels."""
    m = _eye(len(tx), 3)
    m[:, 0, 2], m[:, 1, 2] = tx, ty
    return m


def _chance(n: int, prob: float) -> torch.Tensor:
    return torch.rand(n, dtype=torch.float64) < prob


def _lognormal(n: int, std: float) -> torch.Tensor:
    return torch.exp(torch.randn(n, dtype=torch.float64) * std)


def _luma(k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The luma axis ``v = (1, ..., 1) / sqrt(k)``, ``v v^T`` and ``I``, float64."""
    v = torch.full((k,), 1 / math.sqrt(k), dtype=torch.float64)
    return v, torch.outer(v, v), torch.eye(k, dtype=torch.float64)


def color_matrix(n: int, channels: int, p: float, names: Sequence[str]) -> torch.Tensor:
    """The colour maps drawn for ``n`` images, ``[n, K+1, K+1]`` (homogeneous, ``K = channels``): the product
    of the transforms ``names`` in pipeline order (identities for unselected images)."""
    k = channels
    v, vv, eye_k = _luma(k)
    C = _eye(n, k + 1)
    for name in names:
        m = _eye(n, k + 1)
        if name == "brightness":
            b = torch.randn(n, dtype=torch.float64) * BRIGHTNESS_STD
            m[:, :k, k] = torch.where(_chance(n, p), b, 0.0)[:, None]
        elif name == "contrast":
            c = _lognormal(n, CONTRAST_STD)
            m[:, :k, :k] = eye_k * torch.where(_chance(n, p), c, 1.0)[:, None, None]
        elif name == "lumaflip":
            i = torch.randint(0, 2, (n,), dtype=torch.float64)
            m[:, :k, :k] = eye_k - 2 * vv * torch.where(_chance(n, p), i, 0.0)[:, None, None]
        elif name == "hue":
            theta = (torch.rand(n, dtype=torch.float64) * 2 - 1) * math.pi
            theta = torch.where(_chance(n, p), theta, 0.0)
            if k == 3:  # Rodrigues: rotation by theta about the luma axis v
                cross = v[0] * torch.tensor([[0, -1, 1], [1, 0, -1], [-1, 1, 0]], dtype=torch.float64)
                c, s = torch.cos(theta)[:, None, None], torch.sin(theta)[:, None, None]
                m[:, :3, :3] = vv + c * (eye_k - vv) + s * cross
            elif k != 1:  # one channel has no hue
                raise UserError(f"hue rotation needs 1 or 3 image channels, got {k}; use a preset without it")
        elif name == "saturation":
            s = _lognormal(n, SATURATION_STD)
            s = torch.where(_chance(n, p), s, 1.0)[:, None, None]
            m[:, :k, :k] = vv + (eye_k - vv) * s
        C = m @ C
    return C


def expected_color_matrix(channels: int, p: float, names: Sequence[str] = COLOR) -> torch.Tensor:
    """Closed-form ``E[C]`` of the colour map, ``[K+1, K+1]`` float64 (a product of independent factors)."""
    k = channels
    _, vv, eye_k = _luma(k)
    eye = torch.eye(k + 1, dtype=torch.float64)
    total = eye
    for name in names:
        m = eye.clone()
        if name == "contrast":
            m[:k, :k] = eye_k * math.exp(CONTRAST_STD**2 / 2)
        elif name == "lumaflip":
            m[:k, :k] = eye_k - vv  # E[i] = 1/2
        elif name == "hue" and k == 3:
            m[:k, :k] = vv  # E[cos] = E[sin] = 0 over a full turn
        elif name == "saturation":
            m[:k, :k] = vv + (eye_k - vv) * math.exp(SATURATION_STD**2 / 2)
        total = ((1 - p) * eye + p * m) @ total
    return total


def _pick(text: str, known: Sequence[str]) -> tuple[str, ...] | None:
    """The names of a comma-separated list in the order of ``known``; None if it is empty or has others."""
    names = [s.strip() for s in str(text).split(",") if s.strip()]
    if not names or any(s not in known for s in names):
        return None
    return tuple(t for t in known if t in names)


def _reload_p(pipe: AugmentPipe, _incompatible_keys: Any) -> None:
    """After ``load_state_dict`` (a checkpoint's p): refresh the host copy of the buffer."""
    pipe.p_value = float(pipe.p)


class AugmentPipe(nn.Module):
    """ADA's augmentation pipeline: ``[N, C, H, W]`` in [-1, 1] -> same shape and dtype. ``preset``: a key
    of :data:`PRESETS` or a comma-separated list of :data:`TRANSFORMS`; ``p`` in [0, 1), kept in the buffer
    ``p``; ``max_pad``: cap of the geometric stage's reflection padding, pixels per side (None: the size)."""

    def __init__(self, preset: str = "bgc", p: float = 0.0, max_pad: int | None = None) -> None:
        super().__init__()
        self.preset = preset
        self.transforms = PRESETS.get(preset) or _pick(preset, TRANSFORMS)  # in pipeline order
        if self.transforms is None:
            raise UserError(
                f"unknown augmentation preset {preset!r}: use one of {', '.join(PRESETS)} or a "
                f"comma-separated list of transforms from {', '.join(TRANSFORMS)}"
            )
        self.max_pad = max_pad
        self.register_buffer("p", torch.zeros([]))
        self.set_p(p)
        f_up, f_down = biorthogonal_filters(WAVELET_ZEROS)
        self.register_buffer("filter_up", setup_filter(f_up, separable=True), persistent=False)
        self.register_buffer("filter_down", setup_filter(f_down, separable=True), persistent=False)
        bands = torch.as_tensor(band_filters(), dtype=torch.float32)
        self.register_buffer("band_filters", bands, persistent=False)
        self.register_load_state_dict_post_hook(_reload_p)

    def set_p(self, p: float) -> None:
        p = float(np.float32(p))  # the buffer's precision, so that a reloaded p is the same number
        if not 0.0 <= p < 1.0:
            raise UserError(f"augmentation probability p must be in [0, 1), got {p}")
        self.p_value = p  # host copy: reading it needs no device sync
        self.p.fill_(p)

    def extra_repr(self) -> str:
        return f"preset={self.preset!r}, p={self.p_value:.6f}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"AugmentPipe takes NCHW images, got shape {tuple(x.shape)}")
        p = self.p_value
        if p <= 0 or x.shape[0] == 0:
            return x
        dtype = x.dtype
        stages = (
            (BLIT, self._blit),
            (GEOM, self._geometric),
            (COLOR, self._color),
            (FILTER, self._filter),
            (NOISE, self._noise),
            (CUTOUT, self._cutout),
        )
        with torch.autocast(x.device.type, enabled=False):
            y = x.to(torch.promote_types(dtype, torch.float32))  # fp32 at least (bf16/fp16 inputs)
            for group, stage in stages:
                if any(t in self.transforms for t in group):
                    y = stage(y, p)
        return y.to(dtype)

    def _blit(self, x: torch.Tensor, p: float) -> torch.Tensor:
        """x-flip, 90-degree rotations and integer translation as one exact pixel gather. Coordinates are
        doubled and centred (``2j - (W-1)``) so that every map stays integer."""
        n, c, h, w = x.shape
        M = _eye(n, 3)  # forward map on doubled centred coordinates
        selected = torch.zeros(n, dtype=torch.bool)
        if "xflip" in self.transforms:
            i = torch.randint(0, 2, (n,))
            on = _chance(n, p) & (i == 1)
            M = scale2d(torch.where(on, -1.0, 1.0).double(), torch.ones(n, dtype=torch.float64)) @ M
            selected |= on
        if "rotate90" in self.transforms:
            k = torch.randint(0, 4, (n,))
            k = torch.where(_chance(n, p), k, 0)
            if h != w and bool((k % 2 == 1).any()):
                raise UserError(f"rotate90 needs square images, got {h}x{w}; use a preset without it")
            M = rotate2d(k.double() * (math.pi / 2)).round() @ M
            selected |= k != 0
        if "xint" in self.transforms:
            t = (torch.rand(n, 2, dtype=torch.float64) * 2 - 1) * XINT_MAX
            t = torch.where(_chance(n, p)[:, None], t, 0.0)
            shift = torch.round(t * torch.tensor([w, h], dtype=torch.float64))
            M = translate2d(2 * shift[:, 0], 2 * shift[:, 1]) @ M
            selected |= (shift != 0).any(1)
        idx = selected.nonzero()[:, 0]
        if idx.numel() == 0:
            return x
        inv = torch.linalg.inv(M[idx]).round().to(device=x.device, dtype=torch.long)
        ox = 2 * torch.arange(w, device=x.device) - (w - 1)
        oy = 2 * torch.arange(h, device=x.device) - (h - 1)
        sx, sy = _affine(inv, ox, oy)
        jx = mirror_index(torch.div(sx + (w - 1), 2, rounding_mode="floor"), w)
        jy = mirror_index(torch.div(sy + (h - 1), 2, rounding_mode="floor"), h)
        flat = (jy * w + jx).reshape(len(idx), 1, h * w).expand(-1, c, -1)
        didx = idx.to(x.device)
        moved = x.index_select(0, didx).reshape(len(idx), c, h * w).gather(2, flat)
        return x.index_copy(0, didx, moved.reshape(len(idx), c, h, w))

    def _geometric(self, x: torch.Tensor, p: float) -> torch.Tensor:
        """Scaling, rotation, anisotropic scaling, rotation, fractional translation: one resampling."""
        n, _, h, w = x.shape
        names = self.transforms
        G = _eye(n, 3)  # inverse map: output centred coordinates -> input; forward maps compose in reverse
        selected = torch.zeros(n, dtype=torch.bool)
        p_rot = 1 - math.sqrt(1 - p)

        def draw(prob: float) -> torch.Tensor:
            nonlocal selected
            on = _chance(n, prob)
            selected |= on
            return on

        if "scale" in names:
            s = torch.where(draw(p), _lognormal(n, SCALE_STD), 1.0)
            G = G @ scale2d(1 / s, 1 / s)
        for stage in ("pre", "post"):
            if stage == "post" and "aniso" in names:
                s = torch.where(draw(p), _lognormal(n, SCALE_STD), 1.0)
                G = G @ scale2d(1 / s, s)
            if "rotate" in names:
                theta = (torch.rand(n, dtype=torch.float64) * 2 - 1) * math.pi
                G = G @ rotate2d(-torch.where(draw(p_rot), theta, 0.0))
        if "xfrac" in names:
            t = torch.randn(n, 2, dtype=torch.float64) * XFRAC_STD
            t = torch.where(draw(p)[:, None], t, 0.0) * torch.tensor([w, h], dtype=torch.float64)
            G = G @ translate2d(-t[:, 0], -t[:, 1])
        idx = selected.nonzero()[:, 0]
        if idx.numel() == 0:
            return x
        didx = idx.to(x.device)
        warped = resample(x.index_select(0, didx), G[idx], self.filter_up, self.filter_down, self.max_pad)
        return x.index_copy(0, didx, warped)

    def _color(self, x: torch.Tensor, p: float) -> torch.Tensor:
        n, k = x.shape[:2]
        C = _to(color_matrix(n, k, p, [t for t in COLOR if t in self.transforms]), x)
        # Elementwise products, not a matmul: exact for unselected images (identity rows) even under TF32.
        mixed = (C[:, :k, :k, None, None] * x[:, None]).sum(2)
        return mixed + C[:, :k, k, None, None]

    def _filter(self, x: torch.Tensor, p: float) -> torch.Tensor:
        """Amplify four frequency bands per image (separable: the same 1-D filter along x and y)."""
        n, c, h, w = x.shape
        amp = torch.exp2(torch.randn(n, 4, dtype=torch.float64) * (FILTER_STD / math.log(2)))
        on = torch.rand(n, 4, dtype=torch.float64) < p
        amp = torch.where(on, amp, 1.0)
        weights = torch.as_tensor(band_energy_weights(max(h, w)))
        amp = amp / (amp.square() * weights).sum(1, keepdim=True).sqrt()
        idx = on.any(1).nonzero()[:, 0]
        if idx.numel() == 0:
            return x
        didx, m = idx.to(x.device), len(idx)
        r = self.band_filters.shape[1] // 2
        kernel = (_to(amp[idx], x) @ self.band_filters.to(x.device, x.dtype)).repeat_interleave(c, 0)
        y = mirror_pad(x.index_select(0, didx), (r, r, r, r)).reshape(1, m * c, h + 2 * r, w + 2 * r)
        y = nn.functional.conv2d(y, kernel[:, None, None, :], groups=m * c)
        y = nn.functional.conv2d(y, kernel[:, None, :, None], groups=m * c)
        return x.index_copy(0, didx, y.reshape(m, c, h, w))

    def _noise(self, x: torch.Tensor, p: float) -> torch.Tensor:
        n = x.shape[0]
        sigma = (torch.randn(n, dtype=torch.float64) * NOISE_STD).abs()
        sigma = torch.where(_chance(n, p), sigma, 0.0)
        if not bool((sigma > 0).any()):
            return x
        return x + _to(sigma, x)[:, None, None, None] * torch.randn_like(x)

    def _cutout(self, x: torch.Tensor, p: float) -> torch.Tensor:
        n = x.shape[0]
        centre = torch.rand(n, 2, dtype=torch.float64)
        on = _chance(n, p)
        if not bool(on.any()):
            return x
        return x * _square_mask(x, centre, on)


def _square_mask(x: torch.Tensor, centre: torch.Tensor, on: torch.Tensor) -> torch.Tensor:
    """``[N, 1, H, W]`` mask, 0 in a :data:`CUTOUT_SIZE` square at ``centre [N, 2]`` where ``on``, else 1."""
    h, w = x.shape[2:]
    cx, cy = _to(centre[:, 0], x), _to(centre[:, 1], x)
    gx = (torch.arange(w, device=x.device, dtype=x.dtype) + 0.5) / w
    gy = (torch.arange(h, device=x.device, dtype=x.dtype) + 0.5) / h
    inside_x = (gx[None, :] - cx[:, None]).abs() < CUTOUT_SIZE / 2
    inside_y = (gy[None, :] - cy[:, None]).abs() < CUTOUT_SIZE / 2
    inside = inside_y[:, :, None] & inside_x[:, None, :] & on.to(x.device)[:, None, None]
    return (~inside).to(x.dtype)[:, None]


class DiffAugment(nn.Module):
    """DiffAugment (Zhao et al. 2020): every transform of ``policy``, a comma-separated subset of ``color``,
    ``translation`` (up to 1/8 of the size, zero fill) and ``cutout``, applied to all images in order."""

    def __init__(self, policy: str = "color,translation,cutout") -> None:
        super().__init__()
        self.policy = _pick(policy, DIFFAUGMENT_OPS)
        if self.policy is None:
            raise UserError(
                f"unknown DiffAugment policy {policy!r}: use a comma-separated subset of "
                f"{', '.join(DIFFAUGMENT_OPS)}"
            )

    def extra_repr(self) -> str:
        return f"policy={','.join(self.policy)!r}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"DiffAugment takes NCHW images, got shape {tuple(x.shape)}")
        n, c, h, w = x.shape
        dtype = x.dtype
        with torch.autocast(x.device.type, enabled=False):
            x = x.to(torch.promote_types(dtype, torch.float32))
            if "color" in self.policy:
                x = x + _to(torch.rand(n) - 0.5, x)[:, None, None, None]
                mean = x.mean(1, keepdim=True)
                x = (x - mean) * _to(torch.rand(n) * 2, x)[:, None, None, None] + mean
                mean = x.mean((1, 2, 3), keepdim=True)
                x = (x - mean) * _to(torch.rand(n) + 0.5, x)[:, None, None, None] + mean
            if "translation" in self.policy:  # whole pixels, zero fill: a gather, linear in x
                rx, ry = round(w / 8), round(h / 8)
                shift = torch.stack([torch.randint(-rx, rx + 1, (n,)), torch.randint(-ry, ry + 1, (n,))], 1)
                shift = shift.to(x.device, non_blocking=True)
                sx = torch.arange(w, device=x.device)[None, None, :] - shift[:, 0, None, None]
                sy = torch.arange(h, device=x.device)[None, :, None] - shift[:, 1, None, None]
                valid = ((sx >= 0) & (sx < w) & (sy >= 0) & (sy < h)).to(x.dtype)
                flat = (sy.clamp(0, h - 1) * w + sx.clamp(0, w - 1)).reshape(n, 1, h * w).expand(-1, c, -1)
                x = x.reshape(n, c, h * w).gather(2, flat).reshape(n, c, h, w) * valid[:, None]
            if "cutout" in self.policy:
                centre = torch.rand(n, 2, dtype=torch.float64)
                x = x * _square_mask(x, centre, torch.ones(n, dtype=torch.bool))
        return x.to(dtype)


def ada_adjust(p: float, rt: float, target: float, batch: int, interval: int, ada_kimg: float) -> float:
    """ADA's rule, ``p + sign(rt - target) * batch * interval / (ada_kimg * 1000)`` clamped to ``[0, P_MAX]``
    (``batch``: all ranks; ``rt``: the mean ``sign(D(real))`` over ``interval`` D steps)."""
    if not math.isfinite(rt) or rt == target:
        return p
    step = math.copysign(1.0, rt - target)
    return min(max(p + step * batch * interval / (ada_kimg * 1000), 0.0), P_MAX)


class AdaController(nn.Module):
    """Collects ``sign(D(real))`` and moves the pipe's p every ``interval`` D steps (``target=None``: only
    measures ``r_t``); its counters are buffers, so resume continues mid-interval. Checked: AugmentConfig."""

    def __init__(self, target: float | None = 0.6, interval: int = 4, ada_kimg: float = 500.0) -> None:
        super().__init__()
        self.target = None if target is None else float(target)
        self.interval, self.ada_kimg = int(interval), float(ada_kimg)
        self.register_buffer("sign_stat", torch.zeros(2))  # sum of sign(D(real)), number of logits
        self.register_buffer("d_steps", torch.zeros([], dtype=torch.long))
        self.register_buffer("rt", torch.full([], float("nan")))

    def observe(self, real_logits: torch.Tensor) -> None:
        """Add one D step's real logits (detached; no sync)."""
        logits = real_logits.detach().float()
        self.sign_stat[0] += logits.sign().nan_to_num(0.0).sum()  # a NaN logit counts as undecided
        self.sign_stat[1] += logits.numel()

    def update(self, pipe: AugmentPipe, global_batch: int, reduce: Reduce | None = None) -> dict[str, float]:
        """Count a D step; every ``interval`` steps set ``r_t`` (``reduce``: mean over ranks) and adjust p."""
        self.d_steps += 1
        if int(self.d_steps) % self.interval == 0:
            stat = reduce(self.sign_stat) if reduce is not None else self.sign_stat
            rt = float(stat[0] / stat[1].clamp(min=1))
            self.rt.fill_(rt)
            self.sign_stat.zero_()
            if self.target is not None:
                p = ada_adjust(pipe.p_value, rt, self.target, global_batch, self.interval, self.ada_kimg)
                pipe.set_p(p)
        logs = {"Progress/augment_p": pipe.p_value}
        rt = float(self.rt)
        if math.isfinite(rt):
            logs["Progress/ada_rt"] = rt
        return logs


def build_augment(cfg: AugmentConfig) -> tuple[nn.Module | None, AdaController | None]:
    """``(pipe, controller)``: ``none``: neither; ``ada``: ADA pipe and controller; ``fixed``: ADA pipe at
    constant ``p`` (``r_t`` still logged); ``diffaugment``: ``(DiffAugment, None)``."""
    if cfg.kind == "none":
        return None, None
    if cfg.kind == "diffaugment":
        return DiffAugment(cfg.diffaugment_policy), None
    pipe = AugmentPipe(cfg.preset, p=cfg.p)
    controller = AdaController(cfg.ada_target if cfg.kind == "ada" else None, cfg.ada_interval, cfg.ada_kimg)
    return pipe, controller
