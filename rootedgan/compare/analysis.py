"""Per-run summaries of a comparison, their statistics per arm, and paired differences against a baseline.

An *arm* is one training setting (a loss, maybe at a learning-rate multiplier), run once per seed. Per run
(:func:`run_summary`): of the metric's curve ``auc`` and ``auc_mean`` (its average level), ``start``,
``final``, ``best`` and ``to_target[T]`` (first kimg reaching each target, interpolated; None if never); of
the losses ``spikes`` (measured above the loss's lower bound, so rooted's ``k`` does not hide them) and
``nonfinite`` (non-finite logged G, D, R1 and path-length losses, each a skipped phase, and the last
``Progress/nonfinite_frac``, which also counts phases skipped for a non-finite gradient). Per arm
(:func:`arm_statistics`) means with bootstrap CIs; against the baseline (:func:`paired_statistics`) per-seed
differences. A run that never reached ``T`` counts as reaching it at its end (the mean is a lower bound).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from rootedgan.compare import bootstrap
from rootedgan.compare.curves import Curve
from rootedgan.training.losses import make_loss
from rootedgan.training.settings import migrate

G_LOSS, D_LOSS = "Loss/G/loss", "Loss/D/loss"
PHASE_LOSSES = (G_LOSS, D_LOSS, "Loss/r1_penalty", "Loss/pl_penalty")
NONFINITE_FRAC = "Progress/nonfinite_frac"
#: Per-run values with a mean and CI per arm, and paired differences (``primary`` is one of them).
VALUE_KEYS = ("auc_mean", "final", "best")
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
    """The loss settings in a run's ``hparams.yaml`` (any settings version), else ``default``."""
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
) -> dict[str, Any]:
    """The summary of one run (module docstring) from its curves ``{logged key: Curve}``. ``span``: the kimg
    range of the area (default: the metric's; give the planned length, so a run that stopped early is
    continued at its last value); ``floors``: the G and D losses' lower bounds (:func:`loss_floors`)."""
    curve = curves[metric]
    if not len(curve):
        raise ValueError(f"run_summary: {metric} has no points")
    lo, hi = span if span is not None else (float(curve.kimg[0]), float(curve.kimg[-1]))
    area = bootstrap.auc(curve, lo, hi)
    best, best_kimg = bootstrap.best_value(curve, lower_is_better)
    spike_info: dict[str, Any] = {}
    steps: set[float] = set()
    for name, key, floor in (("G", G_LOSS, floors[0]), ("D", D_LOSS, floors[1])):
        c = curves.get(key)
        if c is None or not len(c):
            spike_info[name] = None
            continue
        hits = [float(k) for k in c.kimg[bootstrap.spikes(c, SPIKE_FACTOR, SPIKE_WINDOW, floor=floor)]]
        steps.update(hits)
        finite = c.value[np.isfinite(c.value)]
        spike_info.update({name: len(hits), f"max_{name}": float(finite.max()) if len(finite) else math.nan})
        spike_info[f"kimg_{name}"] = hits
    frac = curves.get(NONFINITE_FRAC)
    return {
        "start": float(curve.value[0]),
        "final": float(curve.value[-1]),
        "final_kimg": float(curve.kimg[-1]),
        "best": best,
        "best_kimg": best_kimg,
        "auc": area,
        "auc_mean": area / (hi - lo) if hi > lo else float(curve.value[0]),
        "span": [lo, hi],
        "to_target": {target_key(t): bootstrap.crossing_kimg(curve, t, lower_is_better) for t in targets},
        "spikes": {**spike_info, "steps": len(steps)},
        "nonfinite": {
            "phases": sum(int(np.sum(~np.isfinite(curves[k].value))) for k in PHASE_LOSSES if k in curves),
            "frac": float(frac.value[-1]) if frac is not None and len(frac) else None,
        },
    }


def _censored(summary: Mapping[str, Any], target: float) -> tuple[float, bool]:
    """kimg to reach ``target``, or the run's end when it never did (and whether it did)."""
    reached = summary["to_target"].get(target_key(target))
    if reached is None:
        return float(summary["span"][1]), False
    return float(reached), True


def arm_statistics(
    summaries: Mapping[int, Mapping[str, Any]], targets: Sequence[float] = ()
) -> dict[str, Any]:
    """Means and bootstrap CIs over seeds of an arm's ``summaries[seed]``: ``values[key]`` (non-finite values
    left out, counted in ``dropped``), ``to_target[T]`` (censored; ``reached`` of ``n``), ``spikes`` (per
    run; total; runs with any) and ``nonfinite`` (total phases; runs with any; largest skipped share)."""
    seeds = sorted(summaries)

    def ci(values: list[float]) -> dict[str, Any]:
        finite = [v for v in values if math.isfinite(v)]
        out = bootstrap.bootstrap_ci(finite)
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
    nonfinite = {"total": int(sum(bad)), "runs_with": int(sum(b > 0 for b in bad)), "max_frac": max_frac}
    return {
        "seeds": seeds,
        "values": values,
        "to_target": to_target,
        "spikes": spike_stats,
        "nonfinite": nonfinite,
    }


def paired_statistics(
    arm: Mapping[int, Mapping[str, Any]],
    baseline: Mapping[int, Mapping[str, Any]],
    lower_is_better: bool = True,
    targets: Sequence[float] = (),
) -> dict[str, Any]:
    """Paired differences ``arm - baseline`` per seed (:func:`rootedgan.compare.bootstrap.paired_difference`)
    of every :data:`VALUE_KEYS` value, of the censored kimg to each target (fewer kimg is better) and of
    the spike count (fewer is better)."""

    def paired(value: Callable[[Mapping[str, Any]], float], lower: bool = True) -> dict[str, Any]:
        a, b = ({s: float(value(v)) for s, v in by_seed.items()} for by_seed in (arm, baseline))
        return bootstrap.paired_difference(a, b, lower)

    out: dict[str, Any] = {key: paired(lambda v, k=key: v[k], lower_is_better) for key in VALUE_KEYS}
    out["to_target"] = {target_key(t): paired(lambda v, t=t: _censored(v, t)[0]) for t in targets}
    out["spikes"] = paired(lambda v: v["spikes"]["steps"])
    return out


def select_learning_rates(
    summaries: Mapping[str, Mapping[float, Mapping[int, Mapping[str, Any] | None]]],
    primary: str = "auc_mean",
    lower_is_better: bool = True,
) -> dict[str, dict[str, Any]]:
    """Each loss's best learning-rate multiplier on the tuning seeds: ``{"lr", "eligible", "means": {lr:
    mean or None}, "failed": {lr: count}}`` per loss, from ``summaries[loss][lr][seed]`` (a run's
    :func:`run_summary`, None if it failed). Of the multipliers whose runs all have a finite ``primary``
    value the best mean wins (ties: the larger, cheaper to train); if there is none, the most finished
    runs, then the best mean, and ``eligible`` is False."""
    sign = 1.0 if lower_is_better else -1.0
    choice = {}
    for loss, by_lr in summaries.items():
        means: dict[float, float | None] = {}
        failed: dict[float, int] = {}
        for lr, by_seed in by_lr.items():
            vals = [r[primary] for r in by_seed.values() if r is not None]
            finite = [float(v) for v in vals if v is not None and math.isfinite(float(v))]
            failed[lr] = len(by_seed) - len(finite)
            means[lr] = float(np.mean(finite)) if finite else None
        scored = {lr: m for lr, m in means.items() if m is not None}
        eligible = [lr for lr in scored if failed[lr] == 0]
        if eligible:
            best = min(eligible, key=lambda lr: (sign * scored[lr], -lr))
        elif scored:  # the most finished runs, then the best mean
            best = min(scored, key=lambda lr: (failed[lr] - len(by_lr[lr]), sign * scored[lr], -lr))
        else:
            best = max(by_lr)
        choice[loss] = {
            "lr": best,
            "eligible": bool(eligible),
            "means": {f"{lr:g}": means[lr] for lr in by_lr},
            "failed": {f"{lr:g}": failed[lr] for lr in by_lr},
        }
    return choice
