"""Per-run summaries of a comparison, their statistics per arm, and paired differences against a baseline.

An *arm* is one training setting (a loss, possibly at a learning-rate multiplier); it is run once per
seed. Per run (:func:`run_summary`), of the quality metric's curve against kimg:

* ``auc``: area under the curve over the run (trapezoids; metric x kimg), and ``auc_mean`` = ``auc``
  divided by the kimg span: the curve's average level, in the metric's units;
* ``final`` and ``best`` values (and their kimg), ``start``;
* ``to_target[T]``: the first kimg at which the curve reaches each fixed target ``T`` (absolute values,
  linearly interpolated between evaluations; None if never);

and of the training losses ``Loss/G/loss``, ``Loss/D/loss``:

* ``spikes``: logged steps at which G's or D's loss exceeds ``spike_factor`` (10) times its running
  median (:func:`rootedgan.compare.bootstrap.spikes`; measured above the loss's lower bound, so rooted's
  constant ``k`` does not hide them);
* ``nonfinite``: ``phases``, the logged G, D, R1 and path-length losses that were not finite (each such
  phase was skipped by the training step), and ``frac``, the run's last ``Progress/nonfinite_frac``: the
  share of all phases skipped, which also counts phases with a finite loss but a non-finite gradient.

Per arm (:func:`arm_statistics`): mean over seeds with a percentile bootstrap 95 % CI. Against the
baseline (:func:`paired_statistics`): per-seed differences ``arm - baseline`` on the seeds both ran, their
mean with a bootstrap CI, the sign-flip p-value and the number of seeds the arm was better. For
``to_target``, a run that never reached ``T`` counts as reaching it at the end of the run (censored: the
mean is then a lower bound), and the number that reached it is given.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from rootedgan.compare.bootstrap import (
    BOOTSTRAP_SEED,
    CONFIDENCE,
    N_RESAMPLES,
    auc,
    best_value,
    bootstrap_ci,
    crossing_kimg,
    paired_difference,
    spikes,
)
from rootedgan.compare.curves import Curve
from rootedgan.training.losses import make_loss
from rootedgan.training.settings import migrate

G_LOSS, D_LOSS = "Loss/G/loss", "Loss/D/loss"
PHASE_LOSSES = (G_LOSS, D_LOSS, "Loss/r1_penalty", "Loss/pl_penalty")
NONFINITE_FRAC = "Progress/nonfinite_frac"
#: Per-run values with a mean and CI per arm, and paired differences (``primary`` is one of them).
VALUE_KEYS = ("auc_mean", "final", "best")
PRIMARY_CHOICES = {"auc": "auc_mean", "final": "final", "best": "best"}
SPIKE_FACTOR = 10.0
SPIKE_WINDOW = 50


def target_key(target: float) -> str:
    return f"{target:g}"


def loss_floors(loss: Any) -> tuple[float, float]:
    """Lower bounds of the logged G loss and D loss (two terms) of ``loss`` (a ``model.loss`` value)."""
    try:
        floor = make_loss(loss).lower_bound()
    except ValueError:
        return 0.0, 0.0
    return floor, 2 * floor


def run_loss(log_dir: str | Path, default: Any = None) -> Any:
    """The loss settings in a run's ``hparams.yaml`` (Lightning's copy of the module's settings, any
    version), else ``default``."""
    try:
        data = yaml.safe_load((Path(log_dir) / "hparams.yaml").read_text())
    except (OSError, yaml.YAMLError):
        data = None
    return migrate(data).get("loss", default) if isinstance(data, dict) else default


def run_summary(
    curves: Mapping[str, Curve],
    metric: str,
    lower_is_better: bool = True,
    targets: Sequence[float] = (),
    span: tuple[float, float] | None = None,
    floors: tuple[float, float] = (0.0, 0.0),
    spike_factor: float = SPIKE_FACTOR,
    spike_window: int = SPIKE_WINDOW,
) -> dict[str, Any]:
    """The summary of one run (module docstring) from its curves ``{logged key: Curve}``.

    ``span`` = ``(lo, hi)`` kimg of the area (default: the metric's first and last logged kimg; give the
    planned length so that a run that stopped early is continued at its last value, not cut short).
    ``floors``: lower bounds of the G and D losses (:func:`loss_floors`).
    """
    curve = curves[metric]
    if not len(curve):
        raise ValueError(f"run_summary: {metric} has no points")
    lo, hi = span if span is not None else (float(curve.kimg[0]), float(curve.kimg[-1]))
    area = auc(curve, lo, hi)
    best, best_kimg = best_value(curve, lower_is_better)
    out: dict[str, Any] = {
        "start": float(curve.value[0]),
        "final": float(curve.value[-1]),
        "final_kimg": float(curve.kimg[-1]),
        "best": best,
        "best_kimg": best_kimg,
        "auc": area,
        "auc_mean": area / (hi - lo) if hi > lo else float(curve.value[0]),
        "span": [lo, hi],
        "to_target": {target_key(t): crossing_kimg(curve, t, lower_is_better) for t in targets},
    }
    spike_info: dict[str, Any] = {}
    steps: set[float] = set()
    for name, key, floor in (("G", G_LOSS, floors[0]), ("D", D_LOSS, floors[1])):
        c = curves.get(key)
        if c is None or not len(c):
            spike_info[name] = None
            continue
        hits = spikes(c, spike_factor, spike_window, floor=floor)
        spike_info[name] = len(hits)
        steps.update(float(k) for k in c.kimg[hits])
        finite = c.value[np.isfinite(c.value)]
        spike_info[f"max_{name}"] = float(finite.max()) if len(finite) else math.nan
        spike_info[f"kimg_{name}"] = [float(k) for k in c.kimg[hits]]
    spike_info["steps"] = len(steps)
    out["spikes"] = spike_info
    bad = sum(int(np.sum(~np.isfinite(curves[k].value))) for k in PHASE_LOSSES if k in curves)
    frac = curves.get(NONFINITE_FRAC)
    out["nonfinite"] = {
        "phases": bad,
        "frac": float(frac.value[-1]) if frac is not None and len(frac) else None,
    }
    return out


def _censored(summary: Mapping[str, Any], target: float) -> tuple[float, bool]:
    """kimg to reach ``target``, or the run's end when it never did (and whether it did)."""
    reached = summary["to_target"].get(target_key(target))
    if reached is None:
        return float(summary["span"][1]), False
    return float(reached), True


def arm_statistics(
    summaries: Mapping[int, Mapping[str, Any]],
    targets: Sequence[float] = (),
    confidence: float = CONFIDENCE,
    n_resamples: int = N_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> dict[str, Any]:
    """Mean and bootstrap CI over seeds of an arm's per-run summaries ``summaries[seed]``.

    ``values[key]`` for :data:`VALUE_KEYS` (non-finite values are left out and counted in
    ``values[key]["dropped"]``), ``to_target[T]`` (censored at the run's end; ``reached`` of ``n``),
    ``spikes`` (mean per run with CI; total; runs with at least one) and ``nonfinite`` (total phases).
    """
    seeds = sorted(summaries)

    def ci(values: list[float]) -> dict[str, Any]:
        finite = [v for v in values if math.isfinite(v)]
        out = bootstrap_ci(finite, confidence, n_resamples, seed)
        out["dropped"] = len(values) - len(finite)
        return out

    values = {key: ci([float(summaries[s][key]) for s in seeds]) for key in VALUE_KEYS}
    to_target = {}
    for t in targets:
        pairs = [_censored(summaries[s], t) for s in seeds]
        entry = ci([k for k, _ in pairs])
        entry.update(reached=sum(r for _, r in pairs), censored=any(not r for _, r in pairs))
        to_target[target_key(t)] = entry
    spike_counts = [float(summaries[s]["spikes"]["steps"]) for s in seeds]
    spike_stats = ci(spike_counts)
    spike_stats.update(total=int(sum(spike_counts)), runs_with=int(sum(c > 0 for c in spike_counts)))
    max_g = [summaries[s]["spikes"].get("max_G") for s in seeds]
    spike_stats["max_G"] = max((v for v in max_g if v is not None and math.isfinite(v)), default=None)
    bad = [int(summaries[s]["nonfinite"]["phases"]) for s in seeds]
    fracs = [summaries[s]["nonfinite"].get("frac") for s in seeds]
    max_frac = max((float(f) for f in fracs if f is not None and math.isfinite(float(f))), default=None)
    return {
        "seeds": seeds,
        "values": values,
        "to_target": to_target,
        "spikes": spike_stats,
        "nonfinite": {
            "total": int(sum(bad)),
            "runs_with": int(sum(b > 0 for b in bad)),
            "max_frac": max_frac,
        },
    }


def paired_statistics(
    arm: Mapping[int, Mapping[str, Any]],
    baseline: Mapping[int, Mapping[str, Any]],
    lower_is_better: bool = True,
    targets: Sequence[float] = (),
    confidence: float = CONFIDENCE,
    n_resamples: int = N_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> dict[str, Any]:
    """Paired differences ``arm - baseline`` per seed (:func:`rootedgan.compare.bootstrap.paired_difference`)
    of every :data:`VALUE_KEYS` value, of the censored kimg to each target (fewer kimg is better) and of
    the spike count (fewer is better)."""

    def pick(by_seed: Mapping[int, Mapping[str, Any]], fn: Any) -> dict[int, float]:
        return {s: float(fn(v)) for s, v in by_seed.items()}

    out: dict[str, Any] = {}
    for key in VALUE_KEYS:
        out[key] = paired_difference(
            pick(arm, lambda v, k=key: v[k]),
            pick(baseline, lambda v, k=key: v[k]),
            lower_is_better,
            confidence,
            n_resamples,
            seed,
        )
    out["to_target"] = {
        target_key(t): paired_difference(
            pick(arm, lambda v, t=t: _censored(v, t)[0]),
            pick(baseline, lambda v, t=t: _censored(v, t)[0]),
            True,
            confidence,
            n_resamples,
            seed,
        )
        for t in targets
    }
    out["spikes"] = paired_difference(
        pick(arm, lambda v: v["spikes"]["steps"]),
        pick(baseline, lambda v: v["spikes"]["steps"]),
        True,
        confidence,
        n_resamples,
        seed,
    )
    return out


def select_learning_rates(
    summaries: Mapping[str, Mapping[float, Mapping[int, Mapping[str, Any] | None]]],
    primary: str = "auc_mean",
    lower_is_better: bool = True,
) -> dict[str, dict[str, Any]]:
    """Each loss's best learning-rate multiplier on the tuning seeds.

    ``summaries[loss][lr][seed]`` is a run's :func:`run_summary`, or None for a run that failed. A
    multiplier is eligible when all its runs finished with a finite ``primary`` value; of the eligible
    ones the best mean ``primary`` wins (ties: the larger multiplier, the cheaper one to train to a given
    quality). If none is eligible, the one with the most finished runs and then the best mean wins, and
    ``eligible`` is False. Returns per loss ``{"lr", "eligible", "means": {lr: mean or None},
    "failed": {lr: count}}``.
    """
    sign = 1.0 if lower_is_better else -1.0
    choice = {}
    for loss, by_lr in summaries.items():
        means: dict[float, float | None] = {}
        failed: dict[float, int] = {}
        finished: dict[float, int] = {}
        for lr, by_seed in by_lr.items():
            vals = [r[primary] for r in by_seed.values() if r is not None]
            finite = [float(v) for v in vals if v is not None and math.isfinite(float(v))]
            failed[lr] = len(by_seed) - len(finite)
            finished[lr] = len(finite)
            means[lr] = float(np.mean(finite)) if finite else None
        eligible = [lr for lr in by_lr if failed[lr] == 0 and means[lr] is not None]
        if eligible:
            best = min(eligible, key=lambda lr: (sign * means[lr], -lr))  # type: ignore[operator]
        else:
            scored = [lr for lr in by_lr if means[lr] is not None]
            if not scored:
                best = max(by_lr)
            else:
                best = min(scored, key=lambda lr: (-finished[lr], sign * means[lr], -lr))  # type: ignore[operator]
        choice[loss] = {
            "lr": best,
            "eligible": bool(eligible),
            "means": {f"{lr:g}": means[lr] for lr in by_lr},
            "failed": {f"{lr:g}": failed[lr] for lr in by_lr},
        }
    return choice
