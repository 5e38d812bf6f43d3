"""``rootedgan compare``: the same finetune once per loss and seed, then curves and a table.

    rootedgan compare --config configs/demo.yaml --losses logistic,rooted:2,rooted:4 --kimg 1 \\
        --seeds 0-2 [--metric metrics/fid1k_full] [--out runs/compare] [-- --data.batch_size 8 ...]

Runs ``rootedgan finetune`` per (loss, seed) in fresh processes (:mod:`rootedgan.compare.runner`;
finished runs are skipped unless ``--force``), then writes ``compare.png``, ``compare.md`` and
``compare.json`` into ``--out`` (:mod:`rootedgan.compare.report`). Arguments after ``--`` go to every
finetune. Exits 1 if a run failed (after reporting on the others), 2 for bad options.
"""

from __future__ import annotations

import argparse
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

HELP = "Finetune once per loss and seed, then compare metric-vs-kimg curves (writes compare.png/.md/.json)."


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
    parser.add_argument("--seeds", default="0", help="model.seed (and data.seed) values, e.g. 0,1,2 or 0-2")
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


def run(args: argparse.Namespace) -> int:
    from rootedgan.commands.generate import parse_seeds
    from rootedgan.compare import collect_run, plan_runs, run_all, write_report
    from rootedgan.compare.runner import failure_report, parse_losses

    losses = parse_losses(args.losses)
    seeds = parse_seeds(args.seeds)
    if len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds {args.seeds!r} lists a seed more than once")
    config = Path(args.config)
    if not config.is_file():
        raise UserError(f"--config {args.config}: no such file")
    if args.kimg is not None and not (math.isfinite(args.kimg) and args.kimg > 0):
        raise UserError(f"--kimg must be > 0, got {args.kimg}")
    if args.log_every is not None and args.log_every < 1:
        raise UserError(f"--log-every must be >= 1, got {args.log_every}")
    threshold = _threshold(args.threshold)
    extra = list(args.extra)
    out = Path(args.out)
    specs = plan_runs(config, losses, seeds, out, kimg=args.kimg, extra=extra, log_every=args.log_every)
    if args.dry_run:
        for spec in specs:
            print(shlex.join(spec.command))
        return 0
    out.mkdir(parents=True, exist_ok=True)

    results = run_all(specs, force=args.force, echo=not args.quiet)
    failed = [r for r in results if not r.ok]
    for r in failed:
        print(failure_report(r), file=sys.stderr)
    done = [r for r in results if r.ok]
    if not done:
        print(f"rootedgan compare: all {len(results)} runs failed; no report written", file=sys.stderr)
        return 1

    runs: dict[str, dict[int, Any]] = {}
    wall: dict[str, list[float]] = {}
    for r in done:
        runs.setdefault(r.spec.loss, {})[r.spec.seed] = collect_run(r.spec.run_dir)
        if r.wall_s is not None:
            wall.setdefault(r.spec.loss, []).append(float(r.wall_s))
    kimg = args.kimg if args.kimg is not None else _config_kimg(config)
    budget = f"{kimg:g} kimg per run" if kimg is not None else "the config's total_kimg"
    context = {
        "title": f"{config.name}: {budget}, seeds {args.seeds}",
        "config": str(config),
        "losses": losses,
        "seeds": seeds,
        "kimg": kimg,
        "extra": extra,
        "cwd": os.getcwd(),
        "runs": [
            {
                "loss": r.spec.loss,
                "seed": r.spec.seed,
                "run_dir": str(r.spec.run_dir),
                "command": shlex.join(r.spec.command),
                "status": r.status,
                "returncode": r.returncode,
                "wall_s": r.wall_s,
            }
            for r in results
        ],
        "versions": _versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    record = write_report(
        out, runs, args.metric, args.lower_is_better, threshold=threshold, wall_s=wall, context=context
    )
    print((out / "compare.md").read_text())
    written = ", ".join(str(out / name) for name in ("compare.png", "compare.md", "compare.json"))
    print(f"wrote {written} (metric {record['metric']})")
    if failed:
        names = ", ".join(r.spec.name for r in failed)
        print(
            f"rootedgan compare: {len(failed)} run(s) failed ({names}); the report covers the others",
            file=sys.stderr,
        )
        return 1
    return 0
