"""The CPU fast paths against the reference: bias_act as one autograd node, and the structure of the
reference upfirdn2d and of the non-fused modulated convolution (what they no longer compute)."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import stylegan_ops as so
from rootedgan.networks.layers import modulated_conv2d
from stylegan_ops._bias_act_fused import FUSED_ACTIVATIONS

FUSED_NODE = "_BiasActBackward"


def _derivatives(impl: str, x0, b0, dy0, **kw) -> tuple[torch.Tensor, ...]:
    """Output, first derivatives (x, b), a second derivative and a third one (with respect to dy)."""
    x, b, dy = (t.clone().requires_grad_() for t in (x0, b0, dy0))
    y = so.bias_act(x, b, impl=impl, **kw)
    gx, gb = torch.autograd.grad(y, (x, b), dy, create_graph=True)
    (g2,) = torch.autograd.grad(gx.square().sum() + gb.square().sum(), (dy,), create_graph=True)
    weights = torch.linspace(-1, 2, g2.numel(), dtype=g2.dtype).reshape(g2.shape)
    (g3,) = torch.autograd.grad((g2 * weights).sum(), (dy,))
    return y, gx, gb, g2, g3


@pytest.mark.parametrize(
    "act,clamp,gain,dim,scale",
    [
        (act, clamp, gain, dim, scale)
        for act, clamp, gain, (dim, scale) in itertools.product(
            FUSED_ACTIVATIONS, [None, 0.5, 256.0], [None, 0.7], [(1, 2.0), (0, 0.1), (3, 2.0)]
        )
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_bias_act_equals_the_reference_bit_for_bit(act, clamp, gain, dim, scale, dtype):
    """Values and derivatives up to third order, rounding included (scale 0.1 keeps every value inside
    the clamp, so the clamp is skipped; scale 2 with clamp 0.5 clamps many)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 5, 6, generator=gen, dtype=dtype) * scale
    b = torch.randn(x.shape[dim], generator=gen, dtype=dtype) * scale
    dy = torch.randn(x.shape, generator=gen, dtype=dtype)
    kw = dict(dim=dim, act=act, gain=gain, clamp=clamp)
    fused = _derivatives("auto", x, b, dy, **kw)
    ref = _derivatives("ref", x, b, dy, **kw)
    assert type(fused[0].grad_fn).__name__ == FUSED_NODE
    assert type(ref[0].grad_fn).__name__ != FUSED_NODE
    for name, a, r in zip(("y", "dx", "db", "d2", "d3"), fused, ref, strict=True):
        assert torch.equal(a, r), f"{name} differs by up to {(a - r).abs().max().item():.3g}"


@pytest.mark.parametrize("act", FUSED_ACTIVATIONS)
def test_fused_bias_act_gradcheck_and_gradgradcheck(act):
    torch.manual_seed(0)
    x = (torch.randn(2, 3, 4, dtype=torch.float64) * 2).requires_grad_()
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)

    def fn(xx, bb):
        return so.bias_act(xx, bb, act=act, clamp=2.5)

    assert type(fn(x, b).grad_fn).__name__ == FUSED_NODE
    assert torch.autograd.gradcheck(fn, (x, b))
    assert torch.autograd.gradgradcheck(fn, (x, b))


def test_fused_bias_act_keeps_only_its_output():
    """The reference keeps two full-size tensors per call for the backward pass (lrelu's input and the
    clamp's input); the fused node keeps one, the output (which the next layer keeps anyway)."""
    x = torch.randn(2, 8, 6, 6, requires_grad=True)
    b = torch.randn(8, requires_grad=True)

    def saved_full_size(impl: str) -> int:
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t):
            so.bias_act(x, b, act="lrelu", clamp=256, impl=impl)
        return sum(shape == x.shape for shape in saved)

    assert saved_full_size("ref") == 2
    assert saved_full_size("auto") == 1


def test_fused_bias_act_boundary_convention():
    """Where the unclamped output is exactly +-clamp the reference passes the gradient and the fused path
    (deciding from the output, as NVIDIA's CUDA plugin does) does not; elsewhere they agree."""
    x = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    grads = {}
    for impl in ("auto", "ref"):
        y = so.bias_act(x, b, act="linear", clamp=2.0, impl=impl)
        (grads[impl],) = torch.autograd.grad(y.sum(), x)
    assert grads["ref"].tolist() == [[1.0, 1.0, 0.0]]
    assert grads["auto"].tolist() == [[1.0, 0.0, 0.0]]


def test_fused_bias_act_propagates_nan_like_the_reference():
    x = torch.tensor([[float("nan"), 1.0, -300.0]])
    b = torch.zeros(3)
    for clamp in (None, 256.0):
        fused = so.bias_act(x, b, act="lrelu", clamp=clamp)
        ref = so.bias_act(x, b, act="lrelu", clamp=clamp, impl="ref")
        torch.testing.assert_close(fused, ref, equal_nan=True)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(act="tanh"),  # not piecewise linear: its derivative needs the input
        dict(act="lrelu", alpha=-0.5),  # the sign of y would not be that of x + b
        dict(act="lrelu", gain=-1.0),
        dict(act="lrelu", clamp=0.0),
        dict(act="lrelu", impl="ref"),
    ],
)
def test_other_cases_take_the_reference(kwargs):
    x = torch.randn(2, 3, 4, requires_grad=True)
    y = so.bias_act(x, torch.randn(3), **kwargs)
    assert type(y.grad_fn).__name__ != FUSED_NODE
    y = so.bias_act(x, None, act="lrelu")  # no bias
    assert type(y.grad_fn).__name__ != FUSED_NODE
    y = so.bias_act(x, torch.randn(3, dtype=torch.float64), act="lrelu")  # bias of another dtype
    assert type(y.grad_fn).__name__ != FUSED_NODE


def test_env_var_ref_turns_the_fused_path_off(monkeypatch):
    monkeypatch.setenv("STYLEGAN_OPS_IMPL", "ref")
    y = so.bias_act(torch.randn(2, 3, requires_grad=True), torch.randn(3), act="lrelu")
    assert type(y.grad_fn).__name__ != FUSED_NODE


class _OpLog(TorchDispatchMode):
    """Records every aten op with the shapes and dtypes of the tensors it returns."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[tuple[str, list[tuple[int, ...]], list[torch.dtype]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        outs = [t for t in (out if isinstance(out, (tuple, list)) else [out]) if isinstance(t, torch.Tensor)]
        self.ops.append((str(func.overloadpacket), [tuple(t.shape) for t in outs], [t.dtype for t in outs]))
        return out


def _ops_of(fn) -> list[tuple[str, list[tuple[int, ...]], list[torch.dtype]]]:
    with _OpLog() as log:
        fn()
    return log.ops


@pytest.mark.parametrize(
    "call",
    [
        lambda x, f: so.upfirdn2d(x, f, padding=1),  # equal padding on every side: conv2d pads
        lambda x, f: so.downsample2d(x, f),  # and strides: no full-resolution output, no slicing
    ],
)
def test_reference_upfirdn2d_pads_and_strides_inside_the_convolution(call):
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    f = so.setup_filter([1, 3, 3, 1])
    ops = _ops_of(lambda: call(x, f).sum().backward())
    names = [name for name, *_ in ops]
    assert names.count("aten.convolution") == 1 and "aten.convolution_backward" in names
    for unwanted in ("aten.constant_pad_nd", "aten.slice", "aten.slice_backward", "aten.as_strided"):
        assert unwanted not in names, f"{unwanted} ran: {names}"


def test_reference_upfirdn2d_still_pads_unequal_amounts():
    """The check above can fail: padding that differs between the sides still goes through a padded copy."""
    x, f = torch.randn(1, 2, 6, 6), so.setup_filter([1, 3, 3, 1])
    ops = _ops_of(lambda: so.upfirdn2d(x, f, padding=(2, 1, 2, 1)))
    assert "aten.constant_pad_nd" in [name for name, *_ in ops]


@pytest.mark.parametrize("fused", [False, True])
def test_nonfused_modconv_never_builds_per_sample_weights(fused):
    """Non-fused (training): the demodulation sums are factored, no ``[N, O, I, k, k]`` tensor exists in
    the forward or backward pass; fused (evaluation) builds it, as NVIDIA's does."""
    n, o, i, k = 3, 5, 4, 3
    x = torch.randn(n, i, 8, 8, requires_grad=True)
    weight = torch.randn(o, i, k, k, requires_grad=True)
    styles = torch.randn(n, i, requires_grad=True)
    ops = _ops_of(
        lambda: modulated_conv2d(x, weight, styles, padding=1, fused_modconv=fused).sum().backward()
    )
    per_sample = [name for name, shapes, _ in ops if (n, o, i, k, k) in shapes]
    assert bool(per_sample) == fused, per_sample


def test_factored_demodulation_is_computed_in_float32_under_autocast():
    """Under bf16 autocast the factored sums' matrix product stays fp32 (in bf16 it would carry ~3
    significant digits), as the fused path's per-sample weights do (elementwise ops are not autocast)."""
    torch.manual_seed(0)
    x = torch.randn(2, 16, 8, 8)
    weight = torch.randn(16, 16, 3, 3)
    styles = torch.randn(2, 16) * 3
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ops = _ops_of(lambda: modulated_conv2d(x, weight, styles, padding=1, fused_modconv=False))
        conv_dtypes = {d for name, _, dtypes in ops if name == "aten.convolution" for d in dtypes}
    products = [dtypes for name, shapes, dtypes in ops if name == "aten.mm" and (2, 16) in shapes]
    assert products == [[torch.float32]], products
    assert conv_dtypes == {torch.bfloat16}  # autocast was on: the check above can fail


def test_fused_bias_act_compiles_without_a_graph_break():
    """Under torch.compile the clamp is always applied (no host read of aminmax), so the graph stays whole
    and the values stay the eager ones."""
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    b = torch.randn(3, requires_grad=True)

    def fn(xx, bb):
        return so.bias_act(xx, bb, act="lrelu", clamp=256)

    torch._dynamo.reset()
    explained = torch._dynamo.explain(fn)(x, b)
    assert explained.graph_break_count == 0, explained.break_reasons
    compiled = torch.compile(fn, backend="aot_eager")(x, b)
    assert torch.equal(compiled, fn(x, b))
