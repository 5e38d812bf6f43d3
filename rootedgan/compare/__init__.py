"""Compare adversarial losses on the same finetune (``rootedgan compare``): runs, curves, statistics, report.

* :mod:`rootedgan.compare.runner`: one ``rootedgan finetune`` subprocess per (loss, lr, seed), ``jobs`` at
  a time, finished runs skipped (:func:`plan_runs`, :func:`run_all`);
* :mod:`rootedgan.compare.curves`: a run's logged curves against kimg (:func:`collect_run`);
* :mod:`rootedgan.compare.bootstrap`: mean/std, bootstrap CIs, sign-flip tests, areas, spikes
  (:func:`summarize`, :func:`bootstrap_ci`, :func:`paired_difference`);
* :mod:`rootedgan.compare.analysis`: per-run summaries, per-arm statistics, paired differences, the lr choice;
* :mod:`rootedgan.compare.pairing`: the paired design, recorded per run and checked across arms;
* :mod:`rootedgan.compare.report`: ``compare.png`` / ``forest.png`` / ``compare.md`` / ``compare.json``
  (:func:`plot`, :func:`plot_forest`, :func:`render_study_markdown`, :func:`write_report`).
"""

from rootedgan.compare.analysis import arm_statistics, paired_statistics, run_summary, select_learning_rates
from rootedgan.compare.bootstrap import (
    Band,
    auc,
    band,
    bootstrap_ci,
    ci_band,
    crossing_kimg,
    mean_std,
    paired_difference,
    sign_flip_p,
    spikes,
    summarize,
)
from rootedgan.compare.curves import Curve, collect_run, read_metric_jsonl, read_metrics_csv
from rootedgan.compare.pairing import PairingRecorder, check_pairing
from rootedgan.compare.report import (
    analyze,
    default_metric,
    plot,
    plot_forest,
    render_markdown,
    render_study_markdown,
    select,
    write_report,
)
from rootedgan.compare.runner import RunResult, RunSpec, parse_losses, parse_lrs, plan_runs, run_all

__all__ = [
    "Band",
    "Curve",
    "PairingRecorder",
    "RunResult",
    "RunSpec",
    "analyze",
    "arm_statistics",
    "auc",
    "band",
    "bootstrap_ci",
    "check_pairing",
    "ci_band",
    "collect_run",
    "crossing_kimg",
    "default_metric",
    "mean_std",
    "paired_difference",
    "paired_statistics",
    "parse_losses",
    "parse_lrs",
    "plan_runs",
    "plot",
    "plot_forest",
    "read_metric_jsonl",
    "read_metrics_csv",
    "render_markdown",
    "render_study_markdown",
    "run_all",
    "run_summary",
    "select",
    "select_learning_rates",
    "sign_flip_p",
    "spikes",
    "summarize",
    "write_report",
]
