"""Statistics over seeds: mean/std bands on a common kimg grid, threshold crossings and the summary.

Conventions (stated again in the rendered table): "std" is the sample standard deviation over seeds
(``ddof=1``; NaN with one seed); curves are compared on kimg, linearly interpolated between logged points.
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


def common_grid(curves: Sequence[Curve]) -> np.ndarray:
    """Union of the curves' kimg points inside the range all of them cover (``[0]``-length if none)."""
    curves = [c for c in curves if len(c)]
    if not curves:
        return np.zeros(0)
    lo = max(float(c.kimg[0]) for c in curves)
    hi = min(float(c.kimg[-1]) for c in curves)
    points = np.unique(np.concatenate([c.kimg for c in curves]))
    return points[(points >= lo) & (points <= hi)]


def band(curves: Sequence[Curve]) -> Band:
    """Per-kimg mean and sample std (ddof=1) of ``curves`` (each linearly interpolated onto the common
    grid, so seeds logged at different kimg can be averaged)."""
    curves = [c for c in curves if len(c)]
    grid = common_grid(curves)
    if len(grid) == 0:
        empty = np.zeros(0)
        return Band(empty, empty, empty, len(curves))
    stacked = np.stack([np.interp(grid, c.kimg, c.value) for c in curves])
    std = stacked.std(axis=0, ddof=1) if len(curves) > 1 else np.full(len(grid), math.nan)
    return Band(grid, stacked.mean(axis=0), std, len(curves))


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
    baseline: str | None = None,
    wall_s: Mapping[str, Sequence[float]] | None = None,
) -> dict[str, Any]:
    """Summary per loss of one metric's curves ``curves[loss][seed]``.

    Per loss: ``start`` (first logged value), ``final`` (last value), ``best`` (lowest, or highest with
    ``lower_is_better=False``) and the kimg of the final and best points, each as :func:`mean_std` over
    seeds; ``kimg_to_threshold``: :func:`crossing_kimg` per seed (``values`` holds None for a seed that
    never reached it; mean/std over those that did, ``reached`` of ``n``); ``wall_s`` per run if given.

    The threshold is ``threshold`` if given, else the mean final value of ``baseline`` (default: the
    first loss), i.e. "how soon does each loss get as good as the baseline ends up".
    """
    if not curves:
        raise ValueError("summarize: no curves")
    names = list(curves)
    if threshold is None:
        baseline = baseline if baseline is not None else names[0]
        if baseline not in curves:
            raise ValueError(f"baseline {baseline!r} is not among the losses {names}")
        finals = [float(c.value[-1]) for c in curves[baseline].values() if len(c)]
        threshold = mean_std(finals)["mean"]
        rule = f"the mean final value of the baseline `{baseline}`"
    else:
        baseline = None
        rule = "given"
    losses: dict[str, Any] = {}
    for name, by_seed in curves.items():
        seeds = sorted(s for s, c in by_seed.items() if len(c))
        series = [by_seed[s] for s in seeds]
        bests = [best_value(c, lower_is_better) for c in series]
        crossings = (
            [crossing_kimg(c, threshold, lower_is_better) for c in series]
            if math.isfinite(threshold)
            else [None] * len(series)
        )
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
            "wall_s": mean_std(list(wall_s[name])) if wall_s and wall_s.get(name) else None,
        }
    return {
        "lower_is_better": lower_is_better,
        "threshold": {"value": float(threshold), "rule": rule, "baseline": baseline},
        "losses": losses,
    }
