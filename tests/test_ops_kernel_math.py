"""The CUDA kernels' math, checked on the CPU.

The kernels' per-element functions live in ``stylegan_ops/csrc/*_math.h`` (``__host__ __device__``).
``*_cpu_emulation.cpp`` call the same functions in plain C++ loops; built here as a CPU extension
(g++, cached in pytest's cache directory) they are compared with ``bias_act_ref`` / ``upfirdn2d_ref``
and their autograd derivatives. The emulation has the CUDA binding's call signature, so the Python
autograd wrappers (``_bias_act_cuda``, ``_upfirdn2d_cuda``) run on it too, including gradcheck.

The adjoint-parameter tests at the end are pure Python and fast.
"""

from __future__ import annotations

import hashlib
import itertools
import platform
import shutil
import types
from pathlib import Path

import pytest
import torch

from stylegan_ops import _bias_act_cuda
from stylegan_ops._bias_act_cuda import (
    MODE_FORWARD,
    MODE_FORWARD_KEEP,
    MODE_GRAD,
    MODE_GRAD2,
    MODE_GRAD_Y,
    bias_act_cuda,
)
from stylegan_ops._upfirdn2d_cuda import adjoint_params, upfirdn2d_cuda
from stylegan_ops.bias_act import ACTIVATIONS, bias_act_ref, resolve_bias_act_args
from stylegan_ops.upfirdn2d import output_size, upfirdn2d_ref

CSRC = Path(__file__).resolve().parents[1] / "stylegan_ops" / "csrc"
EMULATION_SOURCES = ("bias_act_cpu_emulation.cpp", "upfirdn2d_cpu_emulation.cpp")
EMULATION_HEADERS = ("emulation_common.h", "sg_common.h", "bias_act_math.h", "upfirdn2d_math.h")


# --------------------------------------------------------------------------------------------------
# Building the emulation


@pytest.fixture(scope="session")
def emu(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> types.SimpleNamespace:
    """The CPU emulation as a kernel module (``bias_act`` and ``upfirdn2d`` functions)."""
    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("no C++ compiler (c++/g++) to build the CPU emulation of the kernels")
    from filelock import FileLock
    from torch.utils.cpp_extension import load

    h = hashlib.sha256()
    for name in EMULATION_SOURCES + EMULATION_HEADERS:
        h.update((CSRC / name).read_bytes())
    h.update(f"{torch.__version__} {platform.python_version()}".encode())
    key = h.hexdigest()[:16]
    cache = getattr(request.config, "cache", None)  # None with -p no:cacheprovider
    root = Path(cache.mkdir("stylegan_ops_cpu_emulation")) if cache else tmp_path_factory.mktemp("emulation")
    build_dir = root / key
    build_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(build_dir) + ".lock", timeout=600):
        load(
            name="stylegan_ops_cpu_emulation",
            sources=[str(CSRC / s) for s in EMULATION_SOURCES],
            extra_include_paths=[str(CSRC)],
            extra_cflags=["-O2"],
            build_directory=str(build_dir),
            is_python_module=False,
            verbose=False,
        )
    ops = torch.ops.sgops_emulation
    return types.SimpleNamespace(bias_act=ops.bias_act, upfirdn2d=ops.upfirdn2d)


# --------------------------------------------------------------------------------------------------
# bias_act

ACT_NAMES = list(ACTIVATIONS)


def _tol(dtype: torch.dtype, terms: int = 1) -> dict[str, float]:
    """assert_close tolerances; ``terms`` > 1 loosens float32 for sums (rounding order differs)."""
    if dtype == torch.float32 and terms > 1:
        return {"rtol": 1e-5, "atol": 2e-6 * terms}
    return {
        torch.float64: {"rtol": 1e-10, "atol": 1e-12},
        torch.float32: {"rtol": 1e-5, "atol": 1e-6},
        torch.float16: {"rtol": 1e-2, "atol": 1e-2},
        torch.bfloat16: {"rtol": 3e-2, "atol": 3e-2},
    }[dtype]


def _ba_case(shape: tuple[int, ...], dim: int, with_bias: bool, dtype: torch.dtype, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 3).to(dtype)
    b = (torch.randn(shape[dim], generator=g, dtype=torch.float64)).to(dtype) if with_bias else None
    dy = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    w = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    return x, b, dy, w


def _ref_derivs(x, b, dim, act, clamp, dy, w):
    """Reference y, dy * f'(z) and w * dy * f''(z) via autograd (f(z) = bias_act_ref(x + b))."""
    xr = x.detach().clone().requires_grad_(True)
    y = bias_act_ref(xr, b, dim=dim, act=act, clamp=clamp)
    (g1,) = torch.autograd.grad(y, xr, dy, create_graph=True)
    if g1.requires_grad:
        (g2,) = torch.autograd.grad(g1, xr, w, allow_unused=True)
        g2 = torch.zeros_like(x) if g2 is None else g2
    else:
        g2 = torch.zeros_like(x)
    return y.detach(), g1.detach(), g2


BA_SHAPES = [((2, 5, 3, 4), 1), ((2, 5, 3, 4), 3), ((6, 7), 0), ((4, 9), 1), ((11,), 0), ((2, 3, 4), 2)]


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("act", ACT_NAMES)
def test_bias_act_modes_match_reference(emu, act: str, dtype: torch.dtype) -> None:
    """Kernel modes 0/1/2 == reference y, first and second derivative, over bias/dim/clamp combos."""
    cases = itertools.product(BA_SHAPES, [False, True], [None, 0.0, 0.7, 4.0])
    for i, ((shape, dim), with_bias, clamp) in enumerate(cases):
        x, b, dy, w = _ba_case(shape, dim, with_bias, dtype, seed=100 * ACT_NAMES.index(act) + i)
        spec, alpha, gain, clamp_ = resolve_bias_act_args(act, None, None, clamp)
        y_ref, g1_ref, g2_ref = _ref_derivs(x, b, dim, act, clamp, dy, w)
        run = emu.bias_act
        y = run(x, b, None, MODE_FORWARD, spec.cuda_idx, alpha, gain, clamp_, dim)
        g1 = run(x, b, dy, MODE_GRAD, spec.cuda_idx, alpha, gain, clamp_, dim)
        g2 = run(x, b, (w * dy).contiguous(), MODE_GRAD2, spec.cuda_idx, alpha, gain, clamp_, dim)
        what = f"act={act} shape={shape} dim={dim} bias={with_bias} clamp={clamp}"
        torch.testing.assert_close(y, y_ref, **_tol(dtype), msg=lambda m, w=what: f"forward {w}: {m}")
        torch.testing.assert_close(g1, g1_ref, **_tol(dtype), msg=lambda m, w=what: f"grad {w}: {m}")
        torch.testing.assert_close(g2, g2_ref, **_tol(dtype), msg=lambda m, w=what: f"grad2 {w}: {m}")


@pytest.mark.slow
def test_bias_act_alpha_gain_and_kinks(emu) -> None:
    """lrelu alpha, custom gains, and values exactly at the kinks (0, the clamp, softplus threshold)."""
    x = torch.tensor([-25.0, -1.0, -0.0, 0.0, 0.5, 1.0, 19.999, 20.0, 20.5, 3.0], dtype=torch.float64)
    dy = torch.linspace(0.5, 2.0, x.numel(), dtype=torch.float64)
    for act, alpha, gain, clamp in [
        ("lrelu", 0.1, None, None),
        ("lrelu", 0.3, 2.5, 1.0),
        ("relu", None, 2.0, 2.0),  # clamp reached exactly at x = 1.0
        ("softplus", None, None, None),
        ("elu", None, 0.5, None),
        ("selu", None, None, None),
        ("selu", None, None, 1.0507009873554805),
        ("sigmoid", None, None, None),
        ("tanh", None, 3.0, 2.0),
        ("swish", None, None, None),
        ("linear", None, -1.5, 3.0),
    ]:
        spec, a, g, c = resolve_bias_act_args(act, alpha, gain, clamp)
        xr = x.clone().requires_grad_(True)
        y_ref = bias_act_ref(xr, None, act=act, alpha=alpha, gain=gain, clamp=clamp)
        (g_ref,) = torch.autograd.grad(y_ref, xr, dy, create_graph=True)
        g2_ref = torch.zeros_like(x)
        if g_ref.requires_grad:
            (g2_ref,) = torch.autograd.grad(g_ref.sum(), xr)
        y = emu.bias_act(x, None, None, 0, spec.cuda_idx, a, g, c, 0)
        g1 = emu.bias_act(x, None, dy, 1, spec.cuda_idx, a, g, c, 0)
        g2 = emu.bias_act(x, None, dy, 2, spec.cuda_idx, a, g, c, 0)
        torch.testing.assert_close(y, y_ref.detach(), msg=lambda m, act=act: f"{act}: {m}")
        torch.testing.assert_close(g1, g_ref.detach(), msg=lambda m, act=act: f"{act} grad: {m}")
        torch.testing.assert_close(g2, g2_ref, msg=lambda m, act=act: f"{act} grad2: {m}")


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_bias_act_half_storage(emu, dtype: torch.dtype) -> None:
    """Half types load and store through the kernel's conversions and compute in float32."""
    for act in ACT_NAMES:
        x, b, dy, _ = _ba_case((3, 4, 5), 1, True, dtype, seed=7)
        spec, alpha, gain, clamp = resolve_bias_act_args(act, None, None, 2.0)
        y = emu.bias_act(x, b, None, 0, spec.cuda_idx, alpha, gain, clamp, 1)
        g1 = emu.bias_act(x, b, dy, 1, spec.cuda_idx, alpha, gain, clamp, 1)
        assert y.dtype == dtype and g1.dtype == dtype
        y_ref, g1_ref, _ = _ref_derivs(x.float(), b.float(), 1, act, 2.0, dy.float(), dy.float())
        torch.testing.assert_close(y.float(), y_ref, **_tol(dtype))
        torch.testing.assert_close(g1.float(), g1_ref, **_tol(dtype))


KEEP_CASES = [  # (act, alpha, gain, clamp): linear/relu/lrelu, whose backward pass keeps the output
    ("linear", None, 1.0, 1.0),
    ("relu", None, 1.0, 1.0),
    ("lrelu", None, 1.0, 1.0),
    ("lrelu", None, None, 2.0),
    ("lrelu", 0.1, 0.5, 0.8),
    ("lrelu", 0.0, 1.0, None),
    ("relu", None, None, None),
]
INT_VIEW = {torch.float64: torch.int64, torch.float32: torch.int32, torch.float16: torch.int16,
            torch.bfloat16: torch.int16}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("dtype", list(INT_VIEW), ids=["f64", "f32", "f16", "bf16"])
def test_bias_act_gradient_from_kept_output_is_mode_1s(emu, dtype: torch.dtype) -> None:
    """Modes 4 and 3 (forward keeping y, gradient from y) give mode 1's gradient bit for bit, at the clamp,
    just inside it (an unclamped output rounding onto it in storage) and at NaN too; the kept y is mode 0's
    except there, where it is the next storage value toward zero."""
    for act, alpha, gain, clamp in KEEP_CASES:
        spec, a, g, c = resolve_bias_act_args(act, alpha, gain, clamp)
        x, b, dy, _ = _ba_case((3, 5, 4, 4), 1, True, dtype, seed=5)
        b[1] = 0.5  # channel 1: exactly at the clamp (1.0), rounding onto it, and NaN
        x[0, 1, 0, :3] = torch.tensor([0.5, 0.5 - torch.finfo(dtype).eps / 4, float("nan")], dtype=dtype)
        args = (spec.cuda_idx, a, g, c, 1)
        y0 = emu.bias_act(x, b, None, MODE_FORWARD, *args)
        y = emu.bias_act(x, b, None, MODE_FORWARD_KEEP, *args)
        g1 = emu.bias_act(x, b, dy, MODE_GRAD, *args)
        g3 = emu.bias_act(y, None, dy, MODE_GRAD_Y, *args)
        what = f"{act} alpha={alpha} gain={gain} clamp={clamp}"
        torch.testing.assert_close(g3, g1, rtol=0, atol=0, equal_nan=True, msg=lambda m, w=what: f"{w}: {m}")
        moved = (y != y0) & ~y0.isnan()
        if c >= 0 and g == 1.0:
            assert moved[0, 1, 0, :2].all(), f"{what}: the outputs at the clamp were not kept inside"
        stored_clamp = torch.tensor(c, dtype=dtype)
        assert (y0[moved].abs() == stored_clamp).all() and (y[moved].abs() < stored_clamp).all(), what
        step = y0[moved].view(INT_VIEW[dtype]).long() - y[moved].view(INT_VIEW[dtype]).long()
        assert (step.abs() == 1).all(), f"{what}: kept outputs more than one step inside"


@pytest.mark.slow
def test_bias_act_wrapper_keeps_the_output_not_the_input(emu, monkeypatch: pytest.MonkeyPatch) -> None:
    """Linear/relu/lrelu keep only y for the backward pass (the next layer keeps it anyway); tanh x and b,
    and so does every activation under the benchmarks' hook that restores the previous behaviour."""
    x = torch.randn(2, 4, 3, 3, requires_grad=True)
    b = torch.randn(4, requires_grad=True)
    for keep_output in (True, False):
        monkeypatch.setattr(_bias_act_cuda, "_KEEP_OUTPUT", keep_output)
        for act in ("lrelu", "linear", "relu", "tanh"):
            saved: list[torch.Tensor] = []
            with torch.autograd.graph.saved_tensors_hooks(lambda t, s=saved: s.append(t) or t, lambda t: t):
                y = _wrapped(emu, act, 1, 256.0)(x, b)
            ptrs = [t.data_ptr() for t in saved]
            keeps_y = keep_output and act != "tanh"
            assert ptrs == ([y.data_ptr()] if keeps_y else [x.data_ptr(), b.data_ptr()]), (act, keep_output)


@pytest.mark.slow
def test_bias_act_wrapper_without_backward_gives_mode_0s_output(emu) -> None:
    """An output exactly at the clamp stays there when no backward pass follows (generation, FID)."""
    x = torch.tensor([[1.0, 0.5, 3.0]], dtype=torch.float16)
    b = torch.tensor([0.0], dtype=torch.float16)
    fn = _wrapped(emu, "linear", 0, 1.0)
    with torch.no_grad():
        assert fn(x.requires_grad_(), b).tolist() == [[1.0, 0.5, 1.0]]
    assert fn(x, b).tolist() == [[1.0 - 2**-11, 0.5, 1.0]]  # with one: kept one step inside


def _wrapped(emu, act: str, dim: int, clamp: float | None, alpha: float | None = None):
    spec, a, g, c = resolve_bias_act_args(act, alpha, None, clamp)
    return lambda x, b: bias_act_cuda(x, b, dim=dim, spec=spec, alpha=a, gain=g, clamp=c, plugin=emu)


@pytest.mark.slow
@pytest.mark.parametrize("act", ACT_NAMES)
def test_bias_act_autograd_wrapper_gradcheck(emu, act: str) -> None:
    """The autograd Functions of _bias_act_cuda: gradcheck and gradgradcheck w.r.t. x and b."""
    for shape, dim, clamp in [((2, 3, 2, 2), 1, None), ((3, 4), 0, 0.8), ((2, 2, 3), 2, 2.0)]:
        g = torch.Generator().manual_seed(3)
        # Keep samples away from kinks and the clamp boundary so finite differences are valid.
        x = torch.randn(shape, generator=g, dtype=torch.float64) * 2
        x = torch.where(x.abs() < 0.05, x + 0.1, x).requires_grad_(True)
        b = (torch.randn(shape[dim], generator=g, dtype=torch.float64) * 0.01).requires_grad_(True)
        fn = _wrapped(emu, act, dim, clamp)
        if clamp is not None:
            unclamped = bias_act_ref(x.detach(), b.detach(), dim=dim, act=act)
            assert ((unclamped.abs() - clamp).abs() > 1e-3).all(), "test input too close to the clamp"
        assert torch.autograd.gradcheck(fn, (x, b), eps=1e-6, atol=1e-6)
        assert torch.autograd.gradgradcheck(fn, (x, b), eps=1e-6, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("act", ["lrelu", "swish", "tanh", "softplus"])
def test_bias_act_wrapper_matches_reference_autograd_float32(emu, act: str) -> None:
    """First and second order (R1-style gradient penalty) through the wrapper vs the reference."""
    g = torch.Generator().manual_seed(11)
    x0 = torch.randn(4, 6, 5, 5, generator=g)
    b0 = torch.randn(6, generator=g)
    w = torch.randn(4, 6, 5, 5, generator=g)
    results = []
    for fn in (_wrapped(emu, act, 1, 1.5), lambda x, b: bias_act_ref(x, b, act=act, clamp=1.5)):
        x = x0.clone().requires_grad_(True)
        b = b0.clone().requires_grad_(True)
        y = fn(x, b)
        gx, gb = torch.autograd.grad((y * w).sum(), [x, b], create_graph=True)
        penalty = gx.square().sum() + gb.square().sum()
        hx, hb = torch.autograd.grad(penalty, [x, b], allow_unused=True)
        hx = torch.zeros_like(x) if hx is None else hx
        hb = torch.zeros_like(b) if hb is None else hb
        results.append([t.detach() for t in (y, gx, gb, hx, hb)])
    for name, got, want in zip(["y", "dx", "db", "d2x", "d2b"], *results, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4, msg=lambda m, n=name: f"{act} {n}: {m}")


@pytest.mark.slow
def test_bias_act_wrapper_third_order(emu) -> None:
    """Third order w.r.t. x raises a clear error for curved activations; piecewise-linear ones work."""
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    for act, raises in [("tanh", True), ("lrelu", False)]:
        y = _wrapped(emu, act, 1, None)(x, None)
        (g1,) = torch.autograd.grad(y.sum(), x, create_graph=True)
        (g2,) = torch.autograd.grad(g1.square().sum(), x, create_graph=True, allow_unused=True)
        if raises:
            with pytest.raises(NotImplementedError, match="impl='ref'"):
                torch.autograd.grad(g2.sum(), x)
        else:
            assert g2 is None or not g2.requires_grad or torch.all(g2 == 0)


@pytest.mark.slow
def test_bias_act_wrapper_misc(emu) -> None:
    """Identity shortcut, float32 bias on float64 input, non-contiguous input."""
    x = torch.randn(2, 3, 4, dtype=torch.float64)
    spec, a, g, c = resolve_bias_act_args("linear", None, None, None)
    assert bias_act_cuda(x, None, dim=1, spec=spec, alpha=a, gain=g, clamp=c, plugin=emu) is x
    b = torch.randn(3)
    fn = _wrapped(emu, "lrelu", 1, None)
    torch.testing.assert_close(fn(x, b), bias_act_ref(x, b.double(), act="lrelu"))
    xt = torch.randn(4, 3, 2).transpose(0, 2)  # [2, 3, 4], non-contiguous
    torch.testing.assert_close(fn(xt, b), bias_act_ref(xt, b, act="lrelu"))


# --------------------------------------------------------------------------------------------------
# upfirdn2d

UP = [(1, 1), (2, 2), (3, 1), (1, 2), (4, 4)]
DOWN = [(1, 1), (2, 2), (1, 3), (2, 1)]
PAD = [(0, 0, 0, 0), (1, 2, 0, 3), (-1, 0, 2, -2), (3, 3, 3, 3), (-2, -1, -1, -3), (0, 1, 1, 0)]
FILTERS_2D = [(1, 1), (4, 4), (3, 2), (1, 5), (2, 3)]


def _valid(h: int, w: int, fh: int, fw: int, up, down, pad) -> bool:
    return (
        output_size(w, up[0], down[0], pad[0], pad[1], fw) >= 1
        and output_size(h, up[1], down[1], pad[2], pad[3], fh) >= 1
    )


def _upfirdn_cases(h: int = 7, w: int = 5):
    for (fh, fw), up, down, pad in itertools.product(FILTERS_2D, UP, DOWN, PAD):
        if _valid(h, w, fh, fw, up, down, pad):
            yield (fh, fw), up, down, pad


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_upfirdn2d_kernel_matches_reference(emu, dtype: torch.dtype) -> None:
    """The gather (2-D filter, one pass) over up/down/padding (incl. negative)/flip/gain, non-square."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 7, 5, generator=g, dtype=torch.float64).to(dtype)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    count = 0
    for (fh, fw), up, down, pad in _upfirdn_cases():
        f = torch.randn(fh, fw, generator=g, dtype=torch.float64).to(acc)
        for flip, gain in [(False, 1.0), (True, 2.5)]:
            want = upfirdn2d_ref(x, f, up=up, down=down, padding=pad, flip_filter=flip, gain=gain)
            got = emu.upfirdn2d(x, f, up[0], up[1], down[0], down[1], *pad, flip, gain)
            torch.testing.assert_close(
                got,
                want,
                **_tol(dtype, terms=fh * fw),
                msg=lambda m, c=(fh, fw, up, down, pad, flip): (
                    f"f={c[:2]} up={c[2]} down={c[3]} pad={c[4]} flip={c[5]}: {m}"
                ),
            )
            count += 1
    assert count > 300


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_upfirdn2d_kernel_half_storage(emu, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 2, 9, 8, generator=g)
    f = torch.randn(4, 4, generator=g) / 4
    want = upfirdn2d_ref(x, f, up=2, down=1, padding=(2, 1, 2, 1))
    got = emu.upfirdn2d(x.to(dtype), f, 2, 2, 1, 1, 2, 1, 2, 1, False, 1.0)
    assert got.dtype == dtype
    torch.testing.assert_close(got.float(), want, **_tol(dtype))


TILED_CASES = [  # (shape, filter, up, down, padding): multi-tile planes, packed planes, crops, non-square
    ((2, 3, 70, 45), (4, 4), 1, 1, (2, 1, 2, 1)),  # 3 x 2 tiles of 32 x 32, ragged edges
    ((3, 5, 8, 8), (4, 4), 1, 1, (1, 2, 2, 1)),  # 15 planes packed 16 to a block, the last group short
    ((1, 37, 4, 6), (4, 4), 1, 1, (-1, 2, 3, -2)),  # crops (negative padding) and zeros in one tile
    ((2, 2, 33, 65), (3, 2), 1, 1, (0, 0, 0, 0)),  # generic filter size, one output column past a tile
    ((1, 3, 5, 40), (1, 5), 1, 1, (2, 2, 0, 0)),  # separable x pass
    ((1, 3, 40, 5), (5, 1), 1, 1, (0, 0, 2, 2)),  # separable y pass
    ((1, 2, 16, 16), (8, 8), 1, 1, (3, 4, 4, 3)),  # 64 taps: the largest tiled filter
    ((2, 3, 20, 37), (4, 4), 2, 1, (2, 1, 2, 1)),  # upsample2d: 2 x 3 tiles of 32 x 32 outputs
    ((2, 3, 70, 45), (4, 4), 1, 2, (1, 1, 1, 1)),  # downsample2d
    ((1, 4, 9, 7), (4, 4), 2, 1, (-3, 4, 5, -2)),  # up with crops: tap phases on both sides of 0
    ((1, 4, 30, 29), (4, 4), 1, 2, (-2, 3, 4, -1)),  # down with crops
    ((1, 2, 11, 13), (5, 3), 3, 2, (1, 2, 3, 4)),  # generic up and down together
    ((1, 2, 40, 40), (4, 4), 1, 8, (1, 2, 2, 1)),  # the largest tiled factor: smaller tiles to fit
]


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16], ids=["f64", "f32", "f16"])
def test_upfirdn2d_tiled_path_equals_gather_and_reference(emu, dtype: torch.dtype) -> None:
    """The shared-memory tiles are bit-equal to the gather (same products summed in the same order,
    zeros for the padding) and close to the reference; the default choice is the tiles."""
    g = torch.Generator().manual_seed(7)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    for shape, (fh, fw), up, down, pad in TILED_CASES:
        x = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
        f = torch.randn(fh, fw, generator=g, dtype=torch.float64).to(acc)
        for flip, gain in [(False, 1.0), (True, 0.3)]:
            args = (x, f, up, up, down, down, *pad, flip, gain)
            tiled = emu.upfirdn2d(*args, 1)
            gather = emu.upfirdn2d(*args, 0)
            assert torch.equal(emu.upfirdn2d(*args), tiled)  # the default choice is the tiled path
            assert torch.equal(tiled, gather), (shape, fh, fw, up, down, pad, flip)
            want = upfirdn2d_ref(x.to(acc), f, up=up, down=down, padding=pad, flip_filter=flip, gain=gain)
            torch.testing.assert_close(tiled.to(acc), want, **_tol(dtype, terms=fh * fw))


@pytest.mark.slow
def test_upfirdn2d_tiles_equal_gather_over_the_whole_grid(emu) -> None:
    """Every up/down/padding/filter case of the reference test: tiles == gather, bit for bit."""
    g = torch.Generator().manual_seed(8)
    x = torch.randn(2, 3, 7, 5, generator=g)
    count = 0
    for (fh, fw), up, down, pad in _upfirdn_cases():
        f = torch.randn(fh, fw, generator=g)
        for flip in (False, True):
            args = (x, f, up[0], up[1], down[0], down[1], *pad, flip, 1.5)
            assert torch.equal(emu.upfirdn2d(*args, 1), emu.upfirdn2d(*args, 0)), (fh, fw, up, down, pad)
            count += 1
    assert count > 300


@pytest.mark.slow
def test_upfirdn2d_tiled_path_limits(emu) -> None:
    """Filters over 64 taps and factors over 8 keep the gather; forcing the tiles there is refused."""
    x = torch.randn(1, 2, 12, 12)
    for f, up, down in [(torch.ones(9, 9), 1, 1), (torch.ones(4, 4), 9, 1), (torch.ones(4, 4), 1, 9)]:
        with pytest.raises(RuntimeError, match="tiled path does not apply"):
            emu.upfirdn2d(x, f, up, up, down, down, 4, 4, 4, 4, False, 1.0, 1)
        want = upfirdn2d_ref(x, f, up=up, down=down, padding=(4, 4, 4, 4))
        torch.testing.assert_close(emu.upfirdn2d(x, f, up, up, down, down, 4, 4, 4, 4, False, 1.0), want)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_upfirdn2d_wrapper_separable_and_grad(emu, dtype: torch.dtype) -> None:
    """The autograd wrapper: 1-D filters (x pass then y pass) and 2-D; forward and dL/dx vs reference."""
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(2, 2, 6, 9, generator=g, dtype=torch.float64).to(dtype)
    pads = [PAD[1], PAD[2], PAD[4]]
    for taps, up, down, pad in itertools.product([2, 4, (3, 2)], UP[:4], DOWN, pads):
        fh, fw = taps if isinstance(taps, tuple) else (taps, taps)
        if not _valid(6, 9, fh, fw, up, down, pad):
            continue
        shape = taps if isinstance(taps, tuple) else (taps,)
        f = torch.randn(shape, generator=g)
        for flip in (False, True):
            kw = {"up": up, "down": down, "padding": pad, "flip_filter": flip, "gain": 1.5}
            outs = []
            for fn in (
                lambda x, f=f, kw=kw: upfirdn2d_cuda(x, f, plugin=emu, **kw),
                lambda x, f=f, kw=kw: upfirdn2d_ref(x, f, **kw),
            ):
                x = x0.clone().requires_grad_(True)
                y = fn(x)
                dy = torch.linspace(-1, 1, y.numel(), dtype=dtype).reshape(y.shape)
                (dx,) = torch.autograd.grad(y, x, dy)
                outs.append((y.detach(), dx))
            what = f"f={shape} up={up} down={down} pad={pad} flip={flip}"
            for got, want in zip(outs[0], outs[1], strict=True):
                torch.testing.assert_close(
                    got, want, **_tol(dtype, terms=fh * fw), msg=lambda m, w=what: f"{w}: {m}"
                )


@pytest.mark.slow
def test_upfirdn2d_wrapper_gradcheck(emu) -> None:
    """gradcheck / gradgradcheck (float64) through the recursive adjoint backward."""
    g = torch.Generator().manual_seed(4)
    for f_shape, up, down, pad, flip in [
        ((4,), (2, 2), (1, 1), (2, 1, 2, 1), False),
        ((4, 4), (1, 1), (2, 2), (1, 1, 1, 1), True),
        ((3, 2), (2, 1), (1, 3), (-1, 2, 0, 1), False),
        ((5,), (1, 3), (2, 1), (0, -1, 3, 2), True),
    ]:
        f = torch.randn(f_shape, generator=g, dtype=torch.float64)
        x = torch.randn(1, 2, 6, 7, generator=g, dtype=torch.float64, requires_grad=True)

        def fn(x, f=f, up=up, down=down, pad=pad, flip=flip):
            return upfirdn2d_cuda(x, f, up=up, down=down, padding=pad, flip_filter=flip, gain=0.7, plugin=emu)

        assert torch.autograd.gradcheck(fn, (x,))
        assert torch.autograd.gradgradcheck(fn, (x,))


@pytest.mark.slow
def test_upfirdn2d_wrapper_errors(emu) -> None:
    x = torch.randn(1, 1, 4, 4)
    with pytest.raises(ValueError, match="leaves no output"):
        upfirdn2d_cuda(
            x,
            torch.ones(3, 3),
            up=(1, 1),
            down=(1, 1),
            padding=(-2, -2, 0, 0),
            flip_filter=False,
            gain=1.0,
            plugin=emu,
        )
    # A filter that requires grad takes the reference path (the kernel has no filter gradient).
    f = torch.ones(2, 2, requires_grad=True)
    y = upfirdn2d_cuda(
        x, f, up=(1, 1), down=(1, 1), padding=(0, 0, 0, 0), flip_filter=False, gain=1.0, plugin=None
    )
    y.sum().backward()
    assert f.grad is not None


# --------------------------------------------------------------------------------------------------
# Adjoint parameters (pure Python; fast)


def _adjoint_cases():
    h, w = 6, 5
    for f_shape, up, down, pad in itertools.product(
        [(1,), (2,), (4,), (5,), (3, 3), (2, 4), (4, 1), (1, 3)], UP, DOWN, PAD
    ):
        fh, fw = (f_shape[0], f_shape[0]) if len(f_shape) == 1 else f_shape
        if _valid(h, w, fh, fw, up, down, pad):
            yield h, w, f_shape, up, down, pad


def test_adjoint_params_match_autograd() -> None:
    """upfirdn2d_ref(dy, f, **adjoint_params(...)) == autograd's dL/dx of upfirdn2d_ref, over 1-D/2-D,
    non-square filters, up/down per axis, padding incl. negative, flip and gain."""
    g = torch.Generator().manual_seed(5)
    count = 0
    for h, w, f_shape, up, down, pad in _adjoint_cases():
        f = torch.randn(f_shape, generator=g, dtype=torch.float64)
        fh, fw = f.shape[0], f.shape[-1]
        for flip in (False, True):
            x = torch.randn(2, 1, h, w, generator=g, dtype=torch.float64, requires_grad=True)
            y = upfirdn2d_ref(x, f, up=up, down=down, padding=pad, flip_filter=flip, gain=1.3)
            dy = torch.randn(y.shape, generator=g, dtype=torch.float64)
            (want,) = torch.autograd.grad(y, x, dy)
            adj = adjoint_params(
                in_h=h, in_w=w, fw=fw, fh=fh, up=up, down=down, padding=pad, flip_filter=flip, gain=1.3
            )
            got = upfirdn2d_ref(dy, f, **adj)
            assert got.shape == x.shape, (f_shape, up, down, pad, flip, adj)
            torch.testing.assert_close(got, want, msg=lambda m, c=(f_shape, up, down, pad, flip): f"{c}: {m}")
            count += 1
    assert count > 500


def test_adjoint_of_adjoint_is_forward() -> None:
    """Applying adjoint_params twice gives back the forward parameters (same output length)."""
    for h, w, f_shape, up, down, pad in _adjoint_cases():
        fh, fw = (f_shape[0], f_shape[0]) if len(f_shape) == 1 else f_shape
        adj = adjoint_params(
            in_h=h, in_w=w, fw=fw, fh=fh, up=up, down=down, padding=pad, flip_filter=False, gain=1.0
        )
        out_w = output_size(w, up[0], down[0], pad[0], pad[1], fw)
        out_h = output_size(h, up[1], down[1], pad[2], pad[3], fh)
        back = adjoint_params(
            in_h=out_h,
            in_w=out_w,
            fw=fw,
            fh=fh,
            **{k: adj[k] for k in ("up", "down", "padding")},
            flip_filter=True,
            gain=1.0,
        )
        assert back["up"] == up and back["down"] == down and back["flip_filter"] is False
        # Padding of the double adjoint may differ from the original only by trailing samples that
        # the downsampling never reaches; the output length must be the same.
        assert output_size(w, up[0], down[0], back["padding"][0], back["padding"][1], fw) == out_w
        assert output_size(h, up[1], down[1], back["padding"][2], back["padding"][3], fh) == out_h
        assert back["padding"][0] == pad[0] and back["padding"][2] == pad[2]
