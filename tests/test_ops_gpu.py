"""CUDA kernels vs the reference on a GPU: fp32 and fp16, forward, first and second derivatives, and
gradcheck in float64. Needs a CUDA device and a toolchain that builds the kernels; the kernels must
build here (a build failure fails these tests rather than skipping them)."""

from __future__ import annotations

import itertools

import pytest
import torch

from stylegan_ops import (
    ACTIVATIONS,
    bias_act,
    bias_act_ref,
    build,
    downsample2d,
    filter2d,
    setup_filter,
    upfirdn2d,
    upfirdn2d_ref,
    upsample2d,
)

pytestmark = [
    pytest.mark.gpu,
    # The conftest skips `gpu` tests without CUDA; this keeps the module safe without that conftest.
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

ACT_NAMES = list(ACTIVATIONS)


@pytest.fixture(scope="module")
def dev() -> torch.device:
    # Building is required: a failure here fails the tests with the compiler output.
    build.get_plugin("bias_act", required=True)
    build.get_plugin("upfirdn2d", required=True)
    return torch.device("cuda")


def _tol(dtype: torch.dtype) -> dict[str, float]:
    return {
        torch.float64: {"rtol": 1e-10, "atol": 1e-12},
        torch.float32: {"rtol": 1e-5, "atol": 1e-5},
        torch.float16: {"rtol": 1e-2, "atol": 2e-2},
        torch.bfloat16: {"rtol": 3e-2, "atol": 6e-2},
    }[dtype]


def _penalty_derivs(fn, x0: torch.Tensor, b0: torch.Tensor | None, w: torch.Tensor) -> list[torch.Tensor]:
    """y, first derivatives of <y, w> and second derivatives of an R1-style penalty of those."""
    x = x0.clone().requires_grad_(True)
    inputs = [x]
    b = None
    if b0 is not None:
        b = b0.clone().requires_grad_(True)
        inputs.append(b)
    y = fn(x, b)
    grads = torch.autograd.grad((y * w).sum(), inputs, create_graph=True)
    penalty = sum(g.float().square().sum() for g in grads)
    if penalty.requires_grad:
        second = torch.autograd.grad(penalty, inputs, allow_unused=True)
    else:  # the first derivatives do not depend on the inputs (linear op)
        second = [None] * len(inputs)
    second = [torch.zeros_like(t) if s is None else s for s, t in zip(second, inputs, strict=True)]
    return [y.detach(), *[g.detach() for g in grads], *second]


# --------------------------------------------------------------------------------------------------
# bias_act


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["f32", "f16"])
@pytest.mark.parametrize("act", ACT_NAMES)
def test_bias_act_matches_reference(dev, act: str, dtype: torch.dtype) -> None:
    g = torch.Generator(device=dev).manual_seed(0)
    for shape, dim, clamp in [
        ((8, 16, 9, 9), 1, None),
        ((8, 16, 9, 9), 1, 1.0),
        ((64, 512), 1, None),
        ((5, 7), 0, 0.5),
    ]:
        x = (torch.randn(shape, generator=g, device=dev) * 2).to(dtype)
        b = torch.randn(shape[dim], generator=g, device=dev).to(dtype)
        w = torch.randn(shape, generator=g, device=dev).to(dtype)

        def cuda_fn(x, b, dim=dim, clamp=clamp):
            return bias_act(x, b, dim=dim, act=act, clamp=clamp, impl="cuda")

        def ref_fn(x, b, dim=dim, clamp=clamp):
            return bias_act_ref(x, b, dim=dim, act=act, clamp=clamp)

        got = _penalty_derivs(cuda_fn, x, b, w)
        # fp16 is compared with the float32 reference of the same (rounded) inputs.
        want = _penalty_derivs(ref_fn, x.float(), b.float(), w.float())
        tol = _tol(dtype)
        for name, a, e in zip(["y", "dx", "db", "d2x", "d2b"], got, want, strict=True):
            # db sums many elements: scale the absolute tolerance with the count. Second derivatives
            # chain more rounded terms (and libm differs between the GPU and the CPU reference).
            scale = x.numel() / shape[dim] if name in ("db", "d2b") else 1.0
            scale *= 10.0 if name.startswith("d2") else 1.0
            torch.testing.assert_close(
                a.float(), e.float(), rtol=tol["rtol"] * (10.0 if name.startswith("d2") else 1.0),
                atol=tol["atol"] * scale,
                msg=lambda m, n=name, s=shape, c=clamp: f"{act} {n} shape={s} clamp={c}: {m}",
            )  # fmt: skip
        assert got[0].dtype == dtype


@pytest.mark.parametrize("act", ACT_NAMES)
def test_bias_act_gradcheck_float64(dev, act: str) -> None:
    g = torch.Generator(device=dev).manual_seed(1)
    x = torch.randn(3, 4, 2, 2, generator=g, device=dev, dtype=torch.float64) * 2
    x = torch.where(x.abs() < 0.05, x + 0.1, x).requires_grad_(True)
    b = (torch.randn(4, generator=g, device=dev, dtype=torch.float64) * 0.01).requires_grad_(True)

    def fn(x, b):
        return bias_act(x, b, act=act, impl="cuda")

    assert torch.autograd.gradcheck(fn, (x, b), eps=1e-6, atol=1e-6)
    assert torch.autograd.gradgradcheck(fn, (x, b), eps=1e-6, atol=1e-6)


def test_bias_act_large_grid_stride_and_streams(dev) -> None:
    """More elements than one grid covers (grid-stride loop), on a side stream, channels_last input."""
    x = torch.randn(4, 512, 128, 72, device=dev).to(memory_format=torch.channels_last)  # 18.9M elements
    b = torch.randn(512, device=dev)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        got = bias_act(x, b, act="lrelu", clamp=256, impl="cuda")
    torch.cuda.current_stream().wait_stream(stream)
    torch.testing.assert_close(got, bias_act_ref(x, b, act="lrelu", clamp=256))


def test_bias_act_mixed_dtypes_and_third_order(dev) -> None:
    x = torch.randn(2, 8, 4, 4, device=dev, dtype=torch.float16)
    b = torch.randn(8, device=dev)  # float32 bias on half input: cast to half
    got = bias_act(x, b, act="lrelu", impl="cuda")
    assert got.dtype == torch.float16
    torch.testing.assert_close(
        got.float(), bias_act_ref(x.float(), b.half().float(), act="lrelu"), **_tol(torch.float16)
    )
    xd = torch.randn(3, 4, device=dev, dtype=torch.float64, requires_grad=True)
    y = bias_act(xd, None, act="tanh", impl="cuda")
    (g1,) = torch.autograd.grad(y.sum(), xd, create_graph=True)
    (g2,) = torch.autograd.grad(g1.square().sum(), xd, create_graph=True)
    with pytest.raises(NotImplementedError, match="impl='ref'"):
        torch.autograd.grad(g2.sum(), xd)


# --------------------------------------------------------------------------------------------------
# upfirdn2d

CASES = [
    # (filter shape, up, down, padding)
    ((4, 4), (1, 1), (1, 1), (0, 0, 0, 0)),
    ((4, 4), (2, 2), (1, 1), (2, 1, 2, 1)),
    ((4, 4), (1, 1), (2, 2), (1, 1, 1, 1)),
    ((4,), (2, 2), (1, 1), (2, 1, 2, 1)),
    ((4,), (1, 1), (2, 2), (1, 1, 1, 1)),
    ((3, 2), (3, 1), (1, 2), (-1, 2, 0, 3)),
    ((12,), (2, 2), (1, 1), (6, 5, 6, 5)),
    ((1, 1), (1, 1), (1, 1), (-2, -1, -1, -3)),
    ((2, 5), (1, 2), (3, 1), (3, 3, 3, 3)),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["f32", "f16"])
def test_upfirdn2d_matches_reference(dev, dtype: torch.dtype) -> None:
    g = torch.Generator(device=dev).manual_seed(2)
    x0 = torch.randn(4, 8, 17, 13, generator=g, device=dev)
    for (f_shape, up, down, pad), flip, gain in itertools.product(CASES, [False, True], [1.0, 2.0]):
        f = torch.randn(f_shape, generator=g, device=dev) / max(f_shape)
        kw = {"up": up, "down": down, "padding": pad, "flip_filter": flip, "gain": gain}

        def cuda_fn(x, b, f=f, kw=kw):
            return upfirdn2d(x, f, impl="cuda", **kw)

        def ref_fn(x, b, f=f, kw=kw):
            return upfirdn2d_ref(x, f, **kw)

        x = x0.to(dtype)
        w = torch.randn_like(ref_fn(x0, None)).to(dtype)
        got = _penalty_derivs(cuda_fn, x, None, w)
        want = _penalty_derivs(ref_fn, x.float(), None, w.float())
        taps = f.numel() if f.ndim == 2 else f.numel() ** 2
        tol = _tol(dtype)
        for name, a, e in zip(["y", "dx", "d2x"], got, want, strict=True):
            torch.testing.assert_close(
                a.float(), e, rtol=tol["rtol"], atol=tol["atol"] * max(taps, 1) ** 0.5,
                msg=lambda m, n=name, k=kw, s=f_shape: f"{n} f={s} {k}: {m}",
            )  # fmt: skip
        assert got[0].dtype == dtype


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"f{c[0]}-up{c[1]}-down{c[2]}-pad{c[3]}")
def test_upfirdn2d_gradcheck_float64(dev, case) -> None:
    f_shape, up, down, pad = case
    g = torch.Generator(device=dev).manual_seed(3)
    f = torch.randn(f_shape, generator=g, device=dev, dtype=torch.float64)
    x = torch.randn(1, 2, 9, 8, generator=g, device=dev, dtype=torch.float64, requires_grad=True)

    def fn(x):
        return upfirdn2d(x, f, up=up, down=down, padding=pad, gain=0.8, impl="cuda")

    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["f32", "f16"])
def test_resampling_helpers(dev, dtype: torch.dtype) -> None:
    """upsample2d / downsample2d / filter2d as StyleGAN2 calls them, 2-D and separable filters."""
    x = torch.randn(4, 32, 32, 32, device=dev).to(dtype)
    for taps in ([1, 3, 3, 1], [1, 2, 3, 4, 4, 3, 2, 1]):  # the 8-tap filter is kept separable
        f = setup_filter(taps, device=dev)
        for fn in (upsample2d, downsample2d, filter2d):
            got = fn(x, f, impl="cuda")
            want = fn(x.float(), f, impl="ref")
            assert got.shape == want.shape and got.dtype == dtype
            torch.testing.assert_close(got.float(), want, **_tol(dtype))


def test_upfirdn2d_large_grid_stride(dev) -> None:
    x = torch.randn(4, 64, 256, 256, device=dev)
    f = setup_filter([1, 3, 3, 1], device=dev)
    torch.testing.assert_close(
        downsample2d(x, f, impl="cuda"), downsample2d(x, f, impl="ref"), rtol=1e-5, atol=1e-5
    )
    torch.testing.assert_close(
        upsample2d(x, f, impl="cuda"), upsample2d(x, f, impl="ref"), rtol=1e-5, atol=1e-5
    )


TILED_GPU_CASES = [  # (shape, filter, up, down, padding) for the shared-memory tiles
    ((4, 64, 128, 128), (4, 4), 1, 1, (2, 1, 2, 1)),  # filter2d as StyleGAN2 calls it, 4 x 4 tiles per plane
    ((4, 64, 64, 64), (4, 4), 2, 1, (2, 1, 2, 1)),  # upsample2d
    ((4, 64, 128, 128), (4, 4), 1, 2, (1, 1, 1, 1)),  # downsample2d
    ((2, 3, 70, 45), (4, 4), 1, 1, (2, 1, 2, 1)),  # ragged tiles
    ((3, 5, 8, 8), (4, 4), 1, 1, (1, 2, 2, 1)),  # 16 small planes to a block, the last block short
    ((1, 37, 4, 6), (4, 4), 1, 1, (-1, 2, 3, -2)),  # crops
    ((1, 4, 9, 7), (4, 4), 2, 1, (-3, 4, 5, -2)),  # up with crops
    ((2, 2, 33, 65), (3, 2), 1, 1, (0, 0, 0, 0)),  # generic filter size (not an unrolled case)
    ((1, 2, 11, 13), (5, 3), 3, 2, (1, 2, 3, 4)),  # generic factors
    ((1, 2, 16, 16), (8, 8), 1, 1, (3, 4, 4, 3)),  # 64 taps, the largest tiled filter
    ((1, 66000, 32, 32), (4, 4), 1, 1, (2, 1, 2, 1)),  # more blocks along the planes than gridDim.z allows
]


@pytest.mark.parametrize(
    "dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16], ids=["f64", "f32", "f16", "bf16"]
)
def test_upfirdn2d_tiles_equal_gather_and_reference(dev, dtype: torch.dtype) -> None:
    """The tiled kernel sums the same products in the same order as the gather: bit-equal on the GPU."""
    plugin = build.get_plugin("upfirdn2d", required=True)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    g = torch.Generator(device=dev).manual_seed(5)
    for shape, (fh, fw), up, down, pad in TILED_GPU_CASES:
        if shape[1] > 1000 and dtype == torch.float64:
            continue  # the grid-stride case once per storage size is enough
        x = torch.randn(shape, generator=g, device=dev).to(dtype)
        f = torch.randn(fh, fw, generator=g, device=dev).to(acc)
        for flip, gain in [(False, 1.0), (True, 0.3)]:
            args = (x, f, up, up, down, down, *pad, flip, gain)
            tiled, gather = plugin.upfirdn2d(*args, 1), plugin.upfirdn2d(*args, 0)
            assert torch.equal(tiled, gather), (shape, fh, fw, up, down, pad, flip)
            want = upfirdn2d_ref(x.to(acc), f, up=up, down=down, padding=pad, flip_filter=flip, gain=gain)
            tol = _tol(dtype)
            torch.testing.assert_close(tiled.to(acc), want, rtol=tol["rtol"], atol=tol["atol"] * fh * fw / 4)
        del x
    with pytest.raises(RuntimeError, match="tiled path does not apply"):
        ones = torch.ones(1, 1, 12, 12, device=dev)
        plugin.upfirdn2d(ones, torch.ones(9, 9, device=dev), 1, 1, 1, 1, 4, 4, 4, 4, False, 1.0, 1)


def test_doctor_style_status(dev) -> None:
    status = build.build_status()
    assert status["cuda_unavailable_reason"] is None
    for name in build.OPS:
        assert status["ops"][name]["ok"], status["ops"][name]
