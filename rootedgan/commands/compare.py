"""``rootedgan compare``: the same finetune per loss (x learning rate) x seed, then curves and statistics.

    rootedgan compare --config configs/demo.yaml --losses logistic,rooted:2,rooted:4 --kimg 1 \\
        --seeds 0-2 [--metric metrics/fid1k_full] [--out runs/compare] [-- --data.batch_size 8 ...]

    rootedgan compare --config configs/demo.yaml --losses logistic,rooted:2 --lrs 0.25,0.5,1 \\
        --tune-seeds 100,101 --seeds 0-4 --targets 800,600 --jobs 2 --threads 1 --out runs/study

Runs ``rootedgan finetune`` per (loss, lr multiplier, seed) in fresh processes, ``--jobs`` at a time
(:mod:`rootedgan.compare.runner`; finished runs are skipped unless ``--force``), then writes
``compare.png``, ``forest.png``, ``compare.md`` and ``compare.json`` into ``--out``
(:mod:`rootedgan.compare.report`). With ``--tune-seeds``, it is a two-stage study: every (loss, lr) on
the tuning seeds (report in ``OUT/tune``), each loss's best lr chosen on them (``OUT/selection.md``),
then every loss at its own best lr on the fresh ``--seeds`` (report in ``OUT/eval``). Arguments after
``--`` go to every finetune. Exits 1 if a run failed (after reporting on the others), 2 for bad options.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rootedgan.errors import UserError

PRIMARY = {"auc": "auc_mean", "final": "final", "best": "best"}

HELP = (
    "Finetune per loss (x learning rate) and seed, then compare metric-vs-kimg curves with bootstrap CIs "
    "and paired differences (writes compare.png/forest.png/.md/.json)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="finetune YAML (e.g. configs/demo.yaml)")
    parser.add_argument(
        "--losses",
        default="logistic,rooted",
        help="comma list of model.loss values; the first is the baseline",
    )
    parser.add_argument(
        "--kimg", type=float, default=None, help="model.total_kimg per run (default: config's)"
    )
    parser.add_argument(
        "--seeds",
        default="0",
        help="model.seed (and data.seed) values, e.g. 0,1,2 or 0-2 (with --tune-seeds: the evaluation seeds)",
    )
    parser.add_argument(
        "--lrs",
        default=None,
        help="learning-rate multipliers of the config's model.g_lr and model.d_lr, e.g. 0.25,0.5,1 "
        "(default: the config's rates)",
    )
    parser.add_argument(
        "--tune-seeds",
        default=None,
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
        choices=sorted(PRIMARY),
        default="auc",
        help="the per-run value that chooses the lr and heads the paired table: auc (mean along the "
        "run), final or best (default: auc)",
    )
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (separate processes)")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads per run (OMP_NUM_THREADS; default: cores / jobs when --jobs > 1)",
    )
    parser.add_argument("--out", default="runs/compare", help="output folder (runs in OUT/<loss>/seed<S>)")
    parser.add_argument(
        "--metric",
        default=None,
        help="logged key to compare (default: the first metrics/* key every run logged)",
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
    parser.add_argument("extra", nargs="*", help="after --: extra finetune arguments for every run")


def _threshold(value: str) -> float | None:
    if value == "baseline":
        return None
    try:
        threshold = float(value)
    except ValueError:
        raise UserError(f"--threshold must be 'baseline' or a number, got {value!r}") from None
    if not math.isfinite(threshold):
        raise UserError(f"--threshold must be finite, got {value!r}")
    return threshold


def _config_kimg(config: Path) -> float | None:
    import yaml

    try:
        data = yaml.safe_load(config.read_text()) or {}
        return float(data["model"]["total_kimg"])
    except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError):
        return None


def _versions() -> dict[str, Any]:
    import lightning
    import numpy
    import torch

    import rootedgan

    info: dict[str, Any] = {
        "rootedgan": rootedgan.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
    }
    try:
        repo = Path(rootedgan.__file__).resolve().parents[1]
        commit = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if commit.returncode == 0:
            info["git_commit"] = commit.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def _targets(value: str) -> list[float]:
    targets = []
    for item in (x.strip() for x in value.split(",")):
        if not item:
            continue
        try:
            t = float(item)
        except ValueError:
            raise UserError(f"--targets must be a comma list of numbers, got {item!r}") from None
        if not math.isfinite(t):
            raise UserError(f"--targets must be finite, got {item!r}")
        targets.append(t)
    return targets


def _seeds(value: str, option: str) -> list[int]:
    from rootedgan.sampling import parse_seeds

    seeds = parse_seeds(value)
    if len(set(seeds)) != len(seeds):
        raise UserError(f"{option} {value!r} lists a seed more than once")
    return seeds


class _Collected:
    """The finished runs of one stage: curves, wall times, loss floors, pairing records per arm."""

    def __init__(self, results: list[Any], base_lr: tuple[float, float] | None) -> None:
        from rootedgan.compare import collect_run
        from rootedgan.compare.analysis import loss_floors, run_hparams
        from rootedgan.compare.pairing import read_pairing
        from rootedgan.runs import run_log_dir

        self.results = results
        self.runs: dict[str, dict[int, Any]] = {}
        self.wall: dict[str, list[float]] = {}
        self.wall_by_seed: dict[str, dict[int, float]] = {}
        self.floors: dict[str, tuple[float, float]] = {}
        self.pairing: dict[str, dict[int, Any]] = {}
        self.arm_info: dict[str, dict[str, Any]] = {}
        for r in results:
            arm = r.spec.arm
            info = {"loss": r.spec.loss, "lr": r.spec.lr}
            if r.spec.lr is not None and base_lr is not None:
                info.update(g_lr=base_lr[0] * r.spec.lr, d_lr=base_lr[1] * r.spec.lr)
            self.arm_info.setdefault(arm, info)
            if not r.ok:
                continue
            self.runs.setdefault(arm, {})[r.spec.seed] = collect_run(r.spec.run_dir)
            if r.wall_s is not None:
                self.wall.setdefault(arm, []).append(float(r.wall_s))
                self.wall_by_seed.setdefault(arm, {})[r.spec.seed] = float(r.wall_s)
            log_dir = run_log_dir(r.spec.run_dir)
            if arm not in self.floors:
                subtract_k = bool(run_hparams(log_dir).get("subtract_k", False))
                self.floors[arm] = loss_floors(r.spec.loss, subtract_k)
            self.pairing.setdefault(arm, {})[r.spec.seed] = read_pairing(log_dir)

    @property
    def failed(self) -> list[Any]:
        return [r for r in self.results if not r.ok]


def _run_records(results: list[Any]) -> list[dict[str, Any]]:
    return [
        {
            "arm": r.spec.arm,
            "loss": r.spec.loss,
            "lr": r.spec.lr,
            "seed": r.spec.seed,
            "run_dir": str(r.spec.run_dir),
            "command": shlex.join(r.spec.command),
            "status": r.status,
            "returncode": r.returncode,
            "wall_s": r.wall_s,
        }
        for r in results
    ]


def _report(
    out: Path, got: _Collected, args: argparse.Namespace, context: dict[str, Any], kimg: float | None
) -> dict[str, Any] | None:
    from rootedgan.compare import write_report
    from rootedgan.compare.pairing import check_pairing
    from rootedgan.compare.runner import arm_name

    if not got.runs:
        return None
    out.mkdir(parents=True, exist_ok=True)
    pairing = check_pairing(got.pairing) if len(got.runs) > 1 else None
    span = (0.0, float(kimg)) if kimg is not None else None
    # a grid of learning rates: each arm against the baseline loss at the same lr
    first = got.results[0].spec.loss if got.results else None
    baselines = {
        arm: arm_name(first, info["lr"])
        for arm, info in got.arm_info.items()
        if info["lr"] is not None and arm != info["loss"] and arm_name(first, info["lr"]) in got.runs
    }
    return write_report(
        out,
        got.runs,
        args.metric,
        args.lower_is_better,
        threshold=_threshold(args.threshold),
        wall_s=got.wall,
        context={**context, "runs": _run_records(got.results)},
        targets=_targets(args.targets),
        primary=PRIMARY[args.primary],
        span=span,
        floors=got.floors,
        pairing=pairing,
        arm_info=got.arm_info,
        baselines=baselines or None,
        wall_by_seed=got.wall_by_seed,
    )


def _selection_markdown(selection: dict[str, Any], primary: str, metric: str, tune_seeds: list[int]) -> str:
    lrs = sorted({float(lr) for entry in selection.values() for lr in entry["means"]})
    lines = [
        f"### Learning rate per loss, chosen on tuning seeds {', '.join(map(str, tune_seeds))}",
        "",
        f"Mean `{metric}` {primary} over the tuning seeds per lr multiplier (chosen: bold; an lr with a "
        "failed run is not eligible).",
        "",
        "| loss | " + " | ".join(f"lr x{lr:g}" for lr in lrs) + " | chosen |",
        "| --- | " + " | ".join("---:" for _ in lrs) + " | ---: |",
    ]
    for loss, entry in selection.items():
        cells = []
        for lr in lrs:
            mean = entry["means"].get(f"{lr:g}")
            text = "–" if mean is None else f"{mean:.4g}"
            if entry["failed"].get(f"{lr:g}"):
                text += f" ({entry['failed'][f'{lr:g}']} failed)"
            cells.append(f"**{text}**" if lr == entry["lr"] else text)
        note = "" if entry["eligible"] else " (no lr without failures)"
        lines.append(f"| `{loss}` | " + " | ".join(cells) + f" | x{entry['lr']:g}{note} |")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    from rootedgan.compare.analysis import run_summary, select_learning_rates
    from rootedgan.compare.report import default_metric
    from rootedgan.compare.runner import (
        base_learning_rates,
        failure_report,
        parse_losses,
        parse_lrs,
        plan_runs,
        run_all,
    )
    from rootedgan.fileio import atomic_open

    losses = parse_losses(args.losses)
    seeds = _seeds(args.seeds, "--seeds")
    tune_seeds = _seeds(args.tune_seeds, "--tune-seeds") if args.tune_seeds else None
    if tune_seeds and set(tune_seeds) & set(seeds):
        overlap = sorted(set(tune_seeds) & set(seeds))
        raise UserError(f"--tune-seeds and --seeds must not overlap (both have {overlap})")
    lrs = parse_lrs(args.lrs)
    config = Path(args.config)
    if not config.is_file():
        raise UserError(f"--config {args.config}: no such file")
    if args.kimg is not None and not (math.isfinite(args.kimg) and args.kimg > 0):
        raise UserError(f"--kimg must be > 0, got {args.kimg}")
    if args.log_every is not None and args.log_every < 1:
        raise UserError(f"--log-every must be >= 1, got {args.log_every}")
    if args.jobs < 1:
        raise UserError(f"--jobs must be >= 1, got {args.jobs}")
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads must be >= 1, got {args.threads}")
    threads = args.threads
    if threads is None and args.jobs > 1:
        threads = max(1, (os.cpu_count() or 1) // args.jobs)
    _threshold(args.threshold)
    targets = _targets(args.targets)
    extra = list(args.extra)
    out = Path(args.out)
    base_lr = base_learning_rates(config, extra) if lrs is not None else None
    plan = dict(kimg=args.kimg, extra=extra, log_every=args.log_every, lrs=lrs, base_lr=base_lr)
    stage1_seeds = tune_seeds if tune_seeds else seeds
    specs = plan_runs(config, losses, stage1_seeds, out, **plan)
    if args.dry_run:
        for spec in specs:
            print(shlex.join(spec.command))
        if tune_seeds:
            print(
                f"# then each loss at the lr chosen on seeds {args.tune_seeds} (by {args.primary}), on seeds "
                f"{args.seeds}"
            )
        return 0
    out.mkdir(parents=True, exist_ok=True)
    kimg = args.kimg if args.kimg is not None else _config_kimg(config)
    budget = f"{kimg:g} kimg per run" if kimg is not None else "the config's total_kimg"
    context: dict[str, Any] = {
        "config": str(config),
        "losses": losses,
        "lrs": lrs,
        "base_lr": list(base_lr) if base_lr else None,
        "kimg": kimg,
        "targets": targets,
        "primary": args.primary,
        "jobs": args.jobs,
        "threads": threads,
        "extra": extra,
        "cwd": os.getcwd(),
        "command": shlex.join(["rootedgan", "compare", *sys.argv[2:]]) if len(sys.argv) > 2 else None,
        "versions": _versions(),
    }
    started = time.time()
    all_failed: list[Any] = []

    results = run_all(specs, force=args.force, echo=not args.quiet, jobs=args.jobs, threads=threads)
    got = _Collected(results, base_lr)
    all_failed += got.failed
    stage_out = out / "tune" if tune_seeds else out
    record = _report(
        stage_out,
        got,
        args,
        {
            **context,
            "stage": "tune" if tune_seeds else "compare",
            "seeds": stage1_seeds,
            "title": f"{config.name}: {budget}, seeds {args.tune_seeds if tune_seeds else args.seeds}"
            + (" (tuning)" if tune_seeds else ""),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        },
        kimg,
    )
    if record is None:
        for r in all_failed:
            print(failure_report(r), file=sys.stderr)
        print(f"rootedgan compare: all {len(results)} runs failed; no report written", file=sys.stderr)
        return 1
    final_out = stage_out
    if tune_seeds:
        metric = record["metric"]
        primary = PRIMARY[args.primary]
        span = (0.0, float(kimg)) if kimg is not None else None
        by_loss: dict[str, dict[float, dict[int, Any]]] = {}
        for r in results:
            lr = r.spec.lr if r.spec.lr is not None else 1.0
            curves = got.runs.get(r.spec.arm, {}).get(r.spec.seed) if r.ok else None
            summary = (
                run_summary(curves, metric, args.lower_is_better, targets, span)
                if curves is not None and metric in curves
                else None
            )
            by_loss.setdefault(r.spec.loss, {}).setdefault(lr, {})[r.spec.seed] = summary
        selection = select_learning_rates(by_loss, primary, args.lower_is_better)
        sel_md = _selection_markdown(selection, args.primary, metric, tune_seeds)
        with atomic_open(out / "selection.md", "w") as fh:
            fh.write(sel_md)
        with atomic_open(out / "selection.json", "w") as fh:
            json.dump(
                {"metric": metric, "primary": primary, "tune_seeds": tune_seeds, "losses": selection},
                fh,
                indent=1,
            )
        print(sel_md)
        specs2 = []
        for loss in losses:
            chosen = selection[loss]["lr"] if lrs is not None else None
            planned = plan_runs(
                config, [loss], seeds, out, **{**plan, "lrs": None if chosen is None else [chosen]}
            )
            # arms of the evaluation: the losses, each at its chosen lr (given in the table's lr column)
            specs2 += [dataclasses.replace(spec, label=loss) for spec in planned]
        results2 = run_all(specs2, force=args.force, echo=not args.quiet, jobs=args.jobs, threads=threads)
        got2 = _Collected(results2, base_lr)
        all_failed += got2.failed
        final_out = out / "eval"
        record2 = _report(
            final_out,
            got2,
            args,
            {
                **context,
                "stage": "eval",
                "seeds": seeds,
                "selection": selection,
                "title": f"{config.name}: {budget}, each loss at its lr chosen on seeds {args.tune_seeds}; "
                f"seeds {args.seeds}",
                "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            },
            kimg,
        )
        if record2 is None:
            print("rootedgan compare: every evaluation run failed; no evaluation report", file=sys.stderr)
            for r in all_failed:
                print(failure_report(r), file=sys.stderr)
            return 1
        if args.metric is None:
            default_metric(got2.runs)  # the same metric as the tuning stage's (checked above)
    for r in all_failed:
        print(failure_report(r), file=sys.stderr)
    print((final_out / "compare.md").read_text())
    names = ["compare.png", "forest.png", "compare.md", "compare.json"]
    written = ", ".join(str(final_out / n) for n in names if (final_out / n).exists())
    print(f"wrote {written} (metric {record['metric']}; {time.time() - started:.0f} s)")
    if all_failed:
        names_failed = ", ".join(r.spec.name for r in all_failed)
        print(
            f"rootedgan compare: {len(all_failed)} run(s) failed ({names_failed}); "
            "the report covers the others",
            file=sys.stderr,
        )
        return 1
    return 0
