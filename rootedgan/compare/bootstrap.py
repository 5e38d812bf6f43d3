"""Statistics over seeds: bands on a common kimg grid, crossings, areas, spikes, bootstrap CIs, sign flips.

"std" is the sample standard deviation over seeds (``ddof=1``; NaN with one seed); curves are compared on
kimg, linearly interpolated between logged points. Bootstrap intervals are percentile intervals from numpy's
PCG64 seeded with ``seed`` (the same data give the same intervals).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rootedgan.compare.curves import Curve


@dataclass(frozen=True)
class Band:
    """Mean and sample std of several curves on a common grid: ``kimg, mean, std`` all ``[T]``."""

    kimg: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    n: int


def _on_grid(curves: Sequence[Curve]) -> tuple[np.ndarray, np.ndarray]:
    """The common grid ``[T]`` of the non-empty curves (the union of their kimg inside the range all of them
    cover) and those curves interpolated onto it, ``[n, T]``."""
    curves = [c for c in curves if len(c)]
    if not curves:
        return np.zeros(0), np.zeros((0, 0))
    lo, hi = max(float(c.kimg[0]) for c in curves), min(float(c.kimg[-1]) for c in curves)
    points = np.unique(np.concatenate([c.kimg for c in curves]))
    grid = points[(points >= lo) & (points <= hi)]
    return grid, np.array([np.interp(grid, c.kimg, c.value) for c in curves])


def band(curves: Sequence[Curve]) -> Band:
    """Per-kimg mean and sample std (ddof=1) of ``curves`` on their common grid (seeds logged at different
    kimg can be averaged)."""
    grid, stacked = _on_grid(curves)
    n = len(stacked)
    if len(grid) == 0:
        return Band(grid, grid, grid, n)
    std = stacked.std(axis=0, ddof=1) if n > 1 else np.full(len(grid), math.nan)
    return Band(grid, stacked.mean(axis=0), std, n)


def mean_std(values: Sequence[float]) -> dict[str, Any]:
    """``{"mean", "std" (ddof=1; NaN for fewer than 2 values), "n", "values"}``; NaN mean when empty."""
    arr = np.asarray(values, dtype=np.float64)
    mean = float(arr.mean()) if len(arr) else math.nan
    std = float(arr.std(ddof=1)) if len(arr) > 1 else math.nan
    return {"mean": mean, "std": std, "n": len(arr), "values": [float(v) for v in arr]}


def crossing_kimg(curve: Curve, threshold: float, lower_is_better: bool = True) -> float | None:
    """First kimg at which ``curve`` reaches ``threshold`` (``<=`` when lower is better, else ``>=``),
    linearly interpolated between the logged point before and the first point that reaches it;
    ``None`` if it never does."""
    reached = curve.value <= threshold if lower_is_better else curve.value >= threshold
    hits = np.flatnonzero(reached)
    if len(hits) == 0:
        return None
    i = int(hits[0])
    if i == 0:
        return float(curve.kimg[0])
    k0, k1 = float(curve.kimg[i - 1]), float(curve.kimg[i])
    v0, v1 = float(curve.value[i - 1]), float(curve.value[i])
    if not math.isfinite(v0) or v1 == v0:
        return k1
    return k0 + (threshold - v0) / (v1 - v0) * (k1 - k0)


def best_value(curve: Curve, lower_is_better: bool = True) -> tuple[float, float]:
    """``(value, kimg)`` of the best finite point (NaN, NaN if there is none)."""
    finite = np.flatnonzero(np.isfinite(curve.value))
    if len(finite) == 0:
        return math.nan, math.nan
    values = curve.value[finite]
    j = int(finite[np.argmin(values) if lower_is_better else np.argmax(values)])
    return float(curve.value[j]), float(curve.kimg[j])


def summarize(
    curves: Mapping[str, Mapping[int, Curve]],
    lower_is_better: bool = True,
    threshold: float | None = None,
    wall_s: Mapping[str, Sequence[float]] | None = None,
) -> dict[str, Any]:
    """Per loss, :func:`mean_std` over seeds of one metric's ``start``, ``final``, ``best`` values and the
    kimg of the final and best points, of ``wall_s`` per run, and of the kimg to reach the threshold
    (``values`` per seed, None for a seed that never did; ``reached`` of ``n``). The threshold is
    ``threshold``, else the mean final value of the baseline (the first loss)."""
    if not curves:
        raise ValueError("summarize: no curves")
    baseline, rule = None, "given"
    if threshold is None:
        baseline = next(iter(curves))
        threshold = mean_std([float(c.value[-1]) for c in curves[baseline].values() if len(c)])["mean"]
        rule = f"the mean final value of the baseline `{baseline}`"
    losses: dict[str, Any] = {}
    for name, by_seed in curves.items():
        seeds = sorted(s for s, c in by_seed.items() if len(c))
        series = [by_seed[s] for s in seeds]
        bests = [best_value(c, lower_is_better) for c in series]
        finite = math.isfinite(threshold)
        crossings = [crossing_kimg(c, threshold, lower_is_better) if finite else None for c in series]
        reached = [k for k in crossings if k is not None]
        to_threshold = mean_std(reached)
        to_threshold.update(values=crossings, reached=len(reached), n=len(series))
        losses[name] = {
            "seeds": seeds,
            "start": mean_std([float(c.value[0]) for c in series]),
            "final": mean_std([float(c.value[-1]) for c in series]),
            "final_kimg": mean_std([float(c.kimg[-1]) for c in series]),
            "best": mean_std([b[0] for b in bests]),
            "best_kimg": mean_std([b[1] for b in bests]),
            "kimg_to_threshold": to_threshold,
            "wall_s": mean_std(wall_s[name]) if wall_s and wall_s.get(name) else None,
        }
    return {
        "lower_is_better": lower_is_better,
        "threshold": {"value": float(threshold), "rule": rule, "baseline": baseline},
        "losses": losses,
    }


#: Bootstrap defaults of the comparison.
N_RESAMPLES = 10_000
CONFIDENCE = 0.95
BOOTSTRAP_SEED = 0


def auc(curve: Curve, lo: float | None = None, hi: float | None = None) -> float:
    """Area under ``curve`` against kimg on ``[lo, hi]`` (default: its first/last kimg), trapezoids between
    the logged points; a curve that ends early is continued at its last value (and back at its first).
    NaN when a value inside the range is not finite or the curve is empty."""
    if not len(curve):
        return math.nan
    lo = float(curve.kimg[0]) if lo is None else float(lo)
    hi = float(curve.kimg[-1]) if hi is None else float(hi)
    if hi < lo:
        raise ValueError(f"auc: hi={hi} < lo={lo}")
    inside = (curve.kimg > lo) & (curve.kimg < hi)
    kimg = np.concatenate([[lo], curve.kimg[inside], [hi]])
    value = np.interp(kimg, curve.kimg, curve.value)
    if not np.all(np.isfinite(value)):
        return math.nan
    return float(np.sum((kimg[1:] - kimg[:-1]) * (value[1:] + value[:-1]) / 2))


def spikes(
    curve: Curve, factor: float = 10.0, window: int = 50, min_history: int = 5, floor: float = 0.0
) -> np.ndarray:
    """Indices of a loss curve's spikes: ``value - floor > factor * m``, ``m`` the median of ``value - floor``
    over the (up to) ``window`` finite points before it (at least ``min_history``). ``floor``: the loss's
    lower bound (``k`` for a rooted G loss). Non-finite points are neither spikes nor in the medians."""
    excess = curve.value - floor
    finite = np.flatnonzero(np.isfinite(excess))
    hits = []
    for j, i in enumerate(finite):
        history = excess[finite[max(0, j - window) : j]]
        if len(history) >= min_history and excess[i] > factor * float(np.median(history)):
            hits.append(int(i))
    return np.array(hits, dtype=np.int64)


def bootstrap_ci(
    values: Sequence[float],
    confidence: float = CONFIDENCE,
    n_resamples: int = N_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> dict[str, Any]:
    """``{"mean", "lo", "hi", "n", "std", "values"}``: the mean with a percentile bootstrap CI (the ``(1 -/+
    confidence) / 2`` quantiles of ``n_resamples`` resample means) and the std (ddof 1); NaN bounds for
    fewer than 2 values. Non-finite values are an error: decide what a missing value means first."""
    arr = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"bootstrap_ci: non-finite values {arr.tolist()}")
    out = {**mean_std(arr), "lo": math.nan, "hi": math.nan}
    if len(arr) > 1:
        lo, hi = _interval(arr, confidence, n_resamples, seed)
        out.update(lo=float(lo), hi=float(hi))
    return out


def bootstrap_means(values: np.ndarray, n_resamples: int = N_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> Any:
    """Means of ``n_resamples`` resamples (with replacement) along the first axis of ``values``
    (``[n]`` or ``[n, T]``: all columns share each resample's indices); ``[n_resamples(, T)]``."""
    values = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(n_resamples, len(values)))
    return values[idx].mean(axis=1)


def _interval(values: np.ndarray, confidence: float, n_resamples: int, seed: int) -> Any:
    """``(lo, hi)``: the percentile bootstrap interval of the mean of ``values`` (per column)."""
    alpha = 1 - confidence
    return np.quantile(bootstrap_means(values, n_resamples, seed), [alpha / 2, 1 - alpha / 2], axis=0)


def sign_flip_p(diffs: Sequence[float], exact_up_to: int = 16, n_resamples: int = N_RESAMPLES) -> float:
    """Two-sided p-value of the paired sign-flip test of "mean difference = 0": the share of the ``2^n`` sign
    patterns whose ``|mean|`` is at least the observed one (exact up to ``exact_up_to`` pairs, else Monte
    Carlo counting the observed pattern); it cannot go below ``2 / 2^n``."""
    d = np.asarray(diffs, dtype=np.float64)
    if len(d) == 0 or not np.all(np.isfinite(d)):
        return math.nan
    observed = abs(d.mean())
    tol = 1e-12 * max(1.0, float(np.abs(d).max()))
    if len(d) <= exact_up_to:
        signs = 1 - 2 * ((np.arange(2 ** len(d))[:, None] >> np.arange(len(d))) & 1)
        return float(np.mean(np.abs((signs * d).mean(axis=1)) >= observed - tol))
    signs = np.random.default_rng(BOOTSTRAP_SEED).choice([-1.0, 1.0], size=(n_resamples, len(d)))
    stats = np.abs((signs * d).mean(axis=1))
    return float((np.sum(stats >= observed - tol) + 1) / (n_resamples + 1))


def paired_difference(
    arm: Mapping[int, float],
    baseline: Mapping[int, float],
    lower_is_better: bool = True,
    confidence: float = CONFIDENCE,
    n_resamples: int = N_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> dict[str, Any]:
    """``arm - baseline`` per seed both have (finite), its mean with a bootstrap CI over seeds
    (:func:`bootstrap_ci`), the sign-flip p-value (:func:`sign_flip_p`) and the number of seeds on which
    the arm was better (lower, or higher with ``lower_is_better=False``)."""
    seeds = sorted(s for s in arm if s in baseline and math.isfinite(arm[s]) and math.isfinite(baseline[s]))
    diffs = [float(arm[s]) - float(baseline[s]) for s in seeds]
    out = bootstrap_ci(diffs, confidence, n_resamples, seed)
    better = sum((d < 0) if lower_is_better else (d > 0) for d in diffs)
    out.update(seeds=seeds, p_sign_flip=sign_flip_p(diffs), better=int(better))
    return out


def ci_band(
    curves: Sequence[Curve],
    confidence: float = CONFIDENCE,
    n_resamples: int = N_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> dict[str, np.ndarray]:
    """Pointwise mean and bootstrap CI of the mean of ``curves`` on their common grid, every grid point
    with the same resamples of the curves; ``{"kimg", "mean", "lo", "hi"}`` (``lo``/``hi`` NaN for one)."""
    grid, stacked = _on_grid(curves)
    if len(grid) == 0:
        return {"kimg": grid, "mean": grid, "lo": grid, "hi": grid}
    mean = stacked.mean(axis=0)
    if len(stacked) < 2:
        nan = np.full(len(grid), math.nan)
        return {"kimg": grid, "mean": mean, "lo": nan, "hi": nan}
    lo, hi = _interval(stacked, confidence, n_resamples, seed)
    return {"kimg": grid, "mean": mean, "lo": lo, "hi": hi}
