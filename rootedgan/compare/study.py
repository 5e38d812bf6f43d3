"""The study behind ``rootedgan compare`` (README, "Comparing losses"): runs, then reports.

:func:`plan_study` checks the options (errors name the option) and plans the runs; :func:`run_study` runs
them (:mod:`.runner`) and writes the report (:mod:`.report`) into ``out``. With ``tune_seeds`` there are two
stages: every (loss, lr) on the tuning seeds (``out/tune``), each loss's best lr (``out/selection.md`` and
``.json``), then every loss at its own lr on the fresh ``seeds`` (``out/eval``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import shlex
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning
import numpy
import torch
import yaml

from rootedgan import __version__
from rootedgan.compare.analysis import loss_floors, run_loss, run_summary, select_learning_rates
from rootedgan.compare.curves import collect_run
from rootedgan.compare.pairing import check_pairing, read_pairing
from rootedgan.compare.report import write_report
from rootedgan.compare.runner import (
    RunResult,
    RunSpec,
    arm_name,
    base_learning_rates,
    parse_losses,
    parse_lrs,
    plan_runs,
    run_all,
)
from rootedgan.errors import UserError
from rootedgan.fileio import atomic_open
from rootedgan.runs import run_log_dir
from rootedgan.sampling import parse_seeds

#: ``--primary`` -> the per-run value that chooses the lr and heads the paired table.
PRIMARY = {"auc": "auc_mean", "final": "final", "best": "best"}


@dataclass
class StudyOptions:
    """What ``rootedgan compare`` takes (its options, same names and defaults); strings are parsed and
    checked by :func:`plan_study`. ``extra`` goes to every finetune; ``command`` is recorded as given."""

    config: str | Path
    losses: str | Sequence[str] = "logistic,rooted"
    seeds: str = "0"
    tune_seeds: str | None = None
    lrs: str | Sequence[float] | None = None
    kimg: float | None = None
    targets: str = ""
    primary: str = "auc"
    metric: str | None = None
    lower_is_better: bool = True
    threshold: str = "baseline"
    jobs: int = 1
    threads: int | None = None
    out: str | Path = "runs/compare"
    force: bool = False
    log_every: int | None = 1
    quiet: bool = False
    extra: Sequence[str] = ()
    command: str | None = None


@dataclass
class StudyPlan:
    """The checked options and the runs of the first stage (:func:`plan_study`)."""

    options: StudyOptions
    config: Path
    out: Path
    losses: list[str]
    seeds: list[int]
    tune_seeds: list[int] | None
    lrs: list[float] | None
    base_lr: tuple[float, float] | None
    threads: int | None
    targets: list[float]
    threshold: float | None
    specs: list[RunSpec]

    def runs(self, losses: Sequence[str], seeds: Sequence[int], lrs: Sequence[float] | None) -> list[RunSpec]:
        o = self.options
        return plan_runs(
            self.config,
            losses,
            seeds,
            self.out,
            kimg=o.kimg,
            extra=list(o.extra),
            log_every=o.log_every,
            lrs=lrs,
            base_lr=self.base_lr,
        )


@dataclass
class StudyResult:
    """``record``: the final report's ``compare.json`` (None when every run of a stage failed: ``error``
    says which); ``out``: its folder; ``failed``: the failed runs of every stage."""

    record: dict[str, Any] | None
    out: Path
    failed: list[RunResult]
    seconds: float
    stage: str
    error: str | None = None


def _finite(text: str, option: str, expected: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"{option} must be {expected}, got {text!r}") from None
    if not math.isfinite(value):
        raise UserError(f"{option} must be finite, got {text!r}")
    return value


def _seeds(value: str, option: str) -> list[int]:
    seeds = parse_seeds(value)
    if len(set(seeds)) != len(seeds):
        raise UserError(f"{option} {value!r} lists a seed more than once")
    return seeds


def _check_counts(o: StudyOptions) -> None:
    if o.kimg is not None and not (math.isfinite(o.kimg) and o.kimg > 0):
        raise UserError(f"--kimg must be > 0, got {o.kimg}")
    for option, value in (("--log-every", o.log_every), ("--jobs", o.jobs), ("--threads", o.threads)):
        if value is not None and value < 1:
            raise UserError(f"{option} must be >= 1, got {value}")
    if o.primary not in PRIMARY:
        raise UserError(f"--primary must be one of {', '.join(sorted(PRIMARY))}, got {o.primary!r}")


def plan_study(options: StudyOptions) -> StudyPlan:
    """Check every option (a :class:`UserError` naming it, before any run) and plan the first stage."""
    o = options
    losses = parse_losses(o.losses)
    seeds = _seeds(o.seeds, "--seeds")
    tune_seeds = _seeds(o.tune_seeds, "--tune-seeds") if o.tune_seeds else None
    if tune_seeds and set(tune_seeds) & set(seeds):
        overlap = sorted(set(tune_seeds) & set(seeds))
        raise UserError(f"--tune-seeds and --seeds must not overlap (both have {overlap})")
    lrs = parse_lrs(o.lrs)
    config = Path(o.config)
    if not config.is_file():
        raise UserError(f"--config {o.config}: no such file")
    _check_counts(o)
    threads = o.threads
    if threads is None and o.jobs > 1:
        threads = max(1, (os.cpu_count() or 1) // o.jobs)
    threshold = (
        None if o.threshold == "baseline" else _finite(o.threshold, "--threshold", "'baseline' or a number")
    )
    items = [item for item in (x.strip() for x in o.targets.split(",")) if item]
    targets = [_finite(item, "--targets", "a comma list of numbers") for item in items]
    base_lr = base_learning_rates(config, list(o.extra)) if lrs is not None else None
    plan = StudyPlan(
        o, config, Path(o.out), losses, seeds, tune_seeds, lrs, base_lr, threads, targets, threshold, []
    )
    plan.specs = plan.runs(losses, tune_seeds or seeds, lrs)
    return plan


def _config_kimg(config: Path) -> float | None:
    try:
        data = yaml.safe_load(config.read_text()) or {}
        return float(data["model"]["total_kimg"])
    except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError):
        return None


def versions() -> dict[str, Any]:
    """The versions a report records: rootedgan (and its git commit in a checkout), Python, libraries."""
    info: dict[str, Any] = {
        "rootedgan": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
    }
    try:
        repo = Path(__file__).resolve().parents[2]
        commit = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if commit.returncode == 0:
            info["git_commit"] = commit.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return info


@dataclass
class _Stage:
    """The finished runs of one stage: curves, wall times, loss floors, pairing records per arm."""

    results: list[RunResult]
    runs: dict[str, dict[int, Any]] = field(default_factory=dict)
    wall_by_seed: dict[str, dict[int, float]] = field(default_factory=dict)
    floors: dict[str, tuple[float, float]] = field(default_factory=dict)
    pairing: dict[str, dict[int, Any]] = field(default_factory=dict)
    arm_info: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def failed(self) -> list[RunResult]:
        return [r for r in self.results if not r.ok]


def _collect(results: list[RunResult], base_lr: tuple[float, float] | None) -> _Stage:
    got = _Stage(results)
    for r in results:
        arm = r.spec.arm
        info: dict[str, Any] = {"loss": r.spec.loss, "lr": r.spec.lr}
        if r.spec.lr is not None and base_lr is not None:
            info.update(g_lr=base_lr[0] * r.spec.lr, d_lr=base_lr[1] * r.spec.lr)
        got.arm_info.setdefault(arm, info)
        if not r.ok:
            continue
        got.runs.setdefault(arm, {})[r.spec.seed] = collect_run(r.spec.run_dir)
        if r.wall_s is not None:
            got.wall_by_seed.setdefault(arm, {})[r.spec.seed] = float(r.wall_s)
        log_dir = run_log_dir(r.spec.run_dir)
        if arm not in got.floors:
            got.floors[arm] = loss_floors(run_loss(log_dir, r.spec.loss))
        got.pairing.setdefault(arm, {})[r.spec.seed] = read_pairing(log_dir)
    return got


def _run_records(results: list[RunResult]) -> list[dict[str, Any]]:
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


def _report(out: Path, got: _Stage, plan: StudyPlan, context: dict[str, Any]) -> dict[str, Any] | None:
    """Write the stage's report into ``out``; None (nothing written) when none of its runs finished."""
    if not got.runs:
        return None
    o = plan.options
    out.mkdir(parents=True, exist_ok=True)
    kimg = context["kimg"]
    # a grid of learning rates: each arm against the baseline loss at the same lr
    first = got.results[0].spec.loss if got.results else None
    baselines = {
        arm: arm_name(first, info["lr"])
        for arm, info in got.arm_info.items()
        if info["lr"] is not None and arm != info["loss"] and arm_name(first, info["lr"]) in got.runs
    }
    run_context = {
        **context,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "runs": _run_records(got.results),
    }
    span = (0.0, float(kimg)) if kimg is not None else None
    pairing = check_pairing(got.pairing) if len(got.runs) > 1 else None
    wall = {arm: list(by_seed.values()) for arm, by_seed in got.wall_by_seed.items()}
    return write_report(
        out,
        got.runs,
        o.metric,
        o.lower_is_better,
        threshold=plan.threshold,
        wall_s=wall,
        context=run_context,
        pairing=pairing,
        arm_info=got.arm_info,
        wall_by_seed=got.wall_by_seed,
        targets=plan.targets,
        primary=PRIMARY[o.primary],
        span=span,
        floors=got.floors,
        baselines=baselines or None,
    )


def selection_markdown(selection: dict[str, Any], primary: str, metric: str, tune_seeds: list[int]) -> str:
    """``selection.md``: per loss the mean ``primary`` value per lr multiplier, the chosen one in bold."""
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


def _select(plan: StudyPlan, got: _Stage, metric: str, kimg: float | None) -> tuple[dict[str, Any], str]:
    """Each loss's lr on the tuning runs, written to ``selection.json`` and (the markdown returned)
    ``selection.md``."""
    o = plan.options
    span = (0.0, float(kimg)) if kimg is not None else None
    by_loss: dict[str, dict[float, dict[int, Any]]] = {}
    for r in got.results:
        lr = r.spec.lr if r.spec.lr is not None else 1.0
        curves = got.runs.get(r.spec.arm, {}).get(r.spec.seed) if r.ok else None
        finished = curves is not None and metric in curves
        summary = run_summary(curves, metric, o.lower_is_better, plan.targets, span) if finished else None
        by_loss.setdefault(r.spec.loss, {}).setdefault(lr, {})[r.spec.seed] = summary
    selection = select_learning_rates(by_loss, PRIMARY[o.primary], o.lower_is_better)
    assert plan.tune_seeds is not None
    markdown = selection_markdown(selection, o.primary, metric, plan.tune_seeds)
    with atomic_open(plan.out / "selection.md", "w") as fh:
        fh.write(markdown)
    record = {
        "metric": metric,
        "primary": PRIMARY[o.primary],
        "tune_seeds": plan.tune_seeds,
        "losses": selection,
    }
    with atomic_open(plan.out / "selection.json", "w") as fh:
        json.dump(record, fh, indent=1)
    return selection, markdown


def _context(plan: StudyPlan, kimg: float | None) -> dict[str, Any]:
    o, base_lr = plan.options, list(plan.base_lr) if plan.base_lr else None
    return {
        "config": str(plan.config),
        "losses": plan.losses,
        "lrs": plan.lrs,
        "base_lr": base_lr,
        "kimg": kimg,
        "targets": plan.targets,
        "primary": o.primary,
        "jobs": o.jobs,
        "threads": plan.threads,
        "extra": list(o.extra),
        "cwd": os.getcwd(),
        "command": o.command,
        "versions": versions(),
    }


def run_study(options: StudyOptions | StudyPlan, say: Callable[[str], None] = print) -> StudyResult:
    """Plan (:func:`plan_study`), run and report the study; ``say`` gets the progress lines and, between
    the two stages, the learning-rate selection table."""
    plan = options if isinstance(options, StudyPlan) else plan_study(options)
    o, out, started = plan.options, plan.out, time.time()
    out.mkdir(parents=True, exist_ok=True)
    kimg = o.kimg if o.kimg is not None else _config_kimg(plan.config)
    budget = f"{kimg:g} kimg per run" if kimg is not None else "the config's total_kimg"
    context = _context(plan, kimg)

    def stage(specs: list[RunSpec]) -> _Stage:
        kw = dict(force=o.force, echo=not o.quiet, jobs=o.jobs, threads=plan.threads, say=say)
        return _collect(run_all(specs, **kw), plan.base_lr)

    got = stage(plan.specs)
    name, seeds = ("tune", o.tune_seeds) if plan.tune_seeds else ("compare", o.seeds)
    title = f"{plan.config.name}: {budget}, seeds {seeds}" + (" (tuning)" if plan.tune_seeds else "")
    stage_out = out / "tune" if plan.tune_seeds else out
    info = {"stage": name, "seeds": plan.tune_seeds or plan.seeds, "title": title}
    record = _report(stage_out, got, plan, {**context, **info})
    failed = got.failed
    if record is None:
        error = f"all {len(got.results)} runs failed; no report written"
        return StudyResult(None, stage_out, failed, time.time() - started, name, error)
    if not plan.tune_seeds:
        return StudyResult(record, stage_out, failed, time.time() - started, name)
    selection, markdown = _select(plan, got, record["metric"], kimg)
    say(markdown)
    specs: list[RunSpec] = []
    for loss in plan.losses:
        chosen = [selection[loss]["lr"]] if plan.lrs is not None else None
        # arms of the evaluation: the losses, each at its chosen lr (given in the table's lr column)
        specs += [dataclasses.replace(spec, label=loss) for spec in plan.runs([loss], plan.seeds, chosen)]
    got = stage(specs)
    failed = failed + got.failed
    title = (
        f"{plan.config.name}: {budget}, each loss at its lr chosen on seeds {o.tune_seeds}; seeds {o.seeds}"
    )
    info = {"stage": "eval", "seeds": plan.seeds, "selection": selection, "title": title}
    record = _report(out / "eval", got, plan, {**context, **info})
    error = None if record is not None else "every evaluation run failed; no evaluation report"
    return StudyResult(record, out / "eval", failed, time.time() - started, "eval", error)
