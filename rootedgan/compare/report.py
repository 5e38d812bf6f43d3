"""The comparison's outputs: ``compare.png`` (curves), ``compare.md`` (table) and ``compare.json`` (all).

``runs[loss][seed]`` is a run's ``{logged key: Curve}`` (:func:`rootedgan.compare.collect_run`). The
metric is always printed and plotted under its exact logged key (e.g. ``metrics/fid1k_full``), so the
output says which feature space and sample count the numbers come from.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rootedgan.compare.curves import Curve
from rootedgan.compare.stats import band, summarize
from rootedgan.errors import UserError
from rootedgan.fileio import atomic_open

Runs = Mapping[str, Mapping[int, Mapping[str, Curve]]]
LOSS_KEYS = ("Loss/G/loss", "Loss/D/loss")


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


def _fmt(x: float | None, digits: int = 4) -> str:
    if x is None or not math.isfinite(x):
        return "–"
    return f"{x:.{digits}g}"


def _pm(stats: Mapping[str, Any] | None, digits: int = 4) -> str:
    if not stats or not stats["n"]:
        return "–"
    if math.isfinite(stats["std"]):
        return f"{_fmt(stats['mean'], digits)} ± {_fmt(stats['std'], 2)}"
    return _fmt(stats["mean"], digits)


def _seconds(stats: Mapping[str, Any] | None) -> str:
    if not stats or not stats["n"]:
        return "–"
    mean, std = stats["mean"], stats["std"]
    unit, scale = ("min", 60.0) if mean >= 120 else ("s", 1.0)
    text = f"{mean / scale:.3g}"
    if math.isfinite(std):
        text += f" ± {std / scale:.2g}"
    return f"{text} {unit}"


def render_markdown(
    summary: Mapping[str, Any],
    metric: str,
    context: Mapping[str, Any] | None = None,
    figure: str | None = None,
) -> str:
    """The summary as a markdown table with a caption that defines every column."""
    context = context or {}
    better = "lower is better" if summary["lower_is_better"] else "higher is better"
    best_word = "lowest" if summary["lower_is_better"] else "highest"
    reach = "<=" if summary["lower_is_better"] else ">="
    thr = summary["threshold"]
    lines = [f"### Loss comparison: `{metric}` ({better})", ""]
    setup = []
    if context.get("config"):
        setup.append(f"config `{context['config']}`")
    if context.get("kimg") is not None:
        setup.append(f"{context['kimg']:g} kimg per run")
    if context.get("seeds") is not None:
        setup.append(f"seeds {', '.join(str(s) for s in context['seeds'])}")
    if context.get("extra"):
        setup.append("overrides `" + " ".join(context["extra"]) + "`")
    if setup:
        lines += ["Setup: " + "; ".join(setup) + ".", ""]
    if figure:
        lines += [f"![{metric} against kimg per loss]({figure})", ""]
    lines += [
        f"| loss | seeds | start | final | best | kimg to reach T = {_fmt(thr['value'])} "
        "| wall time per run |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, row in summary["losses"].items():
        cross = row["kimg_to_threshold"]
        cross_text = (
            f"{_pm(cross, 3)} ({cross['reached']}/{cross['n']})"
            if cross["reached"]
            else f"never (0/{cross['n']})"
        )
        lines.append(
            f"| `{name}` | {len(row['seeds'])} | {_pm(row['start'])} | {_pm(row['final'])} "
            f"| {_pm(row['best'])} | {cross_text} | {_seconds(row['wall_s'])} |"
        )
    lines += [
        "",
        f"Values of `{metric}` ({better}): mean ± sample standard deviation (ddof 1) over seeds; one seed "
        f"shows the value alone. *start*: the first logged value; *final*: the value at the end of the run; "
        f"*best*: the {best_word} value along the run. *kimg to reach T*: the first kimg at which a seed's "
        f"curve reaches {reach} T, linearly interpolated between logged points, mean over the seeds that "
        f"reached it (reached/seeds); T = {_fmt(thr['value'])} is {thr['rule']}. *wall time*: the whole "
        "`rootedgan finetune` process per run (start-up, data, evaluations included).",
        "",
    ]
    return "\n".join(lines)


def _loss_color(index: int) -> Any:
    import matplotlib

    return matplotlib.colormaps["tab10"](index % 10)


def plot(
    path: str | Path,
    runs: Runs,
    metric: str,
    title: str = "",
    lower_is_better: bool = True,
    threshold: float | None = None,
) -> Path:
    """``metric`` against kimg per loss (thin lines: seeds; thick: mean; band: ±1 std over seeds), and a
    second panel with the mean G/D losses when the runs logged them. Written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = select(runs, metric)
    with_losses = any(k in c for by_seed in runs.values() for c in by_seed.values() for k in LOSS_KEYS)
    ncols = 2 if with_losses else 1
    fig, axes = plt.subplots(1, ncols, figsize=(6.4 * ncols, 4.6), squeeze=False)
    ax = axes[0, 0]
    for i, (name, by_seed) in enumerate(curves.items()):
        color = _loss_color(i)
        for curve in by_seed.values():
            ax.plot(curve.kimg, curve.value, color=color, alpha=0.35, linewidth=0.8)
        b = band(list(by_seed.values()))
        if len(b.kimg):
            marker = "o" if len(b.kimg) <= 30 else None  # evaluations (e.g. FID) are few: show them
            ax.plot(
                b.kimg, b.mean, color=color, linewidth=2.0, marker=marker, ms=3, label=f"{name} (n={b.n})"
            )
            if b.n > 1:
                ax.fill_between(b.kimg, b.mean - b.std, b.mean + b.std, color=color, alpha=0.18, linewidth=0)
    if threshold is not None and math.isfinite(threshold):
        ax.axhline(threshold, color="0.4", linestyle=":", linewidth=1.0, label=f"T = {threshold:.4g}")
    ax.set_xlabel("kimg (thousands of real images shown to D)")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} ({'lower' if lower_is_better else 'higher'} is better): mean ± std over seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if with_losses:
        ax2 = axes[0, 1]
        for i, by_seed in enumerate(runs.values()):
            for key, style in zip(LOSS_KEYS, ("-", "--"), strict=True):
                series = [c[key] for c in by_seed.values() if key in c]
                b = band(series)
                if len(b.kimg):
                    ax2.plot(b.kimg, b.mean, color=_loss_color(i), linestyle=style, linewidth=1.2)
        for i, name in enumerate(runs):
            ax2.plot([], [], color=_loss_color(i), label=name)
        ax2.plot([], [], color="0.3", linestyle="-", label="Loss/G/loss")
        ax2.plot([], [], color="0.3", linestyle="--", label="Loss/D/loss")
        ax2.set_xlabel("kimg")
        ax2.set_ylabel("training loss (mean over seeds)")
        ax2.set_title(
            "G / D loss (rooted values include the constant k\nunless model.subtract_k)", fontsize=9
        )
        ax2.grid(alpha=0.3)
        ax2.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    try:
        with atomic_open(path, "wb") as fh:
            fig.savefig(fh, format="png", dpi=110)
    finally:
        plt.close(fig)
    return path


def to_jsonable(obj: Any) -> Any:
    """Nested data with NaN/inf replaced by None and Curves by ``{"kimg", "value"}`` (strict JSON)."""
    if isinstance(obj, Curve):
        return obj.to_json()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_report(
    out_dir: str | Path,
    runs: Runs,
    metric: str | None = None,
    lower_is_better: bool = True,
    threshold: float | None = None,
    wall_s: Mapping[str, list[float]] | None = None,
    context: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Summarise ``runs`` on ``metric`` (default: :func:`default_metric`) and write ``compare.png``,
    ``compare.md`` and ``compare.json`` into ``out_dir``; returns the JSON record.

    ``compare.json`` holds ``context`` (commands, versions, ...), the summary, and per run the curves of
    the metric and of ``Loss/G/loss`` / ``Loss/D/loss``.
    """
    out_dir = Path(out_dir)
    context = dict(context or {})
    metric = metric or default_metric(runs)
    curves = select(runs, metric)
    summary = summarize(curves, lower_is_better=lower_is_better, threshold=threshold, wall_s=wall_s)
    title = context.get("title") or ""
    plot(out_dir / "compare.png", runs, metric, title, lower_is_better, summary["threshold"]["value"])
    markdown = render_markdown(summary, metric, context, figure="compare.png")
    with atomic_open(out_dir / "compare.md", "w") as fh:
        fh.write(markdown)
    kept = (metric, *LOSS_KEYS)
    record = {
        **context,
        "metric": metric,
        "lower_is_better": lower_is_better,
        "summary": summary,
        "curves": {
            loss: {str(seed): {k: c[k] for k in kept if k in c} for seed, c in by_seed.items()}
            for loss, by_seed in runs.items()
        },
    }
    with atomic_open(out_dir / "compare.json", "w") as fh:
        json.dump(to_jsonable(record), fh, indent=1)
    return record
