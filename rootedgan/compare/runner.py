"""Run the same finetune per (loss, learning rate, seed), each in a fresh ``rootedgan finetune`` process, in
``OUT/<loss>[/lr<M>]/seed<S>``; a run that exited 0 leaves ``run.json`` and is skipped when its arguments are
the same (README, "Comparing losses"); any other run starts again in a new version."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rootedgan.errors import UserError
from rootedgan.fileio import atomic_open
from rootedgan.runs import RUN_RECORD, log_dirs
from rootedgan.training.losses import make_loss
from rootedgan.training.settings import OptimConfig

LOG_NAME = "finetune.log"
#: Added to every run: writes pairing.json (rootedgan.compare.pairing), so the paired design is checked.
PAIRING_CALLBACK = "rootedgan.compare.pairing.PairingRecorder"


def parse_losses(spec: str | Sequence[str]) -> list[str]:
    """``'logistic,rooted:2,rooted:4'`` -> the list, each checked as a ``model.loss`` value, no duplicates."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    losses = [s.strip() for s in items if s.strip()]
    if not losses:
        raise UserError("--losses is empty: give a comma list of model.loss values, e.g. logistic,rooted:2")
    for loss in losses:
        try:
            make_loss(loss)
        except ValueError as err:
            raise UserError(
                f"--losses: {err} (values: logistic, rooted, rooted:K with K > 1, optionally *C for a "
                "constant scale C > 0, or logistic*rooted:K)"
            ) from None
    duplicates = sorted({x for x in losses if losses.count(x) > 1})
    if duplicates:
        raise UserError(f"--losses lists {', '.join(duplicates)} more than once")
    return losses


def parse_lrs(spec: str | Sequence[float] | None) -> list[float] | None:
    """``'0.25,0.5,1'`` -> ``[0.25, 0.5, 1.0]`` (multipliers: finite, > 0, no duplicates); None or empty ->
    None (the config's learning rates)."""
    if spec is None:
        return None
    items = [x.strip() for x in spec.split(",")] if isinstance(spec, str) else [str(x) for x in spec]
    lrs = []
    for item in filter(None, items):
        try:
            lrs.append(float(item))
        except ValueError:
            raise UserError(f"--lrs: cannot read {item!r} as a number (e.g. --lrs 0.25,0.5,1)") from None
        if not (math.isfinite(lrs[-1]) and lrs[-1] > 0):
            raise UserError(f"--lrs: multipliers must be finite and > 0, got {item}")
    if not lrs:
        return None
    if len(set(lrs)) != len(lrs):
        raise UserError(f"--lrs {spec!r} lists a multiplier more than once")
    return lrs


def arm_name(loss: str, lr: float | None) -> str:
    """``loss`` with the config's learning rates, ``loss@lrM`` with multiplier ``M``."""
    return loss if lr is None else f"{loss}@lr{lr:g}"


@dataclass(frozen=True)
class RunSpec:
    """One finetune: ``args`` follow ``rootedgan finetune``; ``lr`` is the multiplier (None: the config's);
    ``label`` names the arm in reports (default :func:`arm_name`), not part of the run's identity."""

    loss: str
    seed: int
    run_dir: Path
    args: tuple[str, ...]
    lr: float | None = None
    label: str | None = None

    @property
    def arm(self) -> str:
        return self.label if self.label is not None else arm_name(self.loss, self.lr)

    @property
    def name(self) -> str:
        return f"{self.arm}/seed{self.seed}"

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
    lrs: Sequence[float] | None = None,
    base_lr: tuple[float, float] | None = None,
) -> list[RunSpec]:
    """One :class:`RunSpec` per (loss, lr, seed), losses outermost, then learning rates, then seeds.

    Each run gets ``--model.loss L --model.seed S --data.seed S`` (every arm sees the same latents, data
    subset and order for a seed), ``--model.total_kimg`` with ``kimg``, its folder, ``log_every`` and no
    progress bar; then ``extra``, which can override them; then the ``PairingRecorder`` (after ``extra``, so
    its ``--trainer.callbacks.init_args.*`` still reach the config's last callback); then, with ``lrs``, the
    learning rates: the multiplier times ``base_lr`` (default :func:`base_learning_rates`).
    """
    out = Path(out)
    if lrs is not None and base_lr is None:
        base_lr = base_learning_rates(config, extra)
    specs = []
    for loss in losses:
        for lr in lrs if lrs is not None else [None]:
            for seed in seeds:
                folder = out / loss.replace(":", "-k").replace("*", "-x")  # no ':' or '*' in paths
                run_dir = (folder if lr is None else folder / f"lr{lr:g}") / f"seed{seed}"
                args = ["--config", str(config), "--model.loss", loss, "--model.seed", str(seed)]
                args += ["--data.seed", str(seed)]
                if kimg is not None:
                    args += ["--model.total_kimg", f"{kimg:g}"]
                args += ["--trainer.default_root_dir", str(run_dir), "--trainer.enable_progress_bar", "false"]
                if log_every is not None:
                    args += ["--trainer.log_every_n_steps", str(log_every)]
                # the recorder after extra: its --trainer.callbacks.init_args.* still reach the config's own
                args += [*extra, f"--trainer.callbacks+={PAIRING_CALLBACK}"]
                if lr is not None:
                    assert base_lr is not None
                    args += ["--model.optim.g_lr", f"{base_lr[0] * lr:.6g}"]
                    args += ["--model.optim.d_lr", f"{base_lr[1] * lr:.6g}"]
                specs.append(RunSpec(loss, int(seed), run_dir, tuple(args), lr))
    return specs


def _yaml_lrs(path: str | Path) -> dict[str, float]:
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise UserError(f"cannot read the learning rates of {path}: {err}") from None
    model = data.get("model") if isinstance(data, dict) else None
    optim = model.get("optim") if isinstance(model, dict) else None
    found = {}
    for key in ("g_lr", "d_lr"):
        if isinstance(optim, dict) and optim.get(key) is not None:
            try:
                found[key] = float(optim[key])
            except (TypeError, ValueError):
                raise UserError(f"{path}: model.optim.{key} is not a number: {optim[key]!r}") from None
    return found


def base_learning_rates(config: str | Path, extra: Sequence[str] = ()) -> tuple[float, float]:
    """``(g_lr, d_lr)`` of a finetune with ``--config config`` and ``extra``: the defaults, then the config's,
    then ``extra`` in order (its ``--config`` files and ``--model.optim.g_lr``/``d_lr`` values)."""
    lrs = {"g_lr": OptimConfig().g_lr, "d_lr": OptimConfig().d_lr}
    lrs.update(_yaml_lrs(config))
    items = iter(extra)
    for item in items:
        key, eq, value = item.partition("=")
        if not eq:
            value = next(items, "")
        if key == "--config":
            lrs.update(_yaml_lrs(value))
        elif key in ("--model.optim.g_lr", "--model.optim.d_lr"):
            try:
                lrs[key[len("--model.optim.") :]] = float(value)
            except ValueError:
                raise UserError(f"{key} {value!r} is not a number") from None
    return lrs["g_lr"], lrs["d_lr"]


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


_ECHO_LOCK = threading.Lock()


def run_env(threads: int | None = None) -> dict[str, str]:
    """Ours, unbuffered, with ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` (torch's CPU threads) = ``threads``."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if threads is not None:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


def execute(spec: RunSpec, echo: bool = True, tail_lines: int = 20, threads: int | None = None) -> RunResult:
    """Run ``spec`` in a subprocess, its stdout and stderr teed to ``run_dir/finetune.log`` (and to our
    stdout when ``echo``, each line prefixed with the run's name); on success write ``run.json``."""
    spec.run_dir.mkdir(parents=True, exist_ok=True)
    log_path = spec.run_dir / LOG_NAME
    before = {p.name for p in log_dirs(spec.run_dir)}
    env = run_env(threads)
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
                    with _ECHO_LOCK:
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
        "lr": spec.lr,
        "seed": spec.seed,
        "args": list(spec.args),
        "command": spec.command,
        "cwd": os.getcwd(),
        "status": "ok",
        "returncode": returncode,
        "wall_s": wall,
        "threads": threads,
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
    jobs: int = 1,
    threads: int | None = None,
) -> list[RunResult]:
    """Run every spec (finished ones skipped unless ``force``), ``jobs`` at a time, each with ``threads`` CPU
    threads; a failure does not stop the rest. Results in spec order."""

    def one(i: int, spec: RunSpec) -> RunResult:
        def tell(message: str) -> None:
            with _ECHO_LOCK:  # not in the middle of another run's echoed line
                say(f"[{i}/{len(specs)}] {spec.name}: {message}")

        record = None if force else finished_record(spec)
        log = spec.run_dir / LOG_NAME
        if record is not None:
            tell(f"finished earlier ({spec.run_dir / RUN_RECORD}), skipped")
            return RunResult(spec, "skipped", record.get("returncode", 0), record.get("wall_s"), log)
        tell(f"running, log in {log}")
        result = execute(spec, echo=echo, threads=threads)
        tell(
            f"done in {result.wall_s:.1f} s" if result.ok else f"FAILED with exit status {result.returncode}"
        )
        return result

    if jobs == 1:
        return [one(i, spec) for i, spec in enumerate(specs, 1)]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(one, i, spec) for i, spec in enumerate(specs, 1)]
        return [f.result() for f in futures]


def failure_report(result: RunResult) -> str:
    """Which run failed, its exit status, command and the last lines of its log."""
    tail = "\n".join("    " + line for line in result.log_tail)
    return (
        f"run {result.spec.name} failed with exit status {result.returncode} "
        f"(log: {result.log_path}):\n  $ {' '.join(result.spec.command)}\n  last lines of the log:\n{tail}"
    )
