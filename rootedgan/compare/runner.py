"""Run the same finetune once per (loss, seed), each in a fresh ``python -m rootedgan finetune`` process.

A run lives in ``OUT/<loss>/seed<S>`` (``rooted:4`` becomes the folder ``rooted-k4``) with its output
teed to ``finetune.log``. When it exits with status 0, ``run.json`` is written there (atomically) with
its arguments, wall time and log folder; a later comparison with the same arguments skips it, so an
interrupted comparison continues where it stopped. A run without that record (interrupted, failed, or
with other arguments) is run again from the start, in a new ``lightning_logs/version_*`` folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rootedgan.compare.curves import RUN_RECORD, log_dirs
from rootedgan.errors import UserError
from rootedgan.fileio import atomic_open
from rootedgan.losses import AdversarialLoss

LOG_NAME = "finetune.log"


def parse_losses(spec: str | Sequence[str]) -> list[str]:
    """``'logistic,rooted:2,rooted:4'`` -> the list, each checked as a ``model.loss`` value.

    Raises UserError for an unknown loss, a bad root, duplicates or an empty list (before any run starts).
    """
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    losses = [s.strip() for s in items if s.strip()]
    if not losses:
        raise UserError("--losses is empty: give a comma list of model.loss values, e.g. logistic,rooted:2")
    for loss in losses:
        try:
            AdversarialLoss.parse(loss)
        except ValueError as err:
            raise UserError(f"--losses: {err} (values: logistic, rooted, rooted:K with K > 1)") from None
    duplicates = sorted({x for x in losses if losses.count(x) > 1})
    if duplicates:
        raise UserError(f"--losses lists {', '.join(duplicates)} more than once")
    return losses


def loss_dirname(loss: str) -> str:
    """Folder name of a loss: ``rooted:4`` -> ``rooted-k4`` (no ``:`` in paths)."""
    return loss.replace(":", "-k")


@dataclass(frozen=True)
class RunSpec:
    """One finetune of the comparison: ``args`` are the arguments after ``rootedgan finetune``."""

    loss: str
    seed: int
    run_dir: Path
    args: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"{self.loss}/seed{self.seed}"

    @property
    def command(self) -> list[str]:
        return [sys.executable, "-m", "rootedgan", "finetune", *self.args]


@dataclass
class RunResult:
    """What happened to one run: ``status`` is ``ok``, ``skipped`` (finished earlier) or ``failed``."""

    spec: RunSpec
    status: str
    returncode: int | None
    wall_s: float | None
    log_path: Path
    log_tail: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status in ("ok", "skipped")


def plan_runs(
    config: str | Path,
    losses: Sequence[str],
    seeds: Sequence[int],
    out: str | Path,
    kimg: float | None = None,
    extra: Sequence[str] = (),
    log_every: int | None = 1,
) -> list[RunSpec]:
    """One :class:`RunSpec` per (loss, seed), losses outermost.

    Each run gets ``--model.loss L --model.seed S --data.seed S`` (so every loss sees the same latents,
    data subset and data order for a given seed), ``--model.total_kimg`` when ``kimg`` is given,
    ``--trainer.default_root_dir OUT/<loss>/seed<S>``, ``--trainer.log_every_n_steps`` and no progress
    bar; ``extra`` comes last, so it can override any of them.
    """
    out = Path(out)
    specs = []
    for loss in losses:
        for seed in seeds:
            run_dir = out / loss_dirname(loss) / f"seed{seed}"
            args = ["--config", str(config), "--model.loss", loss, "--model.seed", str(seed)]
            args += ["--data.seed", str(seed)]
            if kimg is not None:
                args += ["--model.total_kimg", f"{kimg:g}"]
            args += ["--trainer.default_root_dir", str(run_dir), "--trainer.enable_progress_bar", "false"]
            if log_every is not None:
                args += ["--trainer.log_every_n_steps", str(log_every)]
            specs.append(RunSpec(loss, int(seed), run_dir, tuple([*args, *extra])))
    return specs


def finished_record(spec: RunSpec) -> dict[str, Any] | None:
    """The ``run.json`` of an earlier successful run with exactly these arguments and working folder."""
    path = spec.run_dir / RUN_RECORD
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    same = record.get("args") == list(spec.args) and record.get("cwd") == os.getcwd()
    return record if record.get("status") == "ok" and same else None


def _tail(path: Path, lines: int) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return []


def execute(spec: RunSpec, echo: bool = True, tail_lines: int = 20) -> RunResult:
    """Run ``spec`` in a subprocess, its stdout and stderr teed to ``run_dir/finetune.log`` (and to our
    stdout when ``echo``); on success write ``run.json``."""
    spec.run_dir.mkdir(parents=True, exist_ok=True)
    log_path = spec.run_dir / LOG_NAME
    before = {p.name for p in log_dirs(spec.run_dir)}
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    start = time.perf_counter()
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(spec.command) + "\n")
        log.flush()
        proc = subprocess.Popen(
            spec.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, env=env
        )
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                if echo:
                    sys.stdout.write(f"[{spec.name}] {line}")
                    sys.stdout.flush()
            returncode = proc.wait()
        except BaseException:
            proc.terminate()
            proc.wait()
            raise
    wall = time.perf_counter() - start
    if returncode != 0:
        return RunResult(spec, "failed", returncode, wall, log_path, _tail(log_path, tail_lines))
    new = [p for p in log_dirs(spec.run_dir) if p.name not in before]
    found = new or log_dirs(spec.run_dir)
    log_dir = found[-1].relative_to(spec.run_dir).as_posix() if found else None
    record = {
        "loss": spec.loss,
        "seed": spec.seed,
        "args": list(spec.args),
        "command": spec.command,
        "cwd": os.getcwd(),
        "status": "ok",
        "returncode": returncode,
        "wall_s": wall,
        "log_dir": log_dir,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    with atomic_open(spec.run_dir / RUN_RECORD, "w") as fh:
        json.dump(record, fh, indent=1)
    return RunResult(spec, "ok", returncode, wall, log_path)


def run_all(
    specs: Sequence[RunSpec],
    force: bool = False,
    echo: bool = True,
    say: Callable[[str], None] = print,
) -> list[RunResult]:
    """Run every spec in order (skipping finished ones unless ``force``); a failure does not stop the rest."""
    results = []
    for i, spec in enumerate(specs, 1):
        record = None if force else finished_record(spec)
        if record is not None:
            say(f"[{i}/{len(specs)}] {spec.name}: finished earlier ({spec.run_dir / RUN_RECORD}), skipped")
            results.append(
                RunResult(
                    spec,
                    "skipped",
                    record.get("returncode", 0),
                    record.get("wall_s"),
                    spec.run_dir / LOG_NAME,
                )
            )
            continue
        say(f"[{i}/{len(specs)}] {spec.name}: running, log in {spec.run_dir / LOG_NAME}")
        result = execute(spec, echo=echo)
        if result.ok:
            say(f"[{i}/{len(specs)}] {spec.name}: done in {result.wall_s:.1f} s")
        else:
            say(f"[{i}/{len(specs)}] {spec.name}: FAILED with exit status {result.returncode}")
        results.append(result)
    return results


def failure_report(result: RunResult) -> str:
    """Which run failed, its exit status, command and the last lines of its log."""
    tail = "\n".join("    " + line for line in result.log_tail)
    return (
        f"run {result.spec.name} failed with exit status {result.returncode} "
        f"(log: {result.log_path}):\n  $ {' '.join(result.spec.command)}\n  last lines of the log:\n{tail}"
    )
