"""Discriminator augmentation (rootedgan.training.augment): ADA's pipeline and p controller, DiffAugment, and
the training module with augmentation on.

Oracles: closed forms (transform statistics against the ADA paper's distributions, E[colour matrix],
the p-update rule), exact pixel permutations (flips, 90-degree rotations, integer shifts), torch's own
grid_sample and finite differences (gradcheck/gradgradcheck), and training-run invariants (exact resume,
p = 0 leaves training unchanged)."""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import SMOKE
from test_finetune import fit  # the fit helper

from rootedgan.checkpoints import load_network
from rootedgan.errors import UserError
from rootedgan.training.augment import (
    BRIGHTNESS_STD,
    COLOR,
    CONTRAST_STD,
    NOISE_STD,
    P_MAX,
    PRESETS,
    SATURATION_STD,
    SCALE_STD,
    XFRAC_STD,
    AdaController,
    AugmentPipe,
    DiffAugment,
    ada_adjust,
    band_energy_weights,
    band_filters,
    bilinear_sample,
    biorthogonal_filters,
    build_augment,
    expected_color_matrix,
    mirror_pad,
    resample,
    rotate2d,
    scale2d,
    translate2d,
)
from rootedgan.training.settings import AugmentConfig
from rootedgan.training.snapshots import NetworkSnapshot

LN2 = math.log(2)
REPO = Path(__file__).resolve().parents[1]


def augment(pipe: torch.nn.Module, x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    torch.manual_seed(seed)
    return pipe(x)


def blob(size: int, cx: float, cy: float, sigma: float, n: int = 1) -> torch.Tensor:
    """``[n, 1, size, size]`` Gaussian blob centred at pixel coordinates (cx, cy)."""
    j = torch.arange(size, dtype=torch.float64)
    img = torch.exp(-((j[None, :] - cx) ** 2 + (j[:, None] - cy) ** 2) / (2 * sigma**2))
    return img.expand(n, 1, size, size).contiguous()


def moments(img: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per image of ``[n, 1, H, W]``: centroid (x, y) and standard deviations (x, y) of the intensity."""
    h, w = img.shape[2:]
    m = img[:, 0].clamp(min=0)
    total = m.sum((1, 2))
    j = torch.arange(w, dtype=img.dtype)
    i = torch.arange(h, dtype=img.dtype)
    mx = (m.sum(1) * j).sum(1) / total
    my = (m.sum(2) * i).sum(1) / total
    sx = ((m.sum(1) * (j - mx[:, None]) ** 2).sum(1) / total).sqrt()
    sy = ((m.sum(2) * (i - my[:, None]) ** 2).sum(1) / total).sqrt()
    return mx, my, sx, sy


# -- identity, shapes, dtypes ----------------------------------------------------------------------------


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_p_zero_is_the_identity(preset):
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    assert torch.equal(augment(AugmentPipe(preset, p=0.0), x), x)


@pytest.mark.parametrize("preset", ["bgc", "bgcfnc", "bg"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_shapes_and_dtypes_are_preserved(preset, dtype):
    x = (torch.rand(4, 3, 24, 24) * 2 - 1).to(dtype)
    y = augment(AugmentPipe(preset, p=0.7), x)
    assert y.shape == x.shape and y.dtype == dtype and torch.isfinite(y.float()).all()
    assert not torch.equal(y, x)
    z = augment(DiffAugment(), x)
    assert z.shape == x.shape and z.dtype == dtype


def test_bf16_is_computed_in_fp32():
    x = (torch.rand(4, 3, 16, 16) * 2 - 1).bfloat16()
    pipe = AugmentPipe("bgcfnc", p=0.8)
    assert torch.equal(augment(pipe, x, seed=5), augment(pipe, x.float(), seed=5).bfloat16())


def test_unselected_images_stay_bit_identical():
    """Stages leave images none of whose transforms was drawn untouched (no filtering round trip)."""
    x = torch.rand(64, 3, 16, 16) * 2 - 1
    y = augment(AugmentPipe("bg", p=0.1), x)
    same = (y == x).flatten(1).all(1)
    assert 10 < int(same.sum()) < 64  # images that drew no transform at all


# -- resampling -------------------------------------------------------------------------------------------


def test_biorthogonal_filters_are_symmetric_and_reconstruct():
    up, down = biorthogonal_filters(4)
    assert len(up) == 7 and len(down) == 9
    np.testing.assert_allclose(up, up[::-1], atol=1e-15)
    np.testing.assert_allclose(down, down[::-1], atol=1e-15)
    assert up.sum() == pytest.approx(1) and down.sum() == pytest.approx(1)
    # round trip up (gain 2) then down is the identity <=> the even taps of 2 * up * down are a unit impulse
    prod = 2 * np.convolve(up, down)
    centre = len(prod) // 2
    np.testing.assert_allclose(prod[centre::2], [1, 0, 0, 0], atol=1e-12)
    # both filters have N/2 = 2 zeros at Nyquist: responses and their derivative vanish there
    for f in (up, down):
        alt = (-1.0) ** np.arange(len(f))
        n = np.arange(len(f)) - len(f) // 2
        assert abs((f * alt).sum()) < 1e-12 and abs((f * alt * n**2).sum()) < 1e-12


def _smooth_image(size: int) -> tuple[torch.Tensor, callable]:
    comps = [(1, 2, 0.3), (3, 1, 1.0), (2, 5, 2.0), (6, -4, 0.5)]

    def wave(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return sum(torch.cos(2 * math.pi * (a * x + b * y) / size + c) for a, b, c in comps)

    j = torch.arange(size, dtype=torch.float64)
    return wave(j[None, :], j[:, None])[None, None], wave


@pytest.mark.parametrize(
    "name,G,tol",
    [
        ("identity", torch.eye(3, dtype=torch.float64)[None], 1e-5),
        ("rotate 90", rotate2d(torch.tensor([math.pi / 2], dtype=torch.float64)), 1e-5),
        ("rotate 30", rotate2d(torch.tensor([math.pi / 6], dtype=torch.float64)), 0.15),
        ("translate", translate2d(torch.tensor([-2.5]).double(), torch.tensor([0.7]).double()), 0.15),
        ("scale", scale2d(torch.tensor([0.8]).double(), torch.tensor([1.25]).double()), 0.15),
    ],
)
def test_resample_matches_the_warped_continuous_image(name, G, tol):
    """A band-limited image (amplitude up to 4) warped by G against the analytic warp; exact (float32
    filter rounding) for the identity and a 90-degree rotation, bilinear-at-2x accurate otherwise."""
    size = 32
    img, wave = _smooth_image(size)
    c = (size - 1) / 2
    j = torch.arange(size, dtype=torch.float64)
    u = torch.stack(torch.broadcast_tensors(j[None, :] - c, j[:, None] - c, torch.ones(1, 1)), -1) @ G[0].T
    pipe = AugmentPipe()
    out = resample(img, G, pipe.filter_up, pipe.filter_down)[0, 0]
    ref = wave(u[..., 0] + c, u[..., 1] + c)
    err = (out - ref)[6:-6, 6:-6].abs().max()  # the interior: borders see reflection padding
    assert err < tol, (name, float(err))


def test_resample_rotation_by_90_degrees_is_exact_on_any_image():
    x = torch.randn(2, 3, 17, 17)
    pipe = AugmentPipe()
    G = rotate2d(torch.full([2], math.pi / 2, dtype=torch.float64))
    torch.testing.assert_close(resample(x, G, pipe.filter_up, pipe.filter_down), torch.rot90(x, 1, (2, 3)))


def test_mirror_pad_matches_reflect_padding_and_extends_it():
    x = torch.randn(1, 2, 5, 6)
    torch.testing.assert_close(mirror_pad(x, (3, 2, 4, 1)), F.pad(x, [3, 2, 4, 1], mode="reflect"))
    big = mirror_pad(x, (13, 10, 0, 0))  # beyond one reflection: the mirror pattern continues (period 10)
    torch.testing.assert_close(big[..., 13:19], x)
    torch.testing.assert_close(big[..., 3:13], big[..., 13:23])


def test_bilinear_sample_matches_torch_and_has_second_derivatives():
    torch.manual_seed(0)
    x = torch.randn(2, 2, 6, 5, dtype=torch.float64, requires_grad=True)
    grid = torch.rand(2, 4, 7, 2, dtype=torch.float64) * 2.4 - 1.2  # some points outside (border)

    def native(x: torch.Tensor) -> torch.Tensor:
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    torch.testing.assert_close(bilinear_sample(x, grid), native(x))
    assert torch.autograd.gradcheck(lambda x: bilinear_sample(x, grid), (x,))
    assert torch.autograd.gradgradcheck(lambda x: bilinear_sample(x, grid), (x,))
    weights = torch.randn(2, 2, 4, 7, dtype=torch.float64)
    (g1,) = torch.autograd.grad((bilinear_sample(x, grid) ** 2 * weights).sum(), x, create_graph=True)
    (h1,) = torch.autograd.grad(g1.square().sum(), x)
    try:  # PyTorch versions with grid_sampler_2d's own double backward serve as the oracle
        (g2,) = torch.autograd.grad((native(x) ** 2 * weights).sum(), x, create_graph=True)
        (h2,) = torch.autograd.grad(g2.square().sum(), x)
    except RuntimeError:
        pytest.skip("this PyTorch has no double backward for grid_sampler_2d to compare with")
    torch.testing.assert_close(g1, g2)
    torch.testing.assert_close(h1, h2)


# -- derivatives -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["blit", "geom", "color", "filter", "noise", "cutout", "bgcfnc"])
def test_gradcheck_and_gradgradcheck(preset):
    pipe = AugmentPipe(preset, p=0.9)
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    assert not torch.equal(augment(pipe, x.detach(), seed=3), x)  # transforms were drawn

    def f(x: torch.Tensor) -> torch.Tensor:
        return augment(pipe, x, seed=3)

    assert torch.autograd.gradcheck(f, (x,), fast_mode=True)
    assert torch.autograd.gradgradcheck(f, (x,), fast_mode=True)


def test_diffaugment_gradcheck_and_gradgradcheck():
    pipe = DiffAugment("color,translation,cutout")
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: augment(pipe, x, seed=1), (x,), fast_mode=True)
    assert torch.autograd.gradgradcheck(lambda x: augment(pipe, x, seed=1), (x,), fast_mode=True)


def test_resample_gradgradcheck_for_a_general_warp():
    pipe = AugmentPipe()
    G = rotate2d(torch.tensor([0.4, -2.0], dtype=torch.float64)) @ scale2d(
        torch.tensor([0.7, 1.3]).double(), torch.tensor([1.1, 0.9]).double()
    )
    x = torch.rand(2, 1, 7, 7, dtype=torch.float64, requires_grad=True)
    f_up, f_down = pipe.filter_up.double(), pipe.filter_down.double()
    assert torch.autograd.gradgradcheck(lambda x: resample(x, G, f_up, f_down), (x,))


# -- each transform does what it says ------------------------------------------------------------------------


def test_xflip_mirrors_half_the_images():
    x = torch.rand(1, 3, 8, 8).expand(400, -1, -1, -1)
    y = augment(AugmentPipe("xflip", p=P_MAX), x)
    flipped = (y == x.flip(3)).flatten(1).all(1)
    same = (y == x).flatten(1).all(1)
    assert bool((flipped | same).all())
    assert 160 < int(flipped.sum()) < 240  # i ~ U{0, 1}


def test_rotate90_moves_a_mark_to_one_of_the_four_rotations():
    x = torch.zeros(1, 1, 8, 8)
    x[0, 0, 1, 2] = 1  # a mark off every symmetry axis
    y = augment(AugmentPipe("rotate90", p=P_MAX), x.expand(400, -1, -1, -1))
    which = torch.stack([(y == torch.rot90(x, k, (2, 3))).flatten(1).all(1) for k in range(4)], 1)
    assert bool((which.sum(1) == 1).all())  # each output is exactly one rotation of the input
    assert all(60 < int(c) < 140 for c in which.sum(0))  # k ~ U{0..3}


def test_integer_translation_shifts_with_reflection_by_at_most_an_eighth():
    size = 16
    x = torch.arange(size * size, dtype=torch.float32).reshape(1, 1, size, size)
    y = augment(AugmentPipe("xint", p=P_MAX), x.expand(200, -1, -1, -1))
    padded = mirror_pad(x, (2 * size, 2 * size, 2 * size, 2 * size))[0, 0]
    seen = set()
    for img in y:
        found = None
        for dx in range(-2, 3):  # round(0.125 * 16) = 2
            for dy in range(-2, 3):
                ref = padded[2 * size - dy : 3 * size - dy, 2 * size - dx : 3 * size - dx]
                if torch.equal(img[0], ref):
                    found = (dx, dy)
        assert found is not None
        seen.add(found)
    assert {d[0] for d in seen} == set(range(-2, 3)) == {d[1] for d in seen}


@pytest.mark.parametrize("transform", ["scale", "aniso"])
def test_scaling_has_the_papers_lognormal_strength(transform):
    """A centred blob of width s0 comes out with widths (s s0, s s0) (isotropic) or (s s0, s0 / s)
    (anisotropic), with log s ~ N(0, (0.2 ln 2)^2)."""
    x = blob(48, 23.5, 23.5, 3.0, n=300)
    _, _, sx, sy = moments(augment(AugmentPipe(transform, p=P_MAX), x))
    log_sx, log_sy = (sx / 3.0).log(), (sy / 3.0).log()
    assert float(log_sx.std()) == pytest.approx(SCALE_STD, rel=0.15)
    assert abs(float(log_sx.mean())) < 0.03
    if transform == "scale":
        torch.testing.assert_close(log_sx, log_sy, atol=0.05, rtol=0)
    else:
        torch.testing.assert_close(log_sx, -log_sy, atol=0.05, rtol=0)


def test_rotation_keeps_the_distance_from_the_centre_and_spreads_the_angle_uniformly():
    x = blob(33, 16 + 8, 16, 1.5, n=300)
    y = augment(AugmentPipe("rotate", p=P_MAX), x)
    j = torch.arange(33, dtype=torch.float64) - 16
    disc = (j[None, :] ** 2 + j[:, None] ** 2 < 13**2).to(y.dtype)  # the corners may show mirror images
    mx, my, _, _ = moments(y * disc)
    dx, dy = mx - 16, my - 16
    torch.testing.assert_close(torch.hypot(dx, dy), torch.full_like(dx, 8.0), atol=0.1, rtol=0)
    angle = torch.atan2(dy, dx)
    assert abs(float(angle.cos().mean())) < 0.15 and abs(float(angle.sin().mean())) < 0.15
    # uniform angle: the four quadrants are about equally full
    counts = torch.histc(angle, bins=4, min=-math.pi, max=math.pi)
    assert float(counts.min()) > 50


def test_fractional_translation_moves_by_normal_eighths_of_the_size():
    size = 64
    x = blob(size, 31.5, 31.5, 2.0, n=300)
    mx, my, _, _ = moments(augment(AugmentPipe("xfrac", p=P_MAX), x))
    for d in (mx - 31.5, my - 31.5):
        assert float(d.std()) == pytest.approx(XFRAC_STD * size, rel=0.15)
        assert abs(float(d.mean())) < 1.5
    assert float((mx - mx.round()).abs().max()) > 0.2  # really fractional


def _constant_colour(rgb: tuple[float, float, float], n: int) -> torch.Tensor:
    return torch.tensor(rgb, dtype=torch.float32)[None, :, None, None].expand(n, 3, 2, 2).contiguous()


def _luma_chroma(img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image (of constant colour): the component along (1,1,1)/sqrt 3 and the orthogonal remainder."""
    rgb = img[:, :, 0, 0].double()
    v = torch.full((3,), 1 / math.sqrt(3), dtype=torch.float64)
    luma = rgb @ v
    return luma, rgb - luma[:, None] * v


def test_brightness_and_contrast_strengths():
    x = _constant_colour((0.2, -0.1, 0.4), 2000)
    b = (augment(AugmentPipe("brightness", p=P_MAX), x) - x)[:, :, 0, 0]
    assert torch.allclose(b[:, 0], b[:, 1], atol=1e-6) and torch.allclose(b[:, 0], b[:, 2], atol=1e-6)
    assert float(b[:, 0].std()) == pytest.approx(BRIGHTNESS_STD, rel=0.1)
    c = (augment(AugmentPipe("contrast", p=P_MAX), x) / x)[:, :, 0, 0]
    assert torch.allclose(c[:, 0], c[:, 2], rtol=1e-5)
    assert float(c[:, 0].log().std()) == pytest.approx(CONTRAST_STD, rel=0.1)


def test_luma_flip_hue_and_saturation_act_on_the_luma_axis():
    x = _constant_colour((0.5, -0.2, 0.1), 2000)
    luma, chroma = _luma_chroma(x)
    # luma flip: luma -> -luma in about half the images, chroma unchanged
    l1, c1 = _luma_chroma(augment(AugmentPipe("lumaflip", p=P_MAX), x))
    torch.testing.assert_close(c1, chroma, atol=1e-6, rtol=0)
    flipped = (l1 + luma).abs() < 1e-5
    assert bool((flipped | ((l1 - luma).abs() < 1e-5)).all()) and 850 < int(flipped.sum()) < 1150
    # hue: luma and chroma length kept, chroma direction uniform around the luma axis
    l2, c2 = _luma_chroma(augment(AugmentPipe("hue", p=P_MAX), x))
    torch.testing.assert_close(l2, luma, atol=1e-6, rtol=0)
    torch.testing.assert_close(c2.norm(dim=1), chroma.norm(dim=1), atol=1e-6, rtol=0)
    assert float(c2.mean(0).norm()) < 0.1 * float(chroma[0].norm())
    # saturation: luma kept, chroma scaled by s with log s ~ N(0, (ln 2)^2)
    l3, c3 = _luma_chroma(augment(AugmentPipe("saturation", p=P_MAX), x))
    torch.testing.assert_close(l3, luma, atol=1e-6, rtol=0)
    s = c3.norm(dim=1) / chroma.norm(dim=1)
    torch.testing.assert_close(c3, s[:, None] * chroma, atol=1e-6, rtol=1e-5)
    assert float(s.log().std()) == pytest.approx(SATURATION_STD, rel=0.1)


def test_band_filters_split_the_spectrum_into_four_octave_bands():
    bands = band_filters()
    delta = np.zeros(bands.shape[1])
    delta[bands.shape[1] // 2] = 1
    np.testing.assert_allclose(bands.sum(0), delta, atol=1e-12)
    n = np.arange(bands.shape[1]) - bands.shape[1] // 2
    centres = [math.pi / 16, 3 * math.pi / 16, 3 * math.pi / 8, 3 * math.pi / 4]
    response = np.array([[float((b * np.cos(w * n)).sum()) for w in centres] for b in bands])
    np.testing.assert_allclose(response, np.eye(4), atol=0.03)
    w = band_energy_weights(256)
    assert w.sum() == pytest.approx(1) and w[0] > w[1] == pytest.approx(w[2]) == pytest.approx(w[3])


def test_image_filter_amplifies_bands_with_the_papers_strength():
    """Constant + a sinusoid at 3/4 pi (the top band) along x: their output ratio is lambda_3 / lambda_0
    (the normalisation cancels), so log of the ratio ~ N(0, 2 (ln 2)^2)."""
    size = 32
    j = torch.arange(size, dtype=torch.float64)
    wave = torch.cos(0.75 * math.pi * j)
    x = (0.5 + 0.25 * wave)[None, None, None, :].expand(400, 1, size, size).contiguous()
    y = augment(AugmentPipe("imgfilter", p=P_MAX), x)[:, 0, size // 2, 8:-8]
    basis = torch.stack([torch.ones_like(wave), wave], 1)[8:-8]
    coef = torch.linalg.lstsq(basis, y.T).solution  # [2, N]: constant and wave amplitude
    ratio = (coef[1] / 0.25) / (coef[0] / 0.5)
    assert float(ratio.log().std()) == pytest.approx(math.sqrt(2) * LN2, rel=0.15)
    assert abs(float(ratio.log().mean())) < 0.15


def test_noise_has_half_normal_strength():
    x = torch.zeros(300, 3, 16, 16)
    sigma = augment(AugmentPipe("noise", p=P_MAX), x).flatten(1).std(1)
    assert float(sigma.mean()) == pytest.approx(NOISE_STD * math.sqrt(2 / math.pi), rel=0.1)


@pytest.mark.parametrize("pipe", [AugmentPipe("cutout", p=P_MAX), DiffAugment("cutout")])
def test_cutout_zeroes_one_square_of_half_the_size(pipe):
    size = 16
    x = torch.rand(200, 3, size, size) + 0.5  # no zeros of its own
    y = augment(pipe, x)
    zero = y[:, 0] == 0
    assert bool((zero == (y == 0).all(1)).all())  # all channels together
    full = 0
    for mask in zero:
        rows, cols = mask.any(1).nonzero(), mask.any(0).nonzero()
        assert rows.numel() and int(mask.sum()) == rows.numel() * cols.numel()  # one rectangle
        assert rows.numel() <= size // 2 and cols.numel() <= size // 2
        full += int(mask.sum()) == (size // 2) ** 2
    assert full > 40  # a square wholly inside the image is exactly half the size


def test_diffaugment_translation_shifts_by_an_eighth_with_zero_fill():
    size = 16
    x = torch.arange(1, size * size + 1, dtype=torch.float32).reshape(1, 1, size, size).expand(100, 1, -1, -1)
    y = augment(DiffAugment("translation"), x)
    shifts = set()
    for img in y:
        found = [
            (dx, dy)
            for dx in range(-2, 3)
            for dy in range(-2, 3)
            if torch.equal(img[0], _shift_zero_reference(x[0, 0], dx, dy))
        ]
        assert len(found) == 1
        shifts.add(found[0])
    assert len(shifts) > 10


def _shift_zero_reference(img: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    out = torch.zeros_like(img)
    h, w = img.shape
    out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = img[
        max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


def test_diffaugment_colour_ranges():
    gray = torch.full((500, 3, 4, 4), 0.1)
    b = augment(DiffAugment("color"), gray) - gray  # saturation and contrast leave a gray constant alone
    assert float(b.min()) >= -0.5 - 1e-6 and float(b.max()) <= 0.5 + 1e-6 and float(b.std()) > 0.2
    assert torch.allclose(b, b[:, :1, :1, :1].expand_as(b), atol=1e-6)


# -- not leaking -------------------------------------------------------------------------------------------


def test_geometric_augmentation_keeps_constant_images_and_stays_centred():
    """p = 0.6 (< 0.8): the mean of many augmented copies of a constant image is that image; a centred blob's
    mean image keeps its centroid and its peak at the centre (the transforms' distributions are centred)."""
    pipe = AugmentPipe("bg", p=0.6)
    const = torch.full((200, 3, 16, 16), 0.3)
    torch.testing.assert_close(augment(pipe, const).mean(0), const[0], atol=1e-5, rtol=0)
    x = blob(33, 16, 16, 2.0, n=600)
    mean = augment(pipe, x).mean(0, keepdim=True)
    mx, my, _, _ = moments(mean)
    assert abs(float(mx) - 16) < 0.3 and abs(float(my) - 16) < 0.3
    assert int(mean[0, 0].argmax()) == 16 * 33 + 16


def test_blit_outcomes_have_the_closed_form_probabilities():
    """x-flip and 90-degree rotation at p = 0.6: the untransformed image stays the most likely outcome
    (probability (1 - p/2)(1 - 3p/4)); every outcome's frequency matches its closed form."""
    p, n = 0.6, 4000
    x = torch.zeros(1, 1, 6, 6)
    x[0, 0, 0, 1] = 1
    y = augment(AugmentPipe("xflip,rotate90", p=p), x.expand(n, -1, -1, -1))
    expected = {}
    for flip in (0, 1):
        for k in range(4):
            ref = torch.rot90(x.flip(3) if flip else x, k, (2, 3))
            prob = (p / 2 if flip else 1 - p / 2) * (1 - 3 * p / 4 if k == 0 else p / 4)
            hits = int((y == ref).flatten(1).all(1).sum())
            expected[(flip, k)] = (hits / n, prob)
    assert sum(h for h, _ in expected.values()) == pytest.approx(1)
    for freq, prob in expected.values():
        assert freq == pytest.approx(prob, abs=4 * math.sqrt(prob * (1 - prob) / n))
    assert max(expected, key=lambda key: expected[key][0]) == (0, 0)


def test_colour_augmentation_is_invertible_in_expectation_below_p_one():
    """The mean colour of many augmented copies is E[C] x with the closed-form E[C] (independent
    transforms); E[C] is invertible for p < 1 (no leak), singular at p = 1 (luma flip and hue average
    luma and chroma away)."""
    x = _constant_colour((0.4, -0.3, 0.2), 40000)[:, :, :1, :1]
    mean = augment(AugmentPipe("color", p=0.6), x).mean(0)[:, 0, 0].double()
    expected = expected_color_matrix(3, 0.6) @ torch.tensor([0.4, -0.3, 0.2, 1.0], dtype=torch.float64)
    torch.testing.assert_close(mean, expected[:3], atol=0.015, rtol=0)
    for p in (0.0, 0.3, 0.6, 0.8, 0.99):
        assert float(torch.linalg.det(expected_color_matrix(3, p, COLOR))) > 1e-6
    assert abs(float(torch.linalg.det(expected_color_matrix(3, 1.0, COLOR)))) < 1e-12


# -- the p controller ---------------------------------------------------------------------------------------


def test_ada_rule_direction_step_and_clamp():
    step = 32 * 4 / (100 * 1000)
    assert ada_adjust(0.5, 0.7, 0.6, 32, 4, 100) == pytest.approx(0.5 + step)
    assert ada_adjust(0.5, 0.2, 0.6, 32, 4, 100) == pytest.approx(0.5 - step)
    assert ada_adjust(0.5, 0.6, 0.6, 32, 4, 100) == 0.5
    assert ada_adjust(0.5, float("nan"), 0.6, 32, 4, 100) == 0.5
    assert ada_adjust(0.0, -1.0, 0.6, 32, 4, 100) == 0.0
    assert ada_adjust(P_MAX - 1e-9, 1.0, 0.6, 32, 4, 100) == P_MAX < 1.0


def test_controller_measures_sign_of_real_logits_and_updates_every_interval():
    pipe = AugmentPipe("bgc", p=0.25)
    ada = AdaController(target=0.6, interval=4, ada_kimg=1.0)
    logits = [torch.tensor([1.0, 2.0, -1.0, 3.0]), torch.tensor([5.0, 1.0, 1.0, float("nan")])] * 2
    # sum of signs 2 + 3 + 2 + 3 = 10 over 16 logits: r_t = 0.625 > 0.6, so p grows by 4 * 4 / 1000
    for i, lg in enumerate(logits):
        ada.observe(lg)
        logs = ada.update(pipe, global_batch=4)
        if i < 3:
            assert pipe.p_value == pytest.approx(0.25) and "Progress/ada_rt" not in logs
    assert logs["Progress/ada_rt"] == pytest.approx(0.625)
    assert pipe.p_value == pytest.approx(0.25 + 0.016) == logs["Progress/augment_p"]
    assert float(ada.sign_stat.abs().sum()) == 0  # restarted
    for _ in range(4):  # all negative: r_t = -1, p falls by the same step
        ada.observe(-torch.ones(4))
        ada.update(pipe, global_batch=4)
    assert pipe.p_value == pytest.approx(0.25)


def test_controller_uses_the_statistic_of_all_ranks():
    """Under DDP the (sum, count) pair is averaged over ranks, so r_t is the global mean on every rank."""
    other_rank = torch.tensor([-8.0, 8.0])  # that rank saw 8 negative logits

    def reduce(stat: torch.Tensor) -> torch.Tensor:
        return (stat + other_rank) / 2

    pipe = AugmentPipe(p=0.5)
    ada = AdaController(target=0.6, interval=1, ada_kimg=1.0)
    ada.observe(torch.ones(8))  # locally r_t = 1 > target, globally 0 < target
    logs = ada.update(pipe, global_batch=16, reduce=reduce)
    assert logs["Progress/ada_rt"] == pytest.approx(0.0)
    assert pipe.p_value == pytest.approx(0.5 - 16 / 1000)


def test_fixed_p_is_measured_but_not_moved():
    pipe, ada = build_augment(AugmentConfig(kind="fixed", p=0.2))
    ada.observe(torch.ones(8))
    for _ in range(4):
        logs = ada.update(pipe, global_batch=8)
    assert pipe.p_value == pytest.approx(0.2) and logs["Progress/ada_rt"] == 1.0


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(kind="adaptive"), "model.augment.kind must be one of"),
        (dict(kind="ada", preset="bgz"), "unknown augmentation preset"),
        (dict(kind="ada", p=1.0), "model.augment.p must be"),
        (dict(kind="ada", ada_target=1.5), "model.augment.ada_target must be"),
        (dict(kind="ada", ada_interval=0), "model.augment.ada_interval must be an integer >= 1"),
        (dict(kind="ada", ada_kimg=0), "model.augment.ada_kimg must be"),
        (dict(kind="diffaugment", diffaugment_policy="color,blur"), "DiffAugment policy"),
    ],
)
def test_bad_settings_are_user_errors(kwargs, message):
    with pytest.raises(UserError, match=message):
        build_augment(AugmentConfig(**kwargs))


def test_p_is_a_buffer_restored_by_load_state_dict():
    module = torch.nn.Module()
    module.pipe, module.ada = build_augment(AugmentConfig(kind="ada", p=0.1))
    module.pipe.set_p(0.123)
    state = copy.deepcopy(module.state_dict())
    assert "pipe.p" in state and "ada.sign_stat" in state
    module.pipe.set_p(0.9)
    module.load_state_dict(state)
    assert module.pipe.p_value == float(np.float32(0.123)) == float(module.pipe.p)


# -- the training module ------------------------------------------------------------------------------------


class _RecordAda(L.Callback):
    def __init__(self) -> None:
        self.history: list[tuple[float, float]] = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.history.append((float(module.ada.rt), module.augment_pipe.p_value))


def test_ada_fit_moves_p_by_the_rule(tmp_path, shapes, tiny32):
    record = _RecordAda()
    module, trainer = fit(
        tmp_path, shapes, network=tiny32, total_kimg=0.032, callbacks=[record],
        augment=dict(kind="ada", p=0.3, ada_interval=2, ada_kimg=0.1),
    )  # fmt: skip
    p = 0.3
    updates = 0
    for step, (rt, p_after) in enumerate(record.history, start=1):
        if step % 2 == 0:
            assert math.isfinite(rt)
            p = ada_adjust(p, rt, 0.6, 4, 2, 0.1)
            updates += p != 0.3
        assert p_after == pytest.approx(p, abs=1e-6)
    assert len(record.history) == 8 and updates > 0
    assert float(trainer.logged_metrics["Progress/augment_p"]) == pytest.approx(p, abs=1e-6)
    assert "Progress/ada_rt" in trainer.logged_metrics


def test_resume_keeps_p_and_is_exact(tmp_path, shapes, tiny32):
    """2 + 2 steps from a checkpoint == 4 steps straight with ADA adjusting p every 3 steps: the checkpoint
    falls mid-interval, so the controller's counters must be saved too."""
    settings = dict(network=tiny32, augment=dict(kind="ada", p=0.2, ada_interval=3, ada_kimg=0.05))
    snap = dict(snap_kimg=0, grid_seeds=4)
    full, _ = fit(tmp_path / "a", shapes, total_kimg=0.016, callbacks=[NetworkSnapshot(**snap)], **settings)
    fit(tmp_path / "b", shapes, total_kimg=0.008, callbacks=[NetworkSnapshot(**snap)], **settings)
    ckpt = tmp_path / "b" / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    assert int(saved["ada.d_steps"]) == 2 and "augment_pipe.p" in saved
    resumed, _ = fit(tmp_path / "c", shapes, ckpt=str(ckpt), total_kimg=0.016,
                     callbacks=[NetworkSnapshot(**snap)], **settings)  # fmt: skip
    assert full.augment_pipe.p_value != 0.2  # p moved at step 3
    assert resumed.augment_pipe.p_value == full.augment_pipe.p_value
    snapshot = sorted((tmp_path / "c").rglob("network-snapshot-*.safetensors"))[-1]
    meta = load_network(str(snapshot))["meta"]
    assert meta.get("meta", meta)["augment_p"] == resumed.augment_pipe.p_value  # recorded in snapshots
    a, b = full.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]) or (a[key].isnan().all() and b[key].isnan().all()), key


def test_augment_none_leaves_training_unchanged(tmp_path, shapes, tiny32):
    """augment none adds nothing to the module; the ADA pipe at p = 0 is an exact no-op in training (same
    weights bit for bit, so it draws no random numbers either)."""
    plain, _ = fit(tmp_path / "a", shapes, network=tiny32, total_kimg=0.016)
    assert plain.augment_pipe is None and plain.ada is None
    assert not any(k.startswith(("augment_pipe", "ada")) for k in plain.state_dict())
    fixed0, _ = fit(
        tmp_path / "b", shapes, network=tiny32, total_kimg=0.016, augment=dict(kind="fixed", p=0.0)
    )
    for key, value in plain.state_dict().items():
        assert torch.equal(value, fixed0.state_dict()[key]), key


@pytest.mark.parametrize(
    "settings",
    [dict(kind="fixed", p=0.9, preset="bgcfnc"), dict(kind="diffaugment")],
    ids=["ada-bgcfnc", "diffaugment"],
)
def test_r1_through_augmentation_in_training(tmp_path, shapes, tiny32, settings):
    module, trainer = fit(
        tmp_path,
        shapes,
        network=tiny32,
        total_kimg=0.008,
        reg=dict(r1_interval=1, pl_interval=2),
        augment=settings,
    )
    assert module.phase_counts["Dreg"] == 2 and int(module.bad_phases) == 0
    assert all(math.isfinite(float(v)) for v in trainer.logged_metrics.values())


@pytest.mark.slow
def test_two_process_ddp_keeps_p_identical_on_every_rank(tmp_path, shapes, tiny32):
    """Each rank sees different reals, so only the all-reduced statistic keeps p (a buffer, part of the
    checksummed state) the same everywhere; p must still move."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [
        sys.executable, "-m", "rootedgan.cli", "finetune", "--config", SMOKE,
        "--network", tiny32, "--data.path", str(shapes), "--data.batch_size", "4",
        "--trainer.devices", "2", "--trainer.default_root_dir", str(tmp_path),
        "--trainer.enable_progress_bar", "false", "--model.augment.kind", "ada", "--model.augment.p", "0.3",
        "--model.augment.ada_interval", "1", "--model.augment.ada_kimg", "0.1",
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = next(tmp_path.glob("lightning_logs/version_*"))
    record = json.loads((run / "ddp_consistency.json").read_text())
    assert record["world_size"] == 2 and record["checksums"][0] == record["checksums"][1]
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    p = [float(r["Progress/augment_p"]) for r in rows if r.get("Progress/augment_p")]
    assert p and p[-1] != pytest.approx(0.3)


def test_r1_gradient_flows_through_the_augmentation():
    """The R1 penalty's gradient w.r.t. D's weights (a double backward through the pipe) matches finite
    differences of the penalty in one weight."""
    torch.manual_seed(0)
    D = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.Softplus(), torch.nn.Flatten(), torch.nn.LazyLinear(1)
    )
    D = D.double()
    real = torch.rand(2, 3, 12, 12, dtype=torch.float64)
    D(real)  # materialise the lazy layer
    pipe = AugmentPipe("bgc", p=0.9)

    def penalty() -> torch.Tensor:
        x = real.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(D(augment(pipe, x, seed=7)).sum(), x, create_graph=True)
        return g.square().sum()

    weight = D[0].weight
    (analytic,) = torch.autograd.grad(penalty(), weight)
    eps = 1e-6
    with torch.no_grad():
        weight[0, 0, 1, 1] += eps
    up = penalty().item()
    with torch.no_grad():
        weight[0, 0, 1, 1] -= 2 * eps
    down = penalty().item()
    assert float(analytic[0, 0, 1, 1]) == pytest.approx((up - down) / (2 * eps), rel=1e-5)


# -- GPU ----------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("preset", ["bgc", "bgcf"])
def test_cuda_matches_cpu_for_the_same_seed(preset):
    """Per-image parameters come from the CPU generator: the same seed gives the same augmentation."""
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    pipe = AugmentPipe(preset, p=0.8)
    cpu = augment(pipe, x, seed=11)
    gpu = augment(pipe.cuda(), x.cuda(), seed=11)
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=0)


@pytest.mark.gpu
def test_cuda_gradgradcheck():
    pipe = AugmentPipe("bgc", p=0.9).cuda()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64, device="cuda", requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda x: augment(pipe, x, seed=2), (x,), fast_mode=True)
