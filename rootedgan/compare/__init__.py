"""Compare adversarial losses on the same finetune (``rootedgan compare``): runs, curves, statistics, report.

* :mod:`rootedgan.compare.runner`: one ``rootedgan finetune`` subprocess per (loss, seed), finished runs
  skipped (:func:`plan_runs`, :func:`run_all`);
* :mod:`rootedgan.compare.curves`: a run's logged curves against kimg (:func:`collect_run`);
* :mod:`rootedgan.compare.stats`: mean/std over seeds, threshold crossings (:func:`summarize`);
* :mod:`rootedgan.compare.report`: ``compare.png`` / ``compare.md`` / ``compare.json``
  (:func:`plot`, :func:`render_markdown`, :func:`write_report`).
"""

from rootedgan.compare.curves import Curve, collect_run, read_metric_jsonl, read_metrics_csv
from rootedgan.compare.report import default_metric, plot, render_markdown, select, write_report
from rootedgan.compare.runner import RunResult, RunSpec, parse_losses, plan_runs, run_all
from rootedgan.compare.stats import Band, band, crossing_kimg, mean_std, summarize

__all__ = [
    "Band",
    "Curve",
    "RunResult",
    "RunSpec",
    "band",
    "collect_run",
    "crossing_kimg",
    "default_metric",
    "mean_std",
    "parse_losses",
    "plan_runs",
    "plot",
    "read_metric_jsonl",
    "read_metrics_csv",
    "render_markdown",
    "run_all",
    "select",
    "summarize",
    "write_report",
]
