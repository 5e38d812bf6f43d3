"""How many Neumann terms should ``parameterization: neumann`` (orthogonal finetuning) use?

``R_n = (I - Q) sum_{i=0..n} (-Q)^i`` with ``Q`` skew. Since ``(I + Q) sum_{i<=n} (-Q)^i = I - (-Q)^(n+1)``,
``R_n = C (I - E)`` with ``C`` the exact Cayley transform and ``E = (-Q)^(n+1)``, so
``R_n^T R_n - I = -(E + E^T) + E^T E``. For odd ``n`` (even power) ``E^T = E``: the error is ``-2E + E^2``,
order ``n + 1``. For even ``n`` (odd power) ``E^T = -E``: the linear terms cancel and the error is
``E^T E = -Q^(2(n+1))``, order ``2(n + 1)``. So 5 terms (order 6) are no better than 2 (order 6), and 4
(order 10) beat 5 at one matrix product less.

This script measures it: for random skew blocks ``Q`` (block size 32, float64) scaled to a spectral norm
``s``, the orthogonality error ``||R_n^T R_n - I||_F`` per ``n``, its observed order (the slope of
log error against log s), and the time of one ``cayley_neumann`` call on the blocks of a 512-channel 3x3
layer (144 blocks of 32, float32, one CPU thread) against the exact Cayley solve.

    python bench/neumann_terms.py [--out bench/results/neumann-terms.md]
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch

from rootedgan.training.orthogonal import cayley, cayley_neumann, skew_from_triu

SCALES = (0.02, 0.05, 0.1, 0.2, 0.4)
TERMS = tuple(range(1, 9))


def skew_blocks(n: int, b: int, spectral: float, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    q = skew_from_triu(torch.randn(n, b * (b - 1) // 2, generator=gen, dtype=torch.float64), b)
    q = q / torch.linalg.matrix_norm(q, ord=2).amax()
    return (spectral * q).to(dtype)


def orth_error(r: torch.Tensor) -> float:
    eye = torch.eye(r.shape[-1], dtype=r.dtype)
    return float((r.transpose(-1, -2) @ r - eye).square().sum().sqrt())


def seconds(fn, repeat: int = 20) -> float:
    fn()
    best = math.inf
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeat):
            fn()
        best = min(best, (time.perf_counter() - start) / repeat)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="also write the markdown here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    errors = {n: [orth_error(cayley_neumann(skew_blocks(16, 32, s), n)) for s in SCALES] for n in TERMS}
    layer = skew_blocks(144, 32, 0.1, dtype=torch.float32)
    exact_s = seconds(lambda: cayley(layer))
    lines = [
        "| terms n | predicted order | observed order | "
        + " | ".join(f"‖Q‖₂ = {s:g}" for s in SCALES)
        + " | time per layer (ms) |",
        "| ---: | ---: | ---: | " + " | ".join("---:" for _ in SCALES) + " | ---: |",
    ]
    for n in TERMS:
        predicted = 2 * (n + 1) if n % 2 == 0 else n + 1
        errs = np.array(errors[n])
        ok = errs > 1e-13  # below that the float64 rounding floor hides the order
        slope = (
            np.polyfit(np.log(np.array(SCALES)[ok]), np.log(errs[ok]), 1)[0] if ok.sum() >= 2 else math.nan
        )
        ms = 1e3 * seconds(lambda n=n: cayley_neumann(layer, n))
        cells = " | ".join(f"{e:.1e}" for e in errs)
        lines.append(f"| {n} | {predicted} | {slope:.1f} | {cells} | {ms:.2f} |")
    lines += [
        "",
        "‖R_n^T R_n − I‖_F over 16 random skew blocks of 32 (float64), scaled to spectral norm ‖Q‖₂; "
        "observed order: least-squares slope of log error against log ‖Q‖₂ (points above 1e-13). "
        "Time: one call on the 144 blocks of a 512-channel 3x3 layer, float32, one thread (best of "
        f"3 x 20); the exact Cayley solve takes {1e3 * exact_s:.2f} ms.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
