"""Throughput of the CUDA kernels vs the pure-PyTorch reference at StyleGAN2-256 shapes.

    python bench/ops.py [--out bench/results/ops.json] [--dtypes float32,float16] [--iters 50]

Times, per shape and dtype, the forward pass and forward+backward of

* ``bias_act`` (lrelu with bias, as after every conv) on ``[32, C, R, R]`` for R = 8 .. 256 with the
  StyleGAN2-256 channel counts;
* ``upsample2d`` / ``downsample2d`` / ``filter2d`` with the ``[1, 3, 3, 1]`` filter (R = the output
  resolution for upsampling, the input resolution otherwise),

with CUDA events after a warm-up, for the reference (``ref``), our kernels (``cuda``: upfirdn2d on its
shared-memory tiles) and, for the upfirdn2d ops, ``gather`` (the one-thread-per-output gather kernel, set
by :func:`bench.common.set_ops_hooks`), and prints a table (median milliseconds, speed-up) and writes
JSON with the machine's details. Without a GPU it says so, times the reference on the CPU for a couple of
small shapes, and exits 0.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.common import machine_info, set_ops_hooks, write_json  # noqa: E402
from stylegan_ops import bias_act, downsample2d, filter2d, setup_filter, upsample2d  # noqa: E402

BATCH = 32
# Resolution -> channels of StyleGAN2 config F at 256x256: min(32768 // res, 512).
CHANNELS = {res: min(32768 // res, 512) for res in (8, 16, 32, 64, 128, 256)}
BIAS_ACT_SHAPES = [(BATCH, c, res, res) for res, c in CHANNELS.items()]
RESAMPLE_RES = [8, 16, 32, 64, 128, 256]
DEFAULT_OUT = REPO / "bench" / "results" / "ops.json"
GPU_IMPLS = ["ref", "cuda", "gather"]  # gather: upfirdn2d rows only


def _time_cuda(fn: Callable[[], Any], warmup: int, iters: int) -> float:
    """Median milliseconds of ``fn`` on the current CUDA stream (CUDA events, after warm-up)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _time_cpu(fn: Callable[[], Any], warmup: int, iters: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _cases(device: torch.device, dtype: torch.dtype, small: bool) -> list[dict[str, Any]]:
    """(op, shape, callables per impl) for every benchmark case."""
    f = setup_filter([1, 3, 3, 1], device=device)
    cases: list[dict[str, Any]] = []
    shapes = BIAS_ACT_SHAPES[:2] if small else BIAS_ACT_SHAPES
    for shape in shapes:
        if small:
            shape = (2, *shape[1:])

        def make(shape=shape):
            x = torch.randn(shape, device=device, dtype=dtype, requires_grad=True)
            b = torch.zeros(shape[1], device=device, dtype=dtype, requires_grad=True)
            return (x, b)

        cases.append({"op": "bias_act lrelu", "shape": list(shape), "make": make,
                      "fn": lambda t, impl: bias_act(t[0], t[1], act="lrelu", impl=impl)})  # fmt: skip
    resolutions = RESAMPLE_RES[:2] if small else RESAMPLE_RES
    for res in resolutions:
        n = 2 if small else BATCH
        c = CHANNELS[res]
        for op, in_res, fn in [
            ("upsample2d", res // 2, lambda t, impl: upsample2d(t[0], f, impl=impl)),
            ("downsample2d", res, lambda t, impl: downsample2d(t[0], f, impl=impl)),
            ("filter2d", res, lambda t, impl: filter2d(t[0], f, impl=impl)),
        ]:
            shape = (n, c, in_res, in_res)

            def make(shape=shape):
                return (torch.randn(shape, device=device, dtype=dtype, requires_grad=True),)

            cases.append({"op": op, "shape": list(shape), "make": make, "fn": fn})
    return cases


def _bench_case(case: dict[str, Any], impls: list[str], timer, warmup: int, iters: int) -> dict[str, Any]:
    inputs = case["make"]()
    row: dict[str, Any] = {"op": case["op"], "shape": case["shape"]}
    for impl in impls:
        if impl == "gather" and case["op"].startswith("bias_act"):
            continue  # gather vs tiles is upfirdn2d's choice
        impl_arg = "cuda" if impl == "gather" else impl

        def fwd(impl=impl_arg):
            with torch.no_grad():
                case["fn"](inputs, impl)

        def fwd_bwd(impl=impl_arg):
            y = case["fn"](inputs, impl)
            torch.autograd.grad(y, inputs, torch.ones_like(y))

        set_ops_hooks(kernel="gather" if impl == "gather" else "auto")
        row[f"{impl}_fwd_ms"] = timer(fwd, warmup, iters)
        row[f"{impl}_fwd_bwd_ms"] = timer(fwd_bwd, warmup, iters)
    set_ops_hooks()
    if "cuda" in impls:
        row["speedup_fwd"] = row["ref_fwd_ms"] / row["cuda_fwd_ms"]
        row["speedup_fwd_bwd"] = row["ref_fwd_bwd_ms"] / row["cuda_fwd_bwd_ms"]
    return row


def _print_table(rows: list[dict[str, Any]], impls: list[str]) -> None:
    cols = ["dtype", "op", "shape"]
    for impl in impls:
        cols += [f"{impl}_fwd_ms", f"{impl}_fwd_bwd_ms"]
    if "cuda" in impls:
        cols += ["speedup_fwd", "speedup_fwd_bwd"]

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3f}"
        if isinstance(v, list):
            return "x".join(str(i) for i in v)
        return str(v)

    table = [cols] + [[fmt(r.get(c, "-")) for c in cols] for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(cols))]
    for i, line in enumerate(table):
        cells = [
            cell.rjust(w) if j > 2 else cell.ljust(w)
            for j, (cell, w) in enumerate(zip(line, widths, strict=True))
        ]
        print("  ".join(cells))
        if i == 0:
            print("  ".join("-" * w for w in widths))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, default=None, help=f"JSON output (default on a GPU: {DEFAULT_OUT})"
    )
    parser.add_argument("--dtypes", default="float32,float16", help="comma-separated: float32, float16")
    parser.add_argument("--iters", type=int, default=50, help="timed iterations per case (median reported)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed iterations first")
    args = parser.parse_args(argv)

    dtypes = [getattr(torch, name.strip()) for name in args.dtypes.split(",") if name.strip()]
    info = machine_info()
    if not torch.cuda.is_available():
        print("no GPU: nothing to compare (the CUDA kernels need a CUDA build of torch and a GPU).")
        print("Timing the reference implementation on the CPU for a couple of small shapes instead:\n")
        rows = []
        for case in _cases(torch.device("cpu"), torch.float32, small=True):
            rows.append({"dtype": "float32", **_bench_case(case, ["ref"], _time_cpu, 1, 3)})
        _print_table(rows, ["ref"])
        if args.out is not None:
            write_json(args.out, {"machine": info, "results": rows, "note": "no GPU: reference on CPU only"})
        return 0

    from stylegan_ops import build

    for name in build.OPS:
        build.get_plugin(name, required=True)  # build up front, outside the timings
    arch = "sm_" + info["capability"].replace(".", "")
    print(f"{info['gpu']} ({arch}), torch {info['torch']}, CUDA {info['cuda']}")
    print(f"batch {BATCH}, median of {args.iters} iterations after {args.warmup} warm-up, milliseconds\n")
    rows = []
    for dtype in dtypes:
        for case in _cases(torch.device("cuda"), dtype, small=False):
            row = _bench_case(case, GPU_IMPLS, _time_cuda, args.warmup, args.iters)
            rows.append({"dtype": str(dtype).replace("torch.", ""), **row})
            torch.cuda.empty_cache()
    _print_table(rows, GPU_IMPLS)
    record = {"machine": info, "batch": BATCH, "iters": args.iters, "results": rows}
    write_json(args.out or DEFAULT_OUT, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
