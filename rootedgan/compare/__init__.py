"""Compare adversarial losses on the same finetune (``rootedgan compare``; README, "Comparing losses"):
:mod:`.runner` runs the finetunes, :mod:`.curves` reads their logs, :mod:`.bootstrap` and :mod:`.analysis`
compute the statistics, :mod:`.pairing` checks the paired design, :mod:`.report` writes the outputs and
:mod:`.study` ties them together. The functions the README and the tests use are importable from here.
"""

from rootedgan.compare.analysis import arm_statistics, paired_statistics, run_summary, select_learning_rates
from rootedgan.compare.bootstrap import (
    Band,
    auc,
    band,
    bootstrap_ci,
    ci_band,
    crossing_kimg,
    paired_difference,
    sign_flip_p,
    spikes,
    summarize,
)
from rootedgan.compare.curves import Curve, collect_run, read_metric_jsonl, read_metrics_csv
from rootedgan.compare.pairing import check_pairing
from rootedgan.compare.report import analyze, default_metric, render_markdown, select, write_report
from rootedgan.compare.runner import plan_runs, run_all

__all__ = [
    "Band",
    "Curve",
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
    "paired_difference",
    "paired_statistics",
    "plan_runs",
    "read_metric_jsonl",
    "read_metrics_csv",
    "render_markdown",
    "run_all",
    "run_summary",
    "select",
    "select_learning_rates",
    "sign_flip_p",
    "spikes",
    "summarize",
    "write_report",
]
