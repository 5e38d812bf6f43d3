"""The reference stylegan_ops against independent oracles (scipy, numpy closed forms) and gradcheck."""

from __future__ import annotations

import importlib
import itertools
import math

import numpy as np
import pytest
import scipy.signal
import torch

import stylegan_ops as so
from stylegan_ops.upfirdn2d import output_size

# ---------------------------------------------------------------------------------------------
# upfirdn2d: oracle built from scipy.signal (zero insertion + full convolution), then the window.


def _window(full: np.ndarray, axis: int, taps: int, pad0: int, out_len: int) -> np.ndarray:
    """Our output sample t (before downsampling) is full-convolution sample ``t + taps - 1 - pad0``."""
    idx = np.arange(out_len) + taps - 1 - pad0
    valid = (idx >= 0) & (idx < full.shape[axis])
    taken = np.take(full, np.clip(idx, 0, full.shape[axis] - 1), axis=axis)
    shape = [1] * full.ndim
    shape[axis] = out_len
    return taken * valid.reshape(shape)


def _oracle_1d(
    x: np.ndarray, k: np.ndarray, up: int, down: int, pad0: int, pad1: int, axis: int
) -> np.ndarray:
    full = np.apply_along_axis(lambda v: scipy.signal.upfirdn(k, v, up=up, down=1), axis, x)
    n_up = x.shape[axis] * up + pad0 + pad1 - len(k) + 1
    y = _window(full, axis, len(k), pad0, n_up)
    return np.take(y, np.arange(0, n_up, down), axis=axis)


def upfirdn2d_oracle(x, f, up, down, pad, flip, gain):
    """x: [N, C, H, W] float64 numpy; f: 1-D (separable) or 2-D numpy filter."""
    (upx, upy), (downx, downy), (px0, px1, py0, py1) = up, down, pad
    if f.ndim == 1:
        k = f[::-1] if flip else f
        k = k * math.sqrt(gain)
        y = _oracle_1d(x, k, upx, downx, px0, px1, axis=3)
        return _oracle_1d(y, k, upy, downy, py0, py1, axis=2)
    k = (f[::-1, ::-1] if flip else f) * gain
    n, c, h, w = x.shape
    xu = np.zeros([n, c, h * upy, w * upx])
    xu[:, :, ::upy, ::upx] = x
    full = np.zeros([n, c, h * upy + k.shape[0] - 1, w * upx + k.shape[1] - 1])
    for i, j in itertools.product(range(n), range(c)):
        full[i, j] = scipy.signal.convolve2d(xu[i, j], k, mode="full")
    # Trim the trailing inserted zeros' contribution consistently: xu already holds them as zeros.
    out_h = h * upy + py0 + py1 - k.shape[0] + 1
    out_w = w * upx + px0 + px1 - k.shape[1] + 1
    y = _window(full, 2, k.shape[0], py0, out_h)
    y = _window(y, 3, k.shape[1], px0, out_w)
    return y[:, :, ::downy, ::downx]


CASES = [
    # (up, down, padding, flip, gain, filter kind, input H, W)
    ((1, 1), (1, 1), (0, 0, 0, 0), False, 1.0, "2d", 7, 9),
    ((2, 2), (1, 1), (2, 1, 2, 1), False, 4.0, "2d", 5, 6),
    ((1, 1), (2, 2), (1, 1, 1, 1), False, 1.0, "2d", 8, 8),
    ((2, 1), (1, 2), (1, 2, 0, 3), True, 2.5, "2d", 6, 5),
    ((3, 3), (2, 2), (-1, 2, 1, -2), False, 1.0, "2d", 5, 7),
    ((1, 1), (1, 1), (-2, -1, -1, -3), True, 1.0, "2d", 9, 10),
    ((2, 2), (1, 1), (4, 3, 4, 3), False, 4.0, "sep", 5, 4),
    ((1, 1), (2, 2), (3, 3, 3, 3), True, 1.0, "sep", 9, 11),
    ((1, 2), (3, 1), (3, -1, 2, 0), False, 0.5, "sep", 7, 8),
    ((4, 4), (1, 1), (-3, 0, 1, 1), False, 16.0, "sep", 3, 3),
    # equal padding on both sides of each axis (conv2d pads) with a different amount and stride per axis
    ((1, 1), (1, 2), (2, 2, 1, 1), False, 1.0, "2d", 7, 8),
    ((1, 1), (2, 1), (1, 1, 2, 2), True, 2.0, "sep", 6, 9),
]


@pytest.mark.parametrize("up,down,pad,flip,gain,kind,h,w", CASES)
def test_upfirdn2d_matches_scipy_oracle(up, down, pad, flip, gain, kind, h, w):
    rng = np.random.default_rng(0)
    x = rng.standard_normal([2, 3, h, w])
    f = rng.standard_normal([8]) if kind == "sep" else rng.standard_normal([4, 3])
    expected = upfirdn2d_oracle(x, f, up, down, pad, flip, gain)
    got = so.upfirdn2d(
        torch.tensor(x),
        torch.tensor(f),
        up=up,
        down=down,
        padding=pad,
        flip_filter=flip,
        gain=gain,
        impl="ref",
    )
    assert got.shape == expected.shape
    assert got.shape[2] == output_size(h, up[1], down[1], pad[2], pad[3], f.shape[0])
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10, atol=1e-10)


def test_upfirdn2d_identity_and_padding_forms():
    x = torch.randn(1, 2, 5, 6, dtype=torch.float64)
    assert torch.equal(so.upfirdn2d(x, None), x)
    f = so.setup_filter([1, 2, 1])
    a = so.upfirdn2d(x, f, padding=1)
    b = so.upfirdn2d(x, f, padding=(1, 1))
    c = so.upfirdn2d(x, f, padding=(1, 1, 1, 1))
    assert torch.equal(a, b) and torch.equal(b, c)
    with pytest.raises(ValueError, match="padding"):
        so.upfirdn2d(x, f, padding=(1, 2, 3))
    with pytest.raises(ValueError, match="no output"):
        so.upfirdn2d(x, f, padding=-4)


def test_setup_filter_rules():
    f = so.setup_filter([1, 3, 3, 1])
    assert f.shape == (4, 4) and math.isclose(float(f.sum()), 1.0, rel_tol=1e-6)
    np.testing.assert_allclose(f.numpy(), np.outer([1, 3, 3, 1], [1, 3, 3, 1]) / 64, rtol=1e-6)
    long = so.setup_filter(np.ones(8))
    assert long.shape == (8,)  # 8 or more taps stay separable
    g = so.setup_filter([1, 3, 3, 1], gain=4)
    assert math.isclose(float(g.sum()), 4.0, rel_tol=1e-6)
    assert math.isclose(float(so.setup_filter(np.ones(8), gain=4).sum()) ** 2, 4.0, rel_tol=1e-6)


@pytest.mark.parametrize("res", [4, 8, 13])
def test_resample_helpers_shapes_and_dc_gain(res):
    """Up/downsampling a constant image keeps the constant away from the borders."""
    f = so.setup_filter([1, 3, 3, 1])
    x = torch.ones(1, 1, res, res, dtype=torch.float64)
    up = so.upsample2d(x, f)
    down = so.downsample2d(torch.ones(1, 1, 2 * res, 2 * res, dtype=torch.float64), f)
    assert up.shape[-1] == 2 * res and down.shape[-1] == res
    np.testing.assert_allclose(up[..., 2:-2, 2:-2].numpy(), 1.0, rtol=1e-12)
    np.testing.assert_allclose(down[..., 1:-1, 1:-1].numpy(), 1.0, rtol=1e-12)
    assert so.filter2d(x, f).shape == x.shape


@pytest.mark.parametrize("kind", ["2d", "sep"])
@pytest.mark.parametrize("up,down,pad", [(1, 1, 1), (2, 1, (2, 1, 2, 1)), (1, 2, (1, 1, -1, 2))])
def test_upfirdn2d_gradcheck_and_gradgradcheck(kind, up, down, pad):
    torch.manual_seed(0)
    x = torch.randn(1, 2, 9, 10, dtype=torch.float64, requires_grad=True)
    f = torch.randn(8 if kind == "sep" else 9, dtype=torch.float64)
    f = f if kind == "sep" else f.reshape(3, 3)

    def fn(v):
        return so.upfirdn2d(v, f, up=up, down=down, padding=pad, gain=1.5, impl="ref")

    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


# ---------------------------------------------------------------------------------------------
# bias_act: plain numpy expressions as the oracle.

SQRT2 = math.sqrt(2)


def _np_act(name: str, v: np.ndarray, alpha: float) -> np.ndarray:
    sig = 1 / (1 + np.exp(-v))
    selu_a, selu_l = 1.6732632423543772, 1.0507009873554805
    return {
        "linear": v,
        "relu": np.maximum(v, 0),
        "lrelu": np.where(v > 0, v, v * alpha),
        "tanh": np.tanh(v),
        "sigmoid": sig,
        "elu": np.where(v > 0, v, np.expm1(v)),
        "selu": selu_l * np.where(v > 0, v, selu_a * np.expm1(v)),
        "softplus": np.log1p(np.exp(v)),
        "swish": v * sig,
    }[name]


DEFAULT_GAIN = {"relu": SQRT2, "lrelu": SQRT2, "swish": SQRT2}


@pytest.mark.parametrize("act", list(so.ACTIVATIONS))
@pytest.mark.parametrize("dim", [0, 1, 3])
@pytest.mark.parametrize("clamp", [None, 0.7])
def test_bias_act_matches_numpy(act, dim, clamp):
    rng = np.random.default_rng(1)
    x = rng.standard_normal([3, 4, 5, 6]) * 2
    b = rng.standard_normal([x.shape[dim]])
    shape = [1, 1, 1, 1]
    shape[dim] = -1
    alpha = 0.2
    expected = _np_act(act, x + b.reshape(shape), alpha) * DEFAULT_GAIN.get(act, 1.0)
    if clamp is not None:
        expected = np.clip(expected, -clamp, clamp)
    got = so.bias_act(torch.tensor(x), torch.tensor(b), dim=dim, act=act, clamp=clamp, impl="ref")
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, atol=1e-12)


def test_bias_act_explicit_alpha_gain_and_no_bias():
    x = torch.linspace(-3, 3, 13, dtype=torch.float64).reshape(1, 13)
    got = so.bias_act(x, act="lrelu", alpha=0.1, gain=3.0)
    expected = torch.where(x > 0, x, 0.1 * x) * 3.0
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(act="gelu"), "unknown activation"),
        (dict(act="relu", alpha=0.1), "alpha"),
        (dict(b=torch.zeros(5)), "bias has 5 entries"),
        (dict(b=torch.zeros(2, 2)), "1-D"),
        (dict(impl="fast"), "expected one of"),
    ],
)
def test_bias_act_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        so.bias_act(torch.zeros(2, 3, 4), **kwargs)


def test_impl_env_var_is_validated(monkeypatch):
    monkeypatch.setenv("STYLEGAN_OPS_IMPL", "turbo")
    with pytest.raises(ValueError, match="STYLEGAN_OPS_IMPL"):
        so.bias_act(torch.zeros(2, 3))


@pytest.mark.parametrize("act", list(so.ACTIVATIONS))
def test_bias_act_gradcheck_and_gradgradcheck(act):
    torch.manual_seed(0)
    x = (torch.randn(2, 3, 4, dtype=torch.float64) * 2).requires_grad_()
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)

    def fn(xx, bb):
        return so.bias_act(xx, bb, act=act, clamp=2.5, impl="ref")

    assert torch.autograd.gradcheck(fn, (x, b))
    assert torch.autograd.gradgradcheck(fn, (x, b))


@pytest.mark.parametrize("taps", [3, 4, 5, 6])
@pytest.mark.parametrize("factor", [2, 3])
def test_resample_helpers_follow_the_spec_padding_rule(taps, factor):
    """upsample2d / downsample2d == upfirdn2d with the spec's padding, for odd and even filters."""
    torch.manual_seed(0)
    x = torch.randn(1, 2, 7, 9, dtype=torch.float64)
    f = so.setup_filter(torch.rand(taps) + 0.1).double()
    up_pad = [(taps + factor - 1) // 2, (taps - factor) // 2] * 2
    expected_up = so.upfirdn2d(
        x, f, up=factor, padding=[up_pad[0], up_pad[1], up_pad[0], up_pad[1]], gain=factor**2
    )
    torch.testing.assert_close(so.upsample2d(x, f, up=factor), expected_up)
    down_pad = [(taps - factor + 1) // 2, (taps - factor) // 2]
    expected_down = so.upfirdn2d(x, f, down=factor, padding=[*down_pad, *down_pad])
    torch.testing.assert_close(so.downsample2d(x, f, down=factor), expected_down)


def test_filter_impl_hook_applies_to_plain_filtering_only(monkeypatch):
    """The benchmark hook ``_FILTER_IMPL`` picks the implementation of up = down = 1 calls alone
    (bench/train.py's ref_filter lever); resampling calls keep STYLEGAN_OPS_IMPL's choice."""
    mod = importlib.import_module("stylegan_ops.upfirdn2d")  # the package exports a function of that name

    seen = []

    def spy(op, impl, x):
        seen.append(impl)
        return "ref"

    monkeypatch.setattr(mod, "resolve_impl", spy)
    monkeypatch.setattr(mod, "_FILTER_IMPL", "ref")
    x, f = torch.randn(1, 2, 8, 8), so.setup_filter([1, 3, 3, 1])
    so.filter2d(x, f)
    so.upsample2d(x, f)
    so.downsample2d(x, f)
    so.filter2d(x, f, impl="cuda")  # an explicit impl wins
    assert seen == ["ref", None, None, "cuda"]
    monkeypatch.setattr(mod, "_FILTER_IMPL", None)
    so.filter2d(x, f)
    assert seen[-1] is None
