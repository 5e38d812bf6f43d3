"""Cost of discriminator augmentation per training step at 256x256 (rootedgan.training.augment).

    python bench/augment.py [--device cpu|cuda] [--batches 8,32] [--repeats N] [--warmup N]
                            [--threads N] [--out bench/results/augment.json]

Times, for each pipeline (ADA ``bgc`` at p = 0, 0.2 and 1, DiffAugment ``color,translation,cutout``) and
batch size, the three ways a training step uses it:

* ``fwd``: augment images that need no gradient (D's phase: reals, detached fakes);
* ``fwd+bwd``: augment and back-propagate to the images (G's phase: the gradient reaches G through it);
* ``r1``: R1's double backward through it: ``g = d/dx sum(w * aug(x)^2)`` with ``create_graph``, then
  backward of ``|g|^2`` (the elementwise square stands in for D so the numbers are the augmentation's).

p = 1 is measured at the largest p below 1 (p stays in [0, 1)). Each measurement draws new augmentation
parameters (seeded per repeat, the same for every mode); the median (and, in ``min_ms``, the minimum) over
``--repeats`` is reported in milliseconds per step, after ``--warmup`` untimed calls; CUDA is synchronised
around each call. p = 0 returns the input untouched, so its row is the cost of the stand-in D alone.
``--quick``: batch 2, one repeat (a smoke run; numbers not for reporting).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from bench.common import machine_info, write_json  # noqa: E402
from rootedgan.training.augment import P_MAX, AugmentPipe, DiffAugment  # noqa: E402

DEFAULT_OUT = REPO / "bench" / "results" / "augment.json"
RESOLUTION = 256
MODES = ("fwd", "fwd+bwd", "r1")


def pipelines() -> list[tuple[str, float | None, torch.nn.Module]]:
    """``(name, p, module)`` of every pipeline measured."""
    return [
        ("ada-bgc", 0.0, AugmentPipe("bgc", p=0.0)),
        ("ada-bgc", 0.2, AugmentPipe("bgc", p=0.2)),
        ("ada-bgc", 1.0, AugmentPipe("bgc", p=P_MAX)),
        ("diffaugment", None, DiffAugment("color,translation,cutout")),
    ]


def step_fn(pipe: torch.nn.Module, x: torch.Tensor, w: torch.Tensor, mode: str) -> Callable[[], Any]:
    """One use of ``pipe`` on ``x`` the way ``mode`` describes."""

    def fwd() -> Any:
        return pipe(x)

    def fwd_bwd() -> Any:
        xr = x.detach().requires_grad_(True)
        (pipe(xr) * w).sum().backward()
        return xr.grad

    def r1() -> Any:
        xr = x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad((pipe(xr).square() * w).sum(), xr, create_graph=True)
        g.square().sum().backward()
        return xr.grad

    return {"fwd": fwd, "fwd+bwd": fwd_bwd, "r1": r1}[mode]


def measure(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int) -> list[float]:
    """Milliseconds of ``fn`` per call, seeded per call (warm-up calls use other seeds)."""
    times = []
    for i in range(-warmup, repeats):
        torch.manual_seed(1000 + i)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= 0:
            times.append((time.perf_counter() - start) * 1000)
    return times


def column(mode: str) -> str:
    return mode.replace("+", "_") + "_ms"


def report(rows: list[dict[str, Any]]) -> None:
    print(f"\nmilliseconds per step at {RESOLUTION}x{RESOLUTION}: median of the repeats [minimum]")
    header = f"{'pipeline':<12} {'p':>4} {'batch':>5}" + "".join(f" {m:>20}" for m in MODES)
    print(header)
    print("-" * len(header))
    for r in rows:
        p = "-" if r["p"] is None else f"{r['p']:g}"
        cells = "".join(" {:>20}".format(f"{r[column(m)]:.1f} [{r['min_ms'][m]:.1f}]") for m in MODES)
        print(f"{r['pipeline']:<12} {p:>4} {r['batch']:>5}{cells}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--batches", default="8,32", help="comma-separated batch sizes")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls (default: 3 CPU, 20 GPU)")
    parser.add_argument(
        "--warmup", type=int, default=None, help="untimed calls first (default: 1 CPU, 3 GPU)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    parser.add_argument("--quick", action="store_true", help="batch 2, one repeat: a smoke run")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no GPU: --device cuda needs a CUDA build of torch and a GPU", file=sys.stderr)
        return 2
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 20 if gpu else 3)
    warmup = args.warmup if args.warmup is not None else (3 if gpu else 1)
    batches = [2] if args.quick else [int(b) for b in args.batches.split(",") if b.strip()]

    info = machine_info()
    print(
        f"CPU: {info['cpu']} ({info['cpu_cores_usable']} cores, {info['torch_threads']} torch threads)",
        end="",
    )
    print(f", GPU: {info['gpu']}" if gpu else "", f"torch {info['torch']}", sep=", ")
    load_before = [round(v, 2) for v in os.getloadavg()]
    rows = []
    for batch in batches:
        gen = torch.Generator().manual_seed(batch)
        x = (torch.rand(batch, 3, RESOLUTION, RESOLUTION, generator=gen) * 2 - 1).to(device)
        w = torch.randn(x.shape, generator=gen).to(device)
        for name, p, pipe in pipelines():
            pipe.to(device)
            row: dict[str, Any] = dict(pipeline=name, p=p, batch=batch, min_ms={})
            for mode in MODES:
                times = measure(step_fn(pipe, x, w, mode), device, repeats, warmup)
                row[column(mode)] = statistics.median(times)
                row["min_ms"][mode] = min(times)
                print(f"  {name} p={p} batch {batch} {mode}: {row[column(mode)]:.1f} ms", flush=True)
            rows.append(row)
    report(rows)
    load_after = [round(v, 2) for v in os.getloadavg()]
    print(f"\nload average before {load_before}, after {load_after}")
    record = {
        "machine": info,
        "device": str(device),
        "resolution": RESOLUTION,
        "repeats": repeats,
        "warmup": warmup,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "env": {k: os.environ[k] for k in ("STYLEGAN_OPS_IMPL", "OMP_NUM_THREADS") if k in os.environ},
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "results": rows,
    }
    write_json(args.out, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
