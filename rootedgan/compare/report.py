"""The comparison's outputs (README, "Comparing losses"). ``runs[arm][seed]`` is a run's ``{logged key:
Curve}`` (:func:`rootedgan.compare.collect_run`); an arm is a loss, or a loss at a learning-rate multiplier
(``rooted:2@lr0.5``). The metric is always shown under its exact logged key (e.g. ``metrics/fid1k_full``),
so the output names the feature space and sample count."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rootedgan.compare import analysis, bootstrap
from rootedgan.compare.bootstrap import band, ci_band, mean_std, summarize
from rootedgan.compare.curves import Curve
from rootedgan.errors import UserError
from rootedgan.fileio import atomic_open

Runs = Mapping[str, Mapping[int, Mapping[str, Curve]]]
LOSS_KEYS = (analysis.G_LOSS, analysis.D_LOSS)
VALUE_LABELS = {"auc_mean": "mean along the run (AUC / kimg)", "final": "final", "best": "best"}


def metric_keys(runs: Runs) -> list[str]:
    """Keys logged by every run (sorted)."""
    key_sets = [set(curves) for by_seed in runs.values() for curves in by_seed.values()]
    return sorted(set.intersection(*key_sets)) if key_sets else []


def default_metric(runs: Runs) -> str:
    """The first (sorted) key starting with ``metrics/`` that every run logged."""
    keys = metric_keys(runs)
    for key in keys:
        if key.startswith("metrics/"):
            return key
    shown = ", ".join(keys) or "none"
    raise UserError(
        "no quality metric (a key starting with metrics/) was logged by every run; add an FID callback "
        "to the config (rootedgan.metrics.FIDCallback under trainer.callbacks) or name a logged key with "
        f"--metric (logged by every run: {shown}). Finished runs are skipped when you run compare again."
    )


def select(runs: Runs, key: str) -> dict[str, dict[int, Curve]]:
    """``{loss: {seed: curve of key}}``; a clear error naming the runs that did not log ``key``."""
    missing = [
        f"{loss}/seed{seed}" for loss, by_seed in runs.items() for seed, c in by_seed.items() if key not in c
    ]
    if missing:
        keys = ", ".join(metric_keys(runs)) or "none"
        raise UserError(
            f"{key!r} was not logged by run(s) {', '.join(missing)}; keys logged by every run: {keys}"
        )
    return {loss: {seed: c[key] for seed, c in by_seed.items()} for loss, by_seed in runs.items()}


# -- markdown ----------------------------------------------------------------------------------------


def _fmt(x: float | None, digits: int = 4) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:.{digits}g}"


def _pm(stats: Mapping[str, Any] | None, digits: int = 4) -> str:
    if not stats or not stats["n"]:
        return "–"
    if math.isfinite(stats["std"]):
        return f"{_fmt(stats['mean'], digits)} ± {_fmt(stats['std'], 2)}"
    return _fmt(stats["mean"], digits)


def _ci(stats: Mapping[str, Any] | None, digits: int = 4, signed: bool = False) -> str:
    if not stats or not stats.get("n"):
        return "–"
    text = f"{stats['mean']:+.{digits}g}" if signed else _fmt(stats["mean"], digits)
    if math.isfinite(stats.get("lo", math.nan)):
        text += f" [{_fmt(stats['lo'], digits)}, {_fmt(stats['hi'], digits)}]"
    return text


def _seconds(stats: Mapping[str, Any] | None) -> str:
    if not stats or not stats["n"]:
        return "–"
    mean, std = stats["mean"], stats["std"]
    unit, scale = ("min", 60.0) if mean >= 120 else ("s", 1.0)
    text = f"{mean / scale:.3g}" + (f" ± {std / scale:.2g}" if math.isfinite(std) else "")
    return f"{text} {unit}"


def md_table(columns: Sequence[tuple[str, str]], rows: Sequence[Sequence[str]]) -> list[str]:
    """A markdown table from ``(header, alignment rule)`` columns and rows of cells, then a blank line."""
    lines = ["| " + " | ".join(h for h, _ in columns) + " |", "| " + " | ".join(a for _, a in columns) + " |"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows] + [""]


def _setup_lines(context: Mapping[str, Any]) -> list[str]:
    """The report's "Setup: config ...; N kimg per run; seeds ...; overrides ..." line (none if empty)."""
    c = context
    setup = [
        f"config `{c['config']}`" if c.get("config") else "",
        f"{c['kimg']:g} kimg per run" if c.get("kimg") is not None else "",
        f"seeds {', '.join(str(s) for s in c['seeds'])}" if c.get("seeds") is not None else "",
        "overrides `" + " ".join(c["extra"]) + "`" if c.get("extra") else "",
    ]
    setup = [s for s in setup if s]
    return ["Setup: " + "; ".join(setup) + ".", ""] if setup else []


def render_markdown(
    summary: Mapping[str, Any],
    metric: str,
    context: Mapping[str, Any] | None = None,
) -> str:
    """The curve summary (:func:`rootedgan.compare.bootstrap.summarize`) as a table with its caption."""
    better = "lower is better" if summary["lower_is_better"] else "higher is better"
    best_word = "lowest" if summary["lower_is_better"] else "highest"
    reach = "<=" if summary["lower_is_better"] else ">="
    thr = summary["threshold"]
    lines = [f"### Loss comparison: `{metric}` ({better})", "", *_setup_lines(context or {})]
    rows = []
    for name, row in summary["losses"].items():
        cross = row["kimg_to_threshold"]
        counted = f"({cross['reached']}/{cross['n']})"
        reached = f"{_pm(cross, 3)} {counted}" if cross["reached"] else f"never {counted}"
        values = [_pm(row[k]) for k in ("start", "final", "best")]
        rows.append([f"`{name}`", str(len(row["seeds"])), *values, reached, _seconds(row["wall_s"])])
    heads = ["loss", "seeds", "start", "final", "best", f"kimg to reach T = {_fmt(thr['value'])}"]
    lines += md_table([(h, "---" if h == "loss" else "---:") for h in [*heads, "wall time per run"]], rows)
    lines += [
        f"Values of `{metric}` ({better}): mean ± sample standard deviation (ddof 1) over seeds; one seed "
        f"shows the value alone. *start*: the first logged value; *final*: the value at the end of the run; "
        f"*best*: the {best_word} value along the run. *kimg to reach T*: the first kimg at which a seed's "
        f"curve reaches {reach} T, linearly interpolated between logged points, mean over the seeds that "
        f"reached it (reached/seeds); T = {_fmt(thr['value'])} is {thr['rule']}. *wall time*: the whole "
        "`rootedgan finetune` process per run (start-up, data, evaluations included).",
        "",
    ]
    return "\n".join(lines)


def _arm_table(result: Mapping[str, Any], wall_s: Any, arm_info: Any) -> list[str]:
    """One row per arm: lr, runs, each value's mean and CI, kimg to each target, spikes, non-finite, wall."""
    targets = [analysis.target_key(t) for t in result["targets"]]
    heads = ["arm", "lr (G / D)", "runs", *(VALUE_LABELS[k] for k in analysis.VALUE_KEYS)]
    heads += [f"kimg to {t}" for t in targets]
    heads += ["spike steps (runs)", "max G loss", "non-finite losses (runs)", "wall per run"]
    rows = []
    for arm, stats in result["arms"].items():
        info = (arm_info or {}).get(arm, {})
        lr = f"{info['g_lr']:.4g} / {info['d_lr']:.4g}" if info.get("g_lr") else "config"
        row = [f"`{arm}`", lr, str(len(stats["seeds"]))]
        row += [_ci(stats["values"][k]) for k in analysis.VALUE_KEYS]
        for t in targets:
            entry = stats["to_target"][t]
            bound = "≥ " if entry["censored"] else ""
            row.append(f"{bound}{_ci(entry, 3)} ({entry['reached']}/{entry['n']})")
        sp, nf = stats["spikes"], stats["nonfinite"]
        skipped = f"; skipped ≤ {100 * nf['max_frac']:.2g} %" if nf.get("max_frac") else ""
        row += [f"{sp['total']} ({sp['runs_with']})", _fmt(sp["max_G"], 3)]
        wall = mean_std(wall_s[arm]) if wall_s and wall_s.get(arm) else None
        row += [f"{nf['total']} ({nf['runs_with']}){skipped}", _seconds(wall)]
        rows.append(row)
    return md_table([(h, "---" if i < 2 else "---:") for i, h in enumerate(heads)], rows)


def _paired_table(result: Mapping[str, Any], several: bool) -> list[str]:
    """One row per compared arm: the paired differences (primary value first) against its baseline."""
    primary, targets = result["primary"], [analysis.target_key(t) for t in result["targets"]]
    others = [k for k in analysis.VALUE_KEYS if k != primary]
    text = ["arm − baseline", "baseline"] if several else [f"arm − `{result['baseline']}`"]
    columns = [(h, "---") for h in text]
    columns += [(h, "---:") for h in ("pairs", f"Δ {VALUE_LABELS[primary]}", "better", "p")]
    columns += [(h, "---:") for k in others for h in (f"Δ {k}", "better")]
    columns += [(f"Δ kimg to {t}", "---:") for t in targets] + [("Δ spike steps", "---:")]
    rows = []
    for arm, diffs in result["paired"].items():
        d = diffs[primary]
        row = [f"`{arm}`", *([f"`{diffs['vs']}`"] if several else []), str(d["n"])]
        row += [_ci(d, 3, signed=True), f"{d['better']}/{d['n']}", _fmt(d["p_sign_flip"], 2)]
        for k in others:
            row += [_ci(diffs[k], 3, signed=True), f"{diffs[k]['better']}/{diffs[k]['n']}"]
        row += [_ci(diffs["to_target"][t], 3, signed=True) for t in targets]
        rows.append([*row, _ci(diffs["spikes"], 2, signed=True)])
    return md_table(columns, rows)


def render_study_markdown(
    result: Mapping[str, Any],
    context: Mapping[str, Any] | None = None,
    wall_s: Mapping[str, Sequence[float]] | None = None,
    pairing: Mapping[str, Any] | None = None,
    arm_info: Mapping[str, Mapping[str, Any]] | None = None,
) -> str:
    """The analysis (:func:`analyze`) as markdown: setup, ``compare.png``, per-arm table with 95 % CIs,
    paired differences against the baseline with ``forest.png``, the pairing check, and the definitions of
    every column."""
    metric, baseline = result["metric"], result["baseline"]
    better = "lower is better" if result["lower_is_better"] else "higher is better"
    lines = [f"### `{metric}` ({better}) per arm, and paired differences vs `{baseline}`", ""]
    lines += _setup_lines(context or {})
    lines += [f"![{metric} against kimg per arm, mean and 95 % CI](compare.png)", ""]
    lines += _arm_table(result, wall_s, arm_info)
    if result["paired"]:
        several = len({d["vs"] for d in result["paired"].values()}) > 1
        lines += _paired_table(result, several)
        lines += [
            f"![paired differences vs {baseline}, 95 % CI](forest.png)",
            "",
            f"Paired differences: per seed, arm minus {'its baseline' if several else f'`{baseline}`'} on "
            "the same seed (same data order, training latents and evaluation samples); "
            f"{'< 0' if result['lower_is_better'] else '> 0'} means the arm is better. *better*: seeds on "
            "which the arm was better. *p*: two-sided exact sign-flip (permutation) test of a zero mean "
            "difference (with n pairs it cannot go below 2/2^n, 0.0625 for 5).",
            "",
        ]
    if pairing is not None:
        lines += [pairing["text"], ""]
    bs, spike, span = result["bootstrap"], result["spike_rule"], result.get("span")
    span_text = f" over {span[0]:g}–{span[1]:g} kimg" if span else ""
    lines += [
        f"Values of `{metric}` ({better}). Means over seeds with 95 % percentile bootstrap CIs "
        f"({bs['resamples']} resamples of the seeds, numpy seed {bs['seed']}); with few seeds these "
        "intervals are narrower than they should be (the percentile bootstrap under-covers for n < 10). "
        f"*mean along the run*: area under the curve{span_text} (trapezoids between evaluations) divided "
        "by its length. *kimg to T*: first kimg at which the curve reaches T (interpolated between "
        "evaluations); a run that never did counts as its length (≥: a lower bound), reached/runs in "
        f"brackets. *spike steps*: logged steps at which G's or D's loss exceeds {spike['factor']:g} × its "
        f"running median (previous {spike['window']} steps, measured above the loss's lower bound), total "
        "and (runs with any). *max G loss*: the largest logged G loss of any run. *non-finite losses*: "
        "logged G, D, R1 and path-length losses that were not finite (each such phase was skipped), total "
        "(runs with any); the step also skips phases whose gradient alone is not finite: the largest share "
        "of skipped phases of a run is shown when it is not 0 (`skipped_frac` in runs.csv). *wall per "
        "run*: the whole `rootedgan finetune` process (start-up and evaluations included).",
        "",
    ]
    return "\n".join(lines)


# -- figures (matplotlib is imported only when a figure is drawn) -----------------------------------------


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | Path, dpi: int = 110) -> Path:
    """Lay out ``fig``, write it atomically as a PNG at ``path`` and close it; returns the path."""
    fig.tight_layout()
    path = Path(path)
    try:
        with atomic_open(path, "wb") as fh:
            fig.savefig(fh, format="png", dpi=dpi)
    finally:
        pyplot().close(fig)
    return path


def _finish_axes(ax: Any, xlabel: str, ylabel: str, title: str) -> None:
    ax.set(xlabel=xlabel, ylabel=ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def _plot_metric(ax: Any, curves: Mapping[str, Mapping[int, Curve]], colors: Any) -> None:
    """Per arm: thin lines per seed, the mean (thick) and its 95 % bootstrap CI band."""
    for i, (name, by_seed) in enumerate(curves.items()):
        color = colors(i % 10)
        for curve in by_seed.values():
            ax.plot(curve.kimg, curve.value, color=color, alpha=0.35, linewidth=0.8)
        b = ci_band(list(by_seed.values()))
        n = sum(1 for c in by_seed.values() if len(c))
        if not len(b["kimg"]):
            continue
        marker = "o" if len(b["kimg"]) <= 30 else None  # evaluations (e.g. FID) are few: show them
        ax.plot(b["kimg"], b["mean"], color=color, lw=2.0, marker=marker, ms=3, label=f"{name} (n={n})")
        if n > 1:
            ax.fill_between(b["kimg"], b["lo"], b["hi"], color=color, alpha=0.18, linewidth=0)


def _plot_losses(ax: Any, runs: Runs, colors: Any) -> None:
    """The mean G (solid) and D (dashed) loss per arm; log scale when they span more than a factor 100."""
    spread: list[float] = []
    for i, by_seed in enumerate(runs.values()):
        for key, style in zip(LOSS_KEYS, ("-", "--"), strict=True):
            b = band([c[key] for c in by_seed.values() if key in c])
            if len(b.kimg):
                ax.plot(b.kimg, b.mean, color=colors(i % 10), linestyle=style, linewidth=1.2)
                spread.extend(float(v) for v in b.mean if math.isfinite(v) and v > 0)
    for i, name in enumerate(runs):
        ax.plot([], [], color=colors(i % 10), label=name)
    for key, style in zip(LOSS_KEYS, ("-", "--"), strict=True):
        ax.plot([], [], color="0.3", linestyle=style, label=key)
    if spread and max(spread) > 100 * min(spread):
        ax.set_yscale("log")
    title = "G / D loss (rooted values include the constant k\nunless model.subtract_k)"
    _finish_axes(ax, "kimg", "training loss (mean over seeds)", title)


def plot(
    path: str | Path,
    runs: Runs,
    metric: str,
    title: str = "",
    lower_is_better: bool = True,
    threshold: float | Sequence[float] | None = None,
) -> Path:
    """``compare.png``: ``metric`` against kimg per arm with ``threshold`` lines (:func:`_plot_metric`) and,
    when the runs logged them, the G/D losses in a second panel (:func:`_plot_losses`)."""
    plt = pyplot()
    colors = plt.get_cmap("tab10")
    curves = select(runs, metric)
    with_losses = any(k in c for by_seed in runs.values() for c in by_seed.values() for k in LOSS_KEYS)
    ncols = 2 if with_losses else 1
    fig, axes = plt.subplots(1, ncols, figsize=(6.4 * ncols, 4.6), squeeze=False)
    ax = axes[0, 0]
    _plot_metric(ax, curves, colors)
    for level in [threshold] if isinstance(threshold, (int, float)) else list(threshold or []):
        if math.isfinite(level):
            ax.axhline(level, color="0.4", linestyle=":", linewidth=1.0, label=f"T = {level:.4g}")
    better = "lower" if lower_is_better else "higher"
    metric_title = f"{metric} ({better} is better)\nmean over seeds, band: 95 % bootstrap CI"
    _finish_axes(ax, "kimg (thousands of real images shown to D)", metric, metric_title)
    if with_losses:
        _plot_losses(axes[0, 1], runs, colors)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def ci_colour(lo: float, hi: float, lower_is_better: bool) -> str:
    """Colour of a paired difference's CI ``[lo, hi]`` in the forest plot: green when it excludes 0 on the
    better side, red on the worse side, dark grey when it contains 0 (or is undefined)."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo <= 0 <= hi:
        return "0.2"
    return "tab:green" if (hi < 0) == lower_is_better else "tab:red"


def plot_forest(path: str | Path, result: Mapping[str, Any], title: str = "") -> Path | None:
    """Paired differences against the baseline with their 95 % CIs, one panel per value (primary first,
    then the others and the first target's kimg), one row per arm. None when there is nothing to plot."""
    paired = result["paired"]
    if not paired:
        return None
    plt = pyplot()
    keys = [result["primary"]] + [k for k in analysis.VALUE_KEYS if k != result["primary"]]
    # (title, getter, lower difference is better)
    panels: list[tuple[str, Any, bool]] = [
        (VALUE_LABELS[k], lambda d, k=k: d[k], result["lower_is_better"]) for k in keys
    ]
    if result["targets"]:
        t = analysis.target_key(result["targets"][0])
        panels.append((f"kimg to reach {t}", lambda d, t=t: d["to_target"][t], True))  # sooner is better
    arms = list(paired)
    several = len({d["vs"] for d in paired.values()}) > 1
    fig, axes = plt.subplots(
        1, len(panels), figsize=(3.6 * len(panels), 0.45 * len(arms) + 1.6), squeeze=False, sharey=True
    )
    for ax, (label, get, lower_better) in zip(axes[0], panels, strict=True):
        for row, arm in enumerate(arms):
            d = get(paired[arm])
            if not d["n"]:
                continue
            y = len(arms) - 1 - row
            lo, hi = d.get("lo", math.nan), d.get("hi", math.nan)
            color = ci_colour(lo, hi, lower_better)
            if math.isfinite(lo):
                ax.plot([lo, hi], [y, y], color=color, linewidth=2)
            ax.plot([d["mean"]], [y], "o", color=color, ms=5)
        ax.axvline(0, color="0.5", linestyle=":", linewidth=1)
        ax.set_title(f"Δ {label}", fontsize=9)
        ax.grid(alpha=0.3, axis="x")
    axes[0, 0].set_yticks(range(len(arms)))
    labels = [f"{a} − {paired[a]['vs']}" if several else a for a in arms]
    axes[0, 0].set_yticklabels(list(reversed(labels)), fontsize=8)
    better = "lower" if result["lower_is_better"] else "higher"
    fig.suptitle(
        (title + "\n" if title else "")
        + f"{result['metric']}: arm − {'baseline' if several else result['baseline']} per seed, mean and "
        f"95 % bootstrap CI ({better} is better; green/red: CI excludes 0)",
        fontsize=9,
    )
    return save_figure(fig, path)


# -- analysis and files -------------------------------------------------------------------------------


def analyze(
    runs: Runs,
    metric: str,
    lower_is_better: bool = True,
    targets: Sequence[float] = (),
    primary: str = "auc_mean",
    span: tuple[float, float] | None = None,
    floors: Mapping[str, tuple[float, float]] | None = None,
    baselines: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Per-run summaries, per-arm statistics and paired differences against the baseline (the first arm), as
    in :mod:`rootedgan.compare.analysis`. ``baselines[arm]`` overrides the baseline per arm (e.g. the
    baseline loss at the same learning rate); arms that are a baseline are not compared. ``floors[arm]``:
    lower bounds of its G/D losses."""
    if primary not in analysis.VALUE_KEYS:
        raise UserError(f"primary must be one of {', '.join(analysis.VALUE_KEYS)}, got {primary!r}")
    names = list(runs)
    select(runs, metric)  # a clear error when a run did not log the metric
    against = {arm: (baselines or {}).get(arm, names[0]) for arm in names}
    for arm, base in against.items():
        if base not in runs:
            raise UserError(f"baseline {base!r} of arm {arm!r} is not among the arms {names}")
    per_run = {
        arm: {
            seed: analysis.run_summary(
                curves, metric, lower_is_better, targets, span, (floors or {}).get(arm, (0.0, 0.0))
            )
            for seed, curves in sorted(by_seed.items())
        }
        for arm, by_seed in runs.items()
    }
    paired = {
        arm: {**analysis.paired_statistics(per_run[arm], per_run[base], lower_is_better, targets), "vs": base}
        for arm, base in against.items()
        if arm not in against.values()  # a baseline is not compared
    }
    return {
        "metric": metric,
        "lower_is_better": lower_is_better,
        "primary": primary,
        "baseline": names[0],
        "targets": list(targets),
        "span": list(span) if span is not None else None,
        "bootstrap": {
            "method": "percentile",
            "resamples": bootstrap.N_RESAMPLES,
            "confidence": bootstrap.CONFIDENCE,
            "seed": bootstrap.BOOTSTRAP_SEED,
        },
        "spike_rule": {"factor": analysis.SPIKE_FACTOR, "window": analysis.SPIKE_WINDOW},
        "runs": per_run,
        "arms": {arm: analysis.arm_statistics(s, targets) for arm, s in per_run.items()},
        "paired": paired,
    }


def to_jsonable(obj: Any) -> Any:
    """Nested data with NaN/inf replaced by None and Curves by ``{"kimg", "value"}`` (strict JSON)."""
    if isinstance(obj, Curve):
        return {"kimg": [float(k) for k in obj.kimg], "value": [to_jsonable(float(v)) for v in obj.value]}
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    return str(obj) if isinstance(obj, Path) else obj


def write_runs_csv(
    path: str | Path, result: Mapping[str, Any], wall: Mapping[str, Mapping[int, float]] | None = None
) -> Path:
    """One row per run of :func:`analyze`'s per-run summaries (arm, seed, values, kimg to each target,
    spikes, non-finite phases, wall time when known), for spreadsheets and re-analysis."""
    targets = [analysis.target_key(t) for t in result["targets"]]
    columns = ["arm", "seed", "start", "final", "best", "best_kimg", "auc", "auc_mean"]
    columns += [f"kimg_to_{t}" for t in targets]
    columns += (
        "spike_steps spikes_G spikes_D max_G_loss max_D_loss nonfinite_losses skipped_frac wall_s".split()
    )
    path = Path(path)
    with atomic_open(path, "w") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(columns)
        for arm, by_seed in result["runs"].items():
            for seed, r in by_seed.items():
                sp, nf = r["spikes"], r["nonfinite"]
                row = [arm, seed, *(r[k] for k in columns[2:8]), *(r["to_target"].get(t) for t in targets)]
                row += [sp["steps"], sp.get("G"), sp.get("D"), sp.get("max_G"), sp.get("max_D")]
                row += [nf["phases"], nf.get("frac"), (wall or {}).get(arm, {}).get(seed)]
                writer.writerow(["" if v is None else v for v in row])
    return path


def write_report(
    out_dir: str | Path,
    runs: Runs,
    metric: str | None = None,
    lower_is_better: bool = True,
    threshold: float | None = None,
    context: Mapping[str, Any] | None = None,
    pairing: Mapping[str, Any] | None = None,
    arm_info: Mapping[str, Mapping[str, Any]] | None = None,
    wall_by_seed: Mapping[str, Mapping[int, float]] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Summarise ``runs`` on ``metric`` (default: :func:`default_metric`; ``options``: :func:`analyze`'s;
    ``wall_by_seed[arm][seed]``: wall times in s) and write ``compare.png``, ``forest.png`` (with two or
    more arms), ``compare.md``, ``compare.json`` and ``runs.csv`` into ``out_dir``; returns the JSON record:
    ``context`` (commands, versions, ...), the summaries, the pairing check and the metric's and losses'
    curves."""
    out_dir = Path(out_dir)
    context = context or {}
    metric = metric or default_metric(runs)
    wall_s = {arm: list(by_seed.values()) for arm, by_seed in (wall_by_seed or {}).items()}
    summary = summarize(select(runs, metric), lower_is_better, threshold, wall_s)
    result = analyze(runs, metric, lower_is_better, **options)
    title = context.get("title") or ""
    levels = result["targets"] or summary["threshold"]["value"]
    plot(out_dir / "compare.png", runs, metric, title, lower_is_better, levels)
    plot_forest(out_dir / "forest.png", result, title)
    markdown = render_study_markdown(result, context, wall_s, pairing, arm_info)
    markdown += "\n" + render_markdown(summary, metric).replace(
        "### Loss comparison", "#### Curve summary (mean ± std over seeds)", 1
    )
    with atomic_open(out_dir / "compare.md", "w") as fh:
        fh.write(markdown)
    kept = (metric, *LOSS_KEYS)
    curves = {
        loss: {str(seed): {k: c[k] for k in kept if k in c} for seed, c in by_seed.items()}
        for loss, by_seed in runs.items()
    }
    record = {
        **context,
        "metric": metric,
        "lower_is_better": lower_is_better,
        "summary": summary,
        "analysis": result,
        "pairing": pairing,
        "arm_info": arm_info,
        "curves": curves,
    }
    with atomic_open(out_dir / "compare.json", "w") as fh:
        json.dump(to_jsonable(record), fh, indent=1)
    write_runs_csv(out_dir / "runs.csv", result, wall_by_seed)
    return record
