"""The study behind ``rootedgan compare`` (README, "Comparing losses", also for the two stages with
``tune_seeds``): :func:`plan_study` checks the options (errors name the option) and plans the runs;
:func:`run_study` runs them (:mod:`.runner`) and writes the reports (:mod:`.report`) into ``out``."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
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
from rootedgan.compare.report import md_table, write_report
from rootedgan.compare.runner import (
    RunResult,
    RunSpec,
    arm_name,
    base_learning_rates,
    finished_record,
    parse_losses,
    parse_lrs,
    plan_runs,
    run_all,
    run_env,
)
from rootedgan.errors import UserError
from rootedgan.fileio import atomic_open
from rootedgan.metrics.base import KimgMetricCallback
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
    """The checked options and the runs of the first stage (:func:`plan_study`); ``kimg``: the planned
    length of a run (``--kimg``, else the config's ``model.total_kimg`` when it has one)."""

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
    kimg: float | None
    specs: list[RunSpec] = field(default_factory=list)

    @property
    def span(self) -> tuple[float, float] | None:
        """The kimg range of the areas under the curves: the planned length, when known."""
        return (0.0, float(self.kimg)) if self.kimg is not None else None

    def runs(self, losses: Sequence[str], seeds: Sequence[int], lrs: Sequence[float] | None) -> list[RunSpec]:
        o = self.options
        return plan_runs(
            self.config, losses, seeds, self.out, o.kimg, o.extra, o.log_every, lrs, self.base_lr
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


def _config_kimg(config: Path) -> float | None:
    try:
        return float((yaml.safe_load(config.read_text()) or {})["model"]["total_kimg"])
    except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError):
        return None


def plan_study(options: StudyOptions) -> StudyPlan:
    """Check every option (a :class:`UserError` naming it, before any run) and plan the first stage."""
    o = options
    losses = parse_losses(o.losses)
    seeds = _seeds(o.seeds, "--seeds")
    tune_seeds = _seeds(o.tune_seeds, "--tune-seeds") if o.tune_seeds else None
    overlap = sorted(set(tune_seeds or ()) & set(seeds))
    if overlap:
        raise UserError(f"--tune-seeds and --seeds must not overlap (both have {overlap})")
    lrs = parse_lrs(o.lrs)
    config = Path(o.config)
    if not config.is_file():
        raise UserError(f"--config {o.config}: no such file")
    if o.kimg is not None and not (math.isfinite(o.kimg) and o.kimg > 0):
        raise UserError(f"--kimg must be > 0, got {o.kimg}")
    for option, value in (("--log-every", o.log_every), ("--jobs", o.jobs), ("--threads", o.threads)):
        if value is not None and value < 1:
            raise UserError(f"{option} must be >= 1, got {value}")
    if o.primary not in PRIMARY:
        raise UserError(f"--primary must be one of {', '.join(sorted(PRIMARY))}, got {o.primary!r}")
    threads = o.threads
    if threads is None and o.jobs > 1:
        threads = max(1, (os.cpu_count() or 1) // o.jobs)
    threshold = (
        None if o.threshold == "baseline" else _finite(o.threshold, "--threshold", "'baseline' or a number")
    )
    items = [x.strip() for x in o.targets.split(",")]
    targets = [_finite(item, "--targets", "a comma list of numbers") for item in items if item]
    base_lr = base_learning_rates(config, o.extra) if lrs is not None else None
    kimg = o.kimg if o.kimg is not None else _config_kimg(config)
    plan = StudyPlan(
        o, config, Path(o.out), losses, seeds, tune_seeds, lrs, base_lr, threads, targets, threshold, kimg
    )
    plan.specs = plan.runs(losses, tune_seeds or seeds, lrs)
    return plan


def _logs_metrics(class_path: Any) -> bool:
    """Whether a callback class named in a config logs ``metrics/*`` keys (FID, digits quality, ...)."""
    module, _, name = str(class_path).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return False
    return isinstance(cls, type) and issubclass(cls, KimgMetricCallback)


def preflight(spec: RunSpec, metric: str | None) -> None:
    """Before any run, fail in one line unless the finetune settings of ``spec`` (every arm's, but for the
    loss, lr and seed) resolve (``finetune --print_config``) and, unless ``metric`` names a key outside
    ``metrics/``, hold a callback that logs a quality metric."""
    proc = subprocess.run([*spec.command, "--print_config"], capture_output=True, text=True, env=run_env())
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise UserError(f"the runs' finetune settings are not valid (nothing was trained): {last}")
    if metric is not None and not metric.startswith("metrics/"):
        return
    text = proc.stdout[max(proc.stdout.find("# lightning"), 0) :]  # after any NVIDIA-flag mapping lines
    trainer = (yaml.safe_load(text) or {}).get("trainer") or {}
    if not any(
        isinstance(cb, dict) and _logs_metrics(cb.get("class_path")) for cb in trainer.get("callbacks") or []
    ):
        raise UserError(
            f"{spec.args[1]} logs no quality metric, so there would be nothing to compare (nothing was "
            "trained): add rootedgan.metrics.FIDCallback or rootedgan.digits.quality.DigitsQualityCallback "
            "under trainer.callbacks, or name another logged key with --metric"
        )


def versions() -> dict[str, Any]:
    """The versions a report records: rootedgan (and its git commit in a checkout), Python, libraries."""
    info: dict[str, Any] = {
        "rootedgan": __version__,
        "python": platform.python_version(),
        **{module.__name__: module.__version__ for module in (torch, lightning, numpy)},
        "platform": platform.platform(),
    }
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        git = ["git", "-C", str(Path(__file__).resolve().parents[2]), "rev-parse", "HEAD"]
        commit = subprocess.run(git, capture_output=True, text=True, timeout=10)
        if commit.returncode == 0:
            info["git_commit"] = commit.stdout.strip()
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


def _report(out: Path, got: _Stage, plan: StudyPlan, context: dict[str, Any]) -> dict[str, Any] | None:
    """Write the stage's report into ``out``; None (nothing written) when none of its runs finished."""
    if not got.runs:
        return None
    o = plan.options
    out.mkdir(parents=True, exist_ok=True)
    # a grid of learning rates: each arm against the baseline loss at the same lr
    first = got.results[0].spec.loss
    baselines = {
        arm: arm_name(first, info["lr"])
        for arm, info in got.arm_info.items()
        if info["lr"] is not None and arm != info["loss"] and arm_name(first, info["lr"]) in got.runs
    }
    runs = [
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
        for r in got.results
    ]
    return write_report(
        out,
        got.runs,
        o.metric,
        o.lower_is_better,
        threshold=plan.threshold,
        context={**context, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "runs": runs},
        pairing=check_pairing(got.pairing) if len(got.runs) > 1 else None,
        arm_info=got.arm_info,
        wall_by_seed=got.wall_by_seed,
        targets=plan.targets,
        primary=PRIMARY[o.primary],
        span=plan.span,
        floors=got.floors,
        baselines=baselines or None,
    )


def selection_markdown(selection: dict[str, Any], primary: str, metric: str, tune_seeds: list[int]) -> str:
    """``selection.md``: per loss the mean ``primary`` value per lr multiplier, the chosen one in bold."""
    lrs = sorted({float(lr) for entry in selection.values() for lr in entry["means"]})
    rows = []
    for loss, entry in selection.items():
        cells = []
        for lr in lrs:
            mean, failed = entry["means"].get(f"{lr:g}"), entry["failed"].get(f"{lr:g}")
            text = ("–" if mean is None else f"{mean:.4g}") + (f" ({failed} failed)" if failed else "")
            cells.append(f"**{text}**" if lr == entry["lr"] else text)
        note = "" if entry["eligible"] else " (no lr without failures)"
        rows.append([f"`{loss}`", *cells, f"x{entry['lr']:g}{note}"])
    columns = [("loss", "---"), *((f"lr x{lr:g}", "---:") for lr in lrs), ("chosen", "---:")]
    return "\n".join(
        [
            f"### Learning rate per loss, chosen on tuning seeds {', '.join(map(str, tune_seeds))}",
            "",
            f"Mean `{metric}` {primary} over the tuning seeds per lr multiplier (chosen: bold; an lr with a "
            "failed run is not eligible).",
            "",
            *md_table(columns, rows),
        ]
    )


def _select(plan: StudyPlan, got: _Stage, metric: str) -> tuple[dict[str, Any], str]:
    """Each loss's lr on the tuning runs, written to ``selection.json`` and (the markdown returned)
    ``selection.md``."""
    o = plan.options
    by_loss: dict[str, dict[float, dict[int, Any]]] = {}
    for r in got.results:
        curves = got.runs.get(r.spec.arm, {}).get(r.spec.seed) if r.ok else None
        finished = curves is not None and metric in curves
        summary = (
            run_summary(curves, metric, o.lower_is_better, plan.targets, plan.span) if finished else None
        )
        lr = r.spec.lr if r.spec.lr is not None else 1.0
        by_loss.setdefault(r.spec.loss, {}).setdefault(lr, {})[r.spec.seed] = summary
    selection = select_learning_rates(by_loss, PRIMARY[o.primary], o.lower_is_better)
    assert plan.tune_seeds is not None
    markdown = selection_markdown(selection, o.primary, metric, plan.tune_seeds)
    with atomic_open(plan.out / "selection.md", "w") as fh:
        fh.write(markdown)
    record = {"metric": metric, "primary": PRIMARY[o.primary], "tune_seeds": plan.tune_seeds}
    with atomic_open(plan.out / "selection.json", "w") as fh:
        json.dump({**record, "losses": selection}, fh, indent=1)
    return selection, markdown


def run_study(options: StudyOptions, say: Callable[[str], None] = print) -> StudyResult:
    """Plan (:func:`plan_study`), run and report the study; ``say`` gets the progress lines and, between
    the two stages, the learning-rate selection table."""
    plan = plan_study(options)
    o, out, kimg, started = plan.options, plan.out, plan.kimg, time.time()
    if o.force or any(finished_record(spec) is None for spec in plan.specs):
        preflight(plan.specs[0], o.metric)
    out.mkdir(parents=True, exist_ok=True)
    budget = f"{kimg:g} kimg per run" if kimg is not None else "the config's total_kimg"
    context = {
        "config": str(plan.config),
        "losses": plan.losses,
        "lrs": plan.lrs,
        "base_lr": list(plan.base_lr) if plan.base_lr else None,
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

    def stage(specs: list[RunSpec]) -> _Stage:
        return _collect(run_all(specs, o.force, not o.quiet, say, o.jobs, plan.threads), plan.base_lr)

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
    selection, markdown = _select(plan, got, record["metric"])
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
