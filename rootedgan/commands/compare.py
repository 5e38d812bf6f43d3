"""``rootedgan compare``: the same finetune per loss (x learning rate) x seed, then curves and statistics.

Runs ``rootedgan finetune`` per (loss, lr multiplier, seed) and writes the report into ``--out``; with
``--tune-seeds`` a two-stage study (:mod:`rootedgan.compare.study`; README "Comparing losses"). Arguments
after ``--`` go to every finetune. Exits 1 if a run failed (after reporting on the others).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any

from rootedgan.commands import options_from

HELP = (
    "Finetune per loss (x learning rate) and seed, then compare metric-vs-kimg curves with bootstrap CIs "
    "and paired differences (writes compare.png/forest.png/.md/.json)."
)
REPORT_FILES = ("compare.png", "forest.png", "compare.md", "compare.json")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _add_study_arguments(parser)
    _add_run_arguments(parser)
    parser.add_argument("extra", nargs="*", help="after --: extra finetune arguments for every run")


def _add_study_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="finetune YAML (e.g. configs/demo.yaml)")
    parser.add_argument(
        "--losses",
        default="logistic,rooted",
        help="comma list of model.loss values; the first is the baseline",
    )
    parser.add_argument("--kimg", type=float, help="model.total_kimg per run (default: config's)")
    parser.add_argument(
        "--seeds",
        default="0",
        help="model.seed (and data.seed) values, e.g. 0,1,2 or 0-2 (with --tune-seeds: the evaluation seeds)",
    )
    parser.add_argument(
        "--lrs",
        help="learning-rate multipliers of the config's model.optim.g_lr and model.optim.d_lr, e.g. "
        "0.25,0.5,1 (default: the config's rates)",
    )
    parser.add_argument(
        "--tune-seeds",
        help="seeds on which each loss's best lr is chosen; then every loss runs at its own best lr on "
        "--seeds (which must not overlap)",
    )
    parser.add_argument(
        "--targets",
        default="",
        help="comma list of metric values T for 'kimg to reach T' (absolute values, e.g. 800,600)",
    )
    parser.add_argument(
        "--primary",
        choices=("auc", "best", "final"),
        default="auc",
        help="the per-run value that chooses the lr and heads the paired table: auc (mean along the "
        "run), final or best (default: auc)",
    )


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (separate processes)")
    parser.add_argument(
        "--threads",
        type=int,
        help="CPU threads per run (OMP_NUM_THREADS; default: cores / jobs when --jobs > 1)",
    )
    parser.add_argument("--out", default="runs/compare", help="output folder (runs in OUT/<loss>/seed<S>)")
    parser.add_argument(
        "--metric", help="logged key to compare (default: the first metrics/* key every run logged)"
    )
    direction = parser.add_mutually_exclusive_group()
    direction.add_argument(
        "--lower-is-better", dest="lower_is_better", action="store_true", default=True, help="(default)"
    )
    direction.add_argument("--higher-is-better", dest="lower_is_better", action="store_false")
    parser.add_argument(
        "--threshold",
        default="baseline",
        help="value T for 'kimg to reach T': 'baseline' (mean final value of the first loss) or a number",
    )
    again = parser.add_mutually_exclusive_group()
    again.add_argument(
        "--resume", dest="force", action="store_false", default=False, help="skip finished runs (default)"
    )
    again.add_argument("--force", dest="force", action="store_true", help="run finished runs again")
    parser.add_argument(
        "--log-every",
        type=int,
        default=1,
        help="trainer.log_every_n_steps of the runs (default 1: full curves)",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument(
        "--quiet", action="store_true", help="do not echo the runs' output (it is in the logs)"
    )


def print_study(result: Any) -> int:
    """Print a :class:`rootedgan.compare.study.StudyResult` (failures on stderr); the exit status."""
    from rootedgan.compare.runner import failure_report

    failures = [failure_report(r) for r in result.failed]
    if result.record is None:
        error = f"rootedgan compare: {result.error}"
        lines = [error, *failures] if result.stage == "eval" else [*failures, error]
        print("\n".join(lines), file=sys.stderr)
        return 1
    for text in failures:
        print(text, file=sys.stderr)
    out = result.out
    print((out / "compare.md").read_text())
    written = ", ".join(str(out / n) for n in REPORT_FILES if (out / n).exists())
    print(f"wrote {written} (metric {result.record['metric']}; {result.seconds:.0f} s)")
    if result.failed:
        names = ", ".join(r.spec.name for r in result.failed)
        print(
            f"rootedgan compare: {len(result.failed)} run(s) failed ({names}); the report covers the others",
            file=sys.stderr,
        )
        return 1
    return 0


def run(args: argparse.Namespace) -> int:
    # rootedgan.compare imports Lightning: loaded here, not for `rootedgan --help`
    from rootedgan.compare.study import StudyOptions, plan_study, run_study

    command = shlex.join(["rootedgan", "compare", *sys.argv[2:]]) if len(sys.argv) > 2 else None
    options = options_from(args, StudyOptions, command=command)
    if not args.dry_run:
        return print_study(run_study(options))
    plan = plan_study(options)
    for spec in plan.specs:
        print(shlex.join(spec.command))
    if plan.tune_seeds:
        by = f"by {args.primary}"
        print(f"# then each loss at the lr chosen on seeds {args.tune_seeds} ({by}), on seeds {args.seeds}")
    return 0
