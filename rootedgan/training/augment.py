"""Differentiable discriminator augmentation: ADA's pipeline and p controller, and DiffAugment.

**ADA** (Karras et al. 2020, "Training generative adversarial networks with limited data", arXiv 2006.06676,
appendix B). Every image D sees (real and fake, in every phase, R1 included) goes through a fixed chain of
transforms; each is applied to each image independently with probability ``p``, except the two arbitrary
rotations, which use ``1 - sqrt(1 - p)`` each so that "some rotation" happens with probability ``p``.
Strengths, for images in [-1, 1]:

* pixel blitting (``b``): x-flip (``i ~ U{0, 1}``), rotation by ``90 deg * i`` (``i ~ U{0..3}``), integer
  translation by ``round(t * size)`` pixels, ``t ~ U(-0.125, 0.125)`` per axis, reflection padding;
* general geometry (``g``): isotropic scaling ``s ~ lognormal(0, (0.2 ln 2)^2)``; rotation
  ``theta ~ U(-pi, pi)``; anisotropic scaling ``(s, 1/s)``, ``s ~ lognormal(0, (0.2 ln 2)^2)``; rotation
  again; fractional translation ``t ~ N(0, 0.125^2) * size`` per axis;
* colour (``c``), a 4x4 matrix on homogeneous RGB with the luma axis ``v = (1, 1, 1) / sqrt(3)``:
  brightness ``+ b``, ``b ~ N(0, 0.2^2)``; contrast ``* c``, ``c ~ lognormal(0, (0.5 ln 2)^2)``; luma flip
  ``I - 2 v v^T i``, ``i ~ U{0, 1}``; hue rotation about ``v`` by ``theta ~ U(-pi, pi)``; saturation
  ``v v^T + (I - v v^T) s``, ``s ~ lognormal(0, (ln 2)^2)``;
* image-space filtering (``f``): four frequency bands ``[0, pi/8], [pi/8, pi/4], [pi/4, pi/2], [pi/2, pi]``,
  each amplified (with probability ``p``) by ``lambda ~ lognormal(0, (ln 2)^2)``, then normalised to keep the
  expected image energy (see :func:`band_energy_weights`);
* corruptions: additive Gaussian noise with ``sigma ~ |N(0, 0.1^2)|`` (``n``); cutout of a square half the
  image size at a uniform position, filled with 0 (``c`` at the end of ``bgcfnc``).

The geometric transforms are composed into one 3x3 matrix per image and done in a single resampling at 2x
supersampling: reflect-pad, upsample 2x with a low-pass wavelet filter, bilinear resampling, low-pass
downsample 2x, crop. The filters are a symmetric biorthogonal wavelet pair (CDF 9/7, derived in
:func:`biorthogonal_filters`): upsampling followed by downsampling is the identity, and flips and
90-degree rotations are exact, so the
resampling itself blurs nothing. Blits are exact pixel gathers. Each stage leaves the images for which none
of its transforms was drawn bit-identical.

Randomness: per-image parameters are drawn from torch's global CPU generator (the same augmentations on CPU
and GPU for a seed, no device sync); per-pixel noise from the images' device generator. The training
module seeds both per step inside ``fork_rng``, so resume is exact.

Double backward (R1 through the augmentation): every op here is linear in the image (gathers, index copies,
convolutions, :func:`bilinear_sample`, whose backward is again differentiable; older PyTorch versions lack the
second derivative of ``grid_sampler_2d``).

**Adaptive p** (:class:`AdaController`): every ``interval`` D steps, with ``r_t = E[sign(D(real))]`` over
those steps (all ranks), ``p <- clamp(p + sign(r_t - target) * batch * interval / (ada_kimg * 1000), 0,
P_MAX)``.

**DiffAugment** (Zhao et al. 2020, arXiv 2006.10738): ``color`` (brightness ``+ U(-0.5, 0.5)``, saturation
``* U(0, 2)`` about the per-pixel channel mean, contrast ``* U(0.5, 1.5)`` about the image mean),
``translation`` (integer shift within ``[-1/8, 1/8]`` of the size, zero padding) and ``cutout`` (a zeroed
square of half the size at a uniform position), applied to every image.
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
FILTER = ("imgfilter",)
NOISE = ("noise",)
CUTOUT = ("cutout",)
TRANSFORMS = BLIT + GEOM + COLOR + FILTER + NOISE + CUTOUT
PRESETS: dict[str, tuple[str, ...]] = {
    "blit": BLIT,
    "geom": GEOM,
    "color": COLOR,
    "filter": FILTER,
    "noise": NOISE,
    "cutout": CUTOUT,
    "bg": BLIT + GEOM,
    "bgc": BLIT + GEOM + COLOR,
    "bgcf": BLIT + GEOM + COLOR + FILTER,
    "bgcfn": BLIT + GEOM + COLOR + FILTER + NOISE,
    "bgcfnc": BLIT + GEOM + COLOR + FILTER + NOISE + CUTOUT,
}
DIFFAUGMENT_OPS = ("color", "translation", "cutout")

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


# -- filters ------------------------------------------------------------------------------------------


def biorthogonal_filters(zeros: int = WAVELET_ZEROS) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric low-pass pair ``(up, down)`` for 2x resampling whose round trip is the identity: the
    Cohen-Daubechies-Feauveau construction (for ``zeros = 4``: the 7/9-tap pair of JPEG 2000). Both sum to 1.

    Derivation: with ``y = sin^2(w/2) = (2 - z - 1/z) / 4``, the product filter
    ``F(y) = (1 - y)^N P(y)``, ``P(y) = sum_{k<N} C(N-1+k, k) y^k``, satisfies ``F(y) + F(1 - y) = 1``
    (Daubechies), i.e. ``F`` is half-band: its even taps are a unit impulse. Any split of ``F`` into two
    factors that are polynomials in ``y`` gives two symmetric (zero-phase) filters whose up-then-down round
    trip is exact. We give each ``(1 - y)^(N/2)`` (N/2 zeros at Nyquist each) and the real roots of ``P`` to
    the upsampling (interpolation) filter, its complex roots to the downsampling (anti-alias) filter.
    Being symmetric, the pair commutes with flips and 90-degree rotations (a wavelet such as a symlet is
    orthogonal but not symmetric, and shifts content by a fraction of a pixel under rotations).
    """
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


def lowpass_filter(cutoff: float, radius: int = BAND_FILTER_RADIUS) -> np.ndarray:
    """Zero-phase Hann-windowed sinc low-pass with ``cutoff`` in radians per sample, ``2 * radius + 1``
    taps, DC gain 1."""
    n = np.arange(-radius, radius + 1, dtype=np.float64)
    h = (cutoff / math.pi) * np.sinc(cutoff * n / math.pi) * 0.5 * (1 + np.cos(math.pi * n / (radius + 1)))
    return h / h.sum()


def band_filters(radius: int = BAND_FILTER_RADIUS) -> np.ndarray:
    """``[4, 2 * radius + 1]`` 1-D band-pass filters for the bands split at :data:`FILTER_BANDS`: the
    differences of nested low-passes, so that the four sum to the identity (a unit impulse)."""
    lows = [lowpass_filter(c, radius) for c in FILTER_BANDS]
    delta = np.zeros(2 * radius + 1)
    delta[radius] = 1.0
    edges = [np.zeros_like(delta), *lows, delta]
    return np.stack([edges[i + 1] - edges[i] for i in range(4)])


def band_energy_weights(size: int) -> np.ndarray:
    """Expected share of image energy in each band, assuming natural images' 1/f^2 power spectrum, i.e.
    equal energy per octave; the lowest band spans from the image's fundamental ``2 pi / size`` to pi/8."""
    low = min(2 * math.pi / max(size, 2), FILTER_BANDS[0] / 2)
    edges = [low, *FILTER_BANDS, math.pi]
    octaves = np.array([math.log2(edges[i + 1] / edges[i]) for i in range(4)])
    return octaves / octaves.sum()


# -- resampling -----------------------------------------------------------------------------------------


class _GridSample(torch.autograd.Function):
    """Bilinear ``grid_sampler_2d`` (border padding, align_corners=False) w.r.t. the image only. Linear in
    the image: its backward is the adjoint (:class:`_GridSampleAdjoint`), whose backward is this again, so
    derivatives of any order work. Only the grid is kept for backward, not the image."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(grid)
        ctx.input_shape = x.shape
        return torch.grid_sampler_2d(x, grid, 0, 1, False)

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor, None]:
        (grid,) = ctx.saved_tensors
        return _GridSampleAdjoint.apply(dy, grid, ctx.input_shape), None


class _GridSampleAdjoint(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, dy: torch.Tensor, grid: torch.Tensor, input_shape: torch.Size) -> torch.Tensor:
        ctx.save_for_backward(grid)
        # The input's values only matter for the grid's gradient, which is not asked for: pass its shape.
        shape_only = dy.new_empty(input_shape)
        return torch.ops.aten.grid_sampler_2d_backward(dy, shape_only, grid, 0, 1, False, [True, False])[0]

    @staticmethod
    def backward(ctx: Any, ddx: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (grid,) = ctx.saved_tensors
        return _GridSample.apply(ddx, grid), None, None


def bilinear_sample(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Bilinear sampling of ``x [N, C, H, W]`` at ``grid [N, Ho, Wo, 2]`` (normalised (x, y), PyTorch's
    align_corners=False convention, border padding): ``[N, C, Ho, Wo]``, differentiable to any order in
    ``x`` on every device (no gradient w.r.t. ``grid``)."""
    if grid.requires_grad:
        raise ValueError("bilinear_sample differentiates w.r.t. the image only; detach the grid")
    return _GridSample.apply(x, grid.to(x.dtype))


def mirror_indices(size: int, pad0: int, pad1: int, device: torch.device) -> torch.Tensor:
    """Source indices of reflection padding (mirror about the edge samples, no repeat, like
    ``F.pad(mode='reflect')``) by any amount: ``[pad0 + size + pad1]`` int64."""
    return mirror_index(torch.arange(-pad0, size + pad1, device=device), size)


def mirror_index(idx: torch.Tensor, size: int) -> torch.Tensor:
    """Fold integer indices of any value into ``[0, size)`` by mirroring about the edge samples."""
    if size == 1:
        return torch.zeros_like(idx)
    period = 2 * (size - 1)
    idx = torch.remainder(idx, period)
    return torch.where(idx >= size, period - idx, idx)


def mirror_pad(x: torch.Tensor, pad: Sequence[int]) -> torch.Tensor:
    """Reflection-pad ``x [N, C, H, W]`` by ``(x0, x1, y0, y1)`` pixels (any amount)."""
    x0, x1, y0, y1 = (int(v) for v in pad)
    x = x.index_select(3, mirror_indices(x.shape[3], x0, x1, x.device))
    return x.index_select(2, mirror_indices(x.shape[2], y0, y1, x.device))


def resample(
    x: torch.Tensor, G: torch.Tensor, f_up: torch.Tensor, f_down: torch.Tensor, max_pad: int | None = None
) -> torch.Tensor:
    """Warp ``x [N, C, H, W]`` with ``G [N, 3, 3]`` (float64, CPU), which maps an output pixel's centred
    coordinates ``(j - (W-1)/2, i - (H-1)/2, 1)`` to the input position it takes its value from.

    Reflect-pad (as far as the warp reaches, at most ``max_pad`` pixels per side, default the image size;
    beyond that the border is repeated), upsample 2x with ``f_up``, sample bilinearly on the 2x grid,
    downsample 2x with ``f_down``, crop to ``[N, C, H, W]``. The filters are odd-length, symmetric, 1-D,
    sum 1 (:func:`biorthogonal_filters`); 2x sample ``q`` sits at pixel coordinate ``q / 2``.
    """
    n, _, h, w = x.shape
    t_up, t_down = f_up.shape[-1], f_down.shape[-1]
    if f_up.ndim != 1 or f_down.ndim != 1 or t_up % 2 == 0 or t_down % 2 == 0:
        raise ValueError("resample needs separable (1-D) filters with odd numbers of taps")
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

    def amount(v: torch.Tensor) -> int:
        return min(max(math.ceil(float(v) / quantum), 1) * quantum, cap)

    px0, py0 = (amount(v) for v in lo)
    px1, py1 = (amount(v) for v in hi)

    r = (t_up - 1) // 2  # centred: input sample i lands on 2x sample 2 i
    up = upfirdn2d(mirror_pad(x, (px0, px1, py0, py1)), f_up, up=2, padding=(r, r - 1, r, r - 1), gain=4)
    hup, wup = up.shape[2:]
    gx = torch.arange(-m, 2 * w - 1 + m, device=x.device, dtype=x.dtype) / 2 - cx
    gy = torch.arange(-m, 2 * h - 1 + m, device=x.device, dtype=x.dtype) / 2 - cy
    Gd = G.to(device=x.device, dtype=x.dtype, non_blocking=True)
    sx = Gd[:, 0, 0, None, None] * gx + Gd[:, 0, 1, None, None] * gy[:, None] + Gd[:, 0, 2, None, None]
    sy = Gd[:, 1, 0, None, None] * gx + Gd[:, 1, 1, None, None] * gy[:, None] + Gd[:, 1, 2, None, None]
    qx = 2 * (sx + cx + px0)  # 2x sample index in the padded, upsampled image
    qy = 2 * (sy + cy + py0)
    grid = torch.stack([(2 * qx + 1) / wup - 1, (2 * qy + 1) / hup - 1], dim=-1)
    return upfirdn2d(bilinear_sample(up, grid), f_down, down=2)


# -- matrices -------------------------------------------------------------------------------------------


def _eye(n: int, size: int) -> torch.Tensor:
    return torch.eye(size, dtype=torch.float64).repeat(n, 1, 1)


def scale2d(sx: torch.Tensor, sy: torch.Tensor) -> torch.Tensor:
    """``[n, 3, 3]`` float64 homogeneous 2-D scalings by ``sx, sy [n]``."""
    m = _eye(len(sx), 3)
    m[:, 0, 0], m[:, 1, 1] = sx, sy
    return m


def rotate2d(theta: torch.Tensor) -> torch.Tensor:
    """``[n, 3, 3]`` float64 rotations by ``theta [n]`` radians, counter-clockwise in (x right, y up)
    terms (with image rows pointing down: clockwise on screen)."""
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


def color_matrix_parts(n: int, channels: int, p: float, names: Sequence[str]) -> list[torch.Tensor]:
    """The colour transforms drawn for ``n`` images, in pipeline order, each ``[n, K+1, K+1]`` (homogeneous,
    ``K = channels``); unselected images get the identity. Their product (last first) is the colour map."""
    k = channels
    v = torch.full((k,), 1 / math.sqrt(k), dtype=torch.float64)
    vv = torch.outer(v, v)
    eye_k = torch.eye(k, dtype=torch.float64)
    parts = []
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
                cross = torch.tensor(
                    [[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]], dtype=torch.float64
                )
                c, s = torch.cos(theta)[:, None, None], torch.sin(theta)[:, None, None]
                m[:, :3, :3] = vv + c * (eye_k - vv) + s * cross
            elif k != 1:  # one channel has no hue
                raise UserError(f"hue rotation needs 1 or 3 image channels, got {k}; use a preset without it")
        elif name == "saturation":
            s = _lognormal(n, SATURATION_STD)
            s = torch.where(_chance(n, p), s, 1.0)[:, None, None]
            m[:, :k, :k] = vv + (eye_k - vv) * s
        parts.append(m)
    return parts


def expected_color_matrix(channels: int, p: float, names: Sequence[str] = COLOR) -> torch.Tensor:
    """Closed-form ``E[C]`` of the colour map for probability ``p`` (transforms are independent, so the
    expectation of the product is the product of the expectations): ``[K+1, K+1]`` float64."""
    k = channels
    v = torch.full((k,), 1 / math.sqrt(k), dtype=torch.float64)
    vv = torch.outer(v, v)
    eye_k = torch.eye(k, dtype=torch.float64)
    total = torch.eye(k + 1, dtype=torch.float64)
    for name in names:
        m = torch.eye(k + 1, dtype=torch.float64)
        if name == "contrast":
            m[:k, :k] = eye_k * math.exp(CONTRAST_STD**2 / 2)
        elif name == "lumaflip":
            m[:k, :k] = eye_k - vv  # E[i] = 1/2
        elif name == "hue" and k == 3:
            m[:k, :k] = vv  # E[cos] = E[sin] = 0 over a full turn
        elif name == "saturation":
            m[:k, :k] = vv + (eye_k - vv) * math.exp(SATURATION_STD**2 / 2)
        total = ((1 - p) * torch.eye(k + 1, dtype=torch.float64) + p * m) @ total
    return total


# -- the ADA pipeline -----------------------------------------------------------------------------------


def parse_preset(preset: str) -> tuple[str, ...]:
    """A preset name (:data:`PRESETS`) or a comma-separated list of transform names, in pipeline order."""
    if preset in PRESETS:
        return PRESETS[preset]
    names = tuple(s.strip() for s in str(preset).split(",") if s.strip())
    unknown = [s for s in names if s not in TRANSFORMS]
    if not names or unknown:
        raise UserError(
            f"unknown augmentation preset {preset!r}: use one of {', '.join(PRESETS)} or a comma-separated "
            f"list of transforms from {', '.join(TRANSFORMS)}"
        )
    return tuple(t for t in TRANSFORMS if t in names)


def _reload_p(pipe: AugmentPipe, _incompatible_keys: Any) -> None:
    """After ``load_state_dict`` (a checkpoint's p): refresh the host copy of the buffer."""
    pipe._p = float(pipe.p)


class AugmentPipe(nn.Module):
    """ADA's augmentation pipeline: ``[N, C, H, W]`` in [-1, 1] -> same shape and dtype.

    Args:
        preset: ``bgc`` (default: blit, geometry, colour), ``bg``, ``bgcf``, ``bgcfn``, ``bgcfnc``, one group
            (``blit``, ``geom``, ``color``, ``filter``, ``noise``, ``cutout``) or a comma-separated list of
            transforms (:data:`TRANSFORMS`).
        p: probability of each transform, in [0, 1). Kept in the buffer ``p`` (saved in the state dict).
        max_pad: cap of the reflection padding of the geometric stage, in pixels per side (None: the size).
    """

    def __init__(self, preset: str = "bgc", p: float = 0.0, max_pad: int | None = None) -> None:
        super().__init__()
        self.preset = preset
        self.transforms = parse_preset(preset)
        self.max_pad = max_pad
        self.register_buffer("p", torch.zeros([]))
        self._p = 0.0
        self.set_p(p)
        f_up, f_down = biorthogonal_filters(WAVELET_ZEROS)
        self.register_buffer("filter_up", setup_filter(f_up, separable=True), persistent=False)
        self.register_buffer("filter_down", setup_filter(f_down, separable=True), persistent=False)
        self.register_buffer(
            "band_filters", torch.as_tensor(band_filters(), dtype=torch.float32), persistent=False
        )
        self.register_load_state_dict_post_hook(_reload_p)

    @property
    def p_value(self) -> float:
        """The current p as a Python float (no device sync)."""
        return self._p

    def set_p(self, p: float) -> None:
        p = float(np.float32(p))  # the buffer's precision, so that a reloaded p is the same number
        if not 0.0 <= p < 1.0:
            raise UserError(f"augmentation probability p must be in [0, 1), got {p}")
        self._p = p
        self.p.fill_(p)

    def extra_repr(self) -> str:
        return f"preset={self.preset!r}, p={self._p:.6f}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"AugmentPipe takes NCHW images, got shape {tuple(x.shape)}")
        p = self._p
        if p <= 0 or x.shape[0] == 0:
            return x
        dtype = x.dtype
        with torch.autocast(x.device.type, enabled=False):
            y = x.to(torch.promote_types(dtype, torch.float32))  # fp32 at least (bf16/fp16 inputs)
            names = self.transforms
            if any(t in names for t in BLIT):
                y = self._blit(y, p)
            if any(t in names for t in GEOM):
                y = self._geometric(y, p)
            if any(t in names for t in COLOR):
                y = self._color(y, p)
            if "imgfilter" in names:
                y = self._filter(y, p)
            if "noise" in names:
                y = self._noise(y, p)
            if "cutout" in names:
                y = self._cutout(y, p)
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
        sx = inv[:, 0, 0, None, None] * ox + inv[:, 0, 1, None, None] * oy[:, None] + inv[:, 0, 2, None, None]
        sy = inv[:, 1, 0, None, None] * ox + inv[:, 1, 1, None, None] * oy[:, None] + inv[:, 1, 2, None, None]
        jx = mirror_index(torch.div(sx + (w - 1), 2, rounding_mode="floor"), w)
        jy = mirror_index(torch.div(sy + (h - 1), 2, rounding_mode="floor"), h)
        flat = (jy * w + jx).reshape(len(idx), 1, h * w).expand(-1, c, -1)
        moved = x.index_select(0, idx.to(x.device)).reshape(len(idx), c, h * w).gather(2, flat)
        return x.index_copy(0, idx.to(x.device), moved.reshape(len(idx), c, h, w))

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
        C = _eye(n, k + 1)
        for m in color_matrix_parts(n, k, p, [t for t in COLOR if t in self.transforms]):
            C = m @ C
        C = C.to(device=x.device, dtype=x.dtype, non_blocking=True)
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
        didx = idx.to(x.device)
        taps = self.band_filters.shape[1]
        r = taps // 2
        g = amp[idx].to(device=x.device, dtype=x.dtype, non_blocking=True) @ self.band_filters.to(
            x.device, x.dtype
        )
        m = len(idx)
        y = mirror_pad(x.index_select(0, didx), (r, r, r, r)).reshape(1, m * c, h + 2 * r, w + 2 * r)
        kernel = g.repeat_interleave(c, 0)
        y = nn.functional.conv2d(y, kernel[:, None, None, :], groups=m * c)
        y = nn.functional.conv2d(y, kernel[:, None, :, None], groups=m * c)
        return x.index_copy(0, didx, y.reshape(m, c, h, w))

    def _noise(self, x: torch.Tensor, p: float) -> torch.Tensor:
        n = x.shape[0]
        sigma = (torch.randn(n, dtype=torch.float64) * NOISE_STD).abs()
        sigma = torch.where(_chance(n, p), sigma, 0.0)
        if not bool((sigma > 0).any()):
            return x
        sigma = sigma.to(device=x.device, dtype=x.dtype, non_blocking=True)
        return x + sigma[:, None, None, None] * torch.randn_like(x)

    def _cutout(self, x: torch.Tensor, p: float) -> torch.Tensor:
        n = x.shape[0]
        centre = torch.rand(n, 2, dtype=torch.float64)
        on = _chance(n, p)
        if not bool(on.any()):
            return x
        return x * _square_mask(x, centre, CUTOUT_SIZE, on)


def _square_mask(x: torch.Tensor, centre: torch.Tensor, size: float, on: torch.Tensor) -> torch.Tensor:
    """``[N, 1, H, W]`` float mask: 0 inside an axis-aligned square of side ``size`` (fraction of the image)
    centred at ``centre [N, 2]`` (fractions), for images where ``on``; 1 elsewhere."""
    n, _, h, w = x.shape
    cx = centre[:, 0].to(device=x.device, dtype=x.dtype, non_blocking=True)
    cy = centre[:, 1].to(device=x.device, dtype=x.dtype, non_blocking=True)
    gx = (torch.arange(w, device=x.device, dtype=x.dtype) + 0.5) / w
    gy = (torch.arange(h, device=x.device, dtype=x.dtype) + 0.5) / h
    inside_x = (gx[None, :] - cx[:, None]).abs() < size / 2
    inside_y = (gy[None, :] - cy[:, None]).abs() < size / 2
    inside = inside_y[:, :, None] & inside_x[:, None, :] & on.to(x.device)[:, None, None]
    return (~inside).to(x.dtype)[:, None]


# -- DiffAugment ----------------------------------------------------------------------------------------


class DiffAugment(nn.Module):
    """DiffAugment (Zhao et al. 2020): every transform of ``policy`` is applied to every image.

    Args:
        policy: comma-separated subset of ``color``, ``translation``, ``cutout`` (applied in that order).
    """

    def __init__(self, policy: str = "color,translation,cutout") -> None:
        super().__init__()
        ops = [s.strip() for s in str(policy).split(",") if s.strip()]
        unknown = [s for s in ops if s not in DIFFAUGMENT_OPS]
        if not ops or unknown:
            raise UserError(
                f"unknown DiffAugment policy {policy!r}: use a comma-separated subset of "
                f"{', '.join(DIFFAUGMENT_OPS)}"
            )
        self.policy = tuple(op for op in DIFFAUGMENT_OPS if op in ops)

    def extra_repr(self) -> str:
        return f"policy={','.join(self.policy)!r}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"DiffAugment takes NCHW images, got shape {tuple(x.shape)}")
        n, _, h, w = x.shape
        dtype = x.dtype
        with torch.autocast(x.device.type, enabled=False):
            x = x.to(torch.promote_types(dtype, torch.float32))

            def per_image(values: torch.Tensor) -> torch.Tensor:
                return values.to(device=x.device, dtype=x.dtype, non_blocking=True)[:, None, None, None]

            if "color" in self.policy:
                x = x + per_image(torch.rand(n) - 0.5)
                mean = x.mean(1, keepdim=True)
                x = (x - mean) * per_image(torch.rand(n) * 2) + mean
                mean = x.mean((1, 2, 3), keepdim=True)
                x = (x - mean) * per_image(torch.rand(n) + 0.5) + mean
            if "translation" in self.policy:
                rx, ry = round(w / 8), round(h / 8)
                shift = torch.stack([torch.randint(-rx, rx + 1, (n,)), torch.randint(-ry, ry + 1, (n,))], 1)
                x = _shift_zero(x, shift.to(x.device, non_blocking=True))
            if "cutout" in self.policy:
                x = x * _square_mask(
                    x, torch.rand(n, 2, dtype=torch.float64), 0.5, torch.ones(n, dtype=torch.bool)
                )
        return x.to(dtype)


def _shift_zero(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Move image n by ``shift[n] = (dx, dy)`` whole pixels, filling with zeros (a gather: linear in x)."""
    n, c, h, w = x.shape
    sx = torch.arange(w, device=x.device)[None, None, :] - shift[:, 0, None, None]
    sy = torch.arange(h, device=x.device)[None, :, None] - shift[:, 1, None, None]
    valid = ((sx >= 0) & (sx < w) & (sy >= 0) & (sy < h)).to(x.dtype)
    flat = (sy.clamp(0, h - 1) * w + sx.clamp(0, w - 1)).reshape(n, 1, h * w).expand(-1, c, -1)
    return x.reshape(n, c, h * w).gather(2, flat).reshape(n, c, h, w) * valid[:, None]


# -- adaptive p -----------------------------------------------------------------------------------------


def ada_adjust(p: float, rt: float, target: float, batch: int, interval: int, ada_kimg: float) -> float:
    """ADA's rule: ``p + sign(rt - target) * batch * interval / (ada_kimg * 1000)``, clamped to
    ``[0, P_MAX]``. ``batch`` is the global batch (all ranks), ``interval`` the D steps since the last
    adjustment, ``rt`` the mean of ``sign(D(real))`` over them."""
    if not math.isfinite(rt) or rt == target:
        return p
    step = math.copysign(1.0, rt - target)
    return min(max(p + step * batch * interval / (ada_kimg * 1000), 0.0), P_MAX)


class AdaController(nn.Module):
    """Collects ``sign(D(real))`` and moves the pipe's p every ``interval`` D steps (``target=None``: p stays
    fixed, ``r_t`` is still measured and logged). Its counters are buffers, so a resumed run continues
    mid-interval exactly."""

    def __init__(self, target: float | None = 0.6, interval: int = 4, ada_kimg: float = 500.0) -> None:
        super().__init__()
        if target is not None and not -1.0 <= float(target) <= 1.0:
            raise UserError(f"model.ada_target must be in [-1, 1] (E[sign(D(real))]), got {target}")
        if int(interval) < 1:
            raise UserError(f"model.ada_interval must be >= 1 D steps, got {interval}")
        if not float(ada_kimg) > 0:
            raise UserError(f"model.ada_kimg must be > 0 (kimg for p to move by 1), got {ada_kimg}")
        self.target = None if target is None else float(target)
        self.interval = int(interval)
        self.ada_kimg = float(ada_kimg)
        self.register_buffer("sign_stat", torch.zeros(2))  # sum of sign(D(real)), number of logits
        self.register_buffer("d_steps", torch.zeros([], dtype=torch.long))
        self.register_buffer("rt", torch.full([], float("nan")))

    def observe(self, real_logits: torch.Tensor) -> None:
        """Add one D step's real logits (detached; no sync)."""
        logits = real_logits.detach().float()
        self.sign_stat[0] += logits.sign().nan_to_num(0.0).sum()  # a NaN logit counts as undecided
        self.sign_stat[1] += logits.numel()

    def update(
        self,
        pipe: AugmentPipe,
        global_batch: int,
        reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> dict[str, float]:
        """Count one D step; every ``interval`` steps set ``r_t`` (``reduce``: mean over ranks, so every rank
        gets the same value) and adjust ``pipe``'s p. Returns the values to log."""
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
    """The training module's augmentation from its settings: ``(pipe, controller)``.

    ``none``: ``(None, None)``; ``ada``: ADA pipe starting at ``p``, adapted towards ``ada_target``;
    ``fixed``: ADA pipe at constant ``p`` (``r_t`` still logged); ``diffaugment``: ``(DiffAugment, None)``.
    """
    if cfg.kind == "none":
        return None, None
    if cfg.kind == "diffaugment":
        return DiffAugment(cfg.diffaugment_policy), None
    pipe = AugmentPipe(cfg.preset, p=cfg.p)
    controller = AdaController(cfg.ada_target if cfg.kind == "ada" else None, cfg.ada_interval, cfg.ada_kimg)
    return pipe, controller
