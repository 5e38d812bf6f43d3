"""Progress of a finetune run that a person can follow, in a terminal and in a log file.

:class:`TrainingProgress` (the ``progress.*`` options of ``rootedgan finetune``):

* in a terminal, one bar in thousands of images: ``kimg done/total``, img/s, sec/kimg, ETA, the latest
  G and D losses and the latest FID;
* every ``tick_kimg`` thousand images, one line like NVIDIA's training loop prints::

      tick 12    kimg 48.0     time 1h 02m 10s  sec/tick 31.0   sec/kimg 7.52   img/s 133.0
          G 1.234  D 0.987  fid50k_full 12.30  gpumem 9.7

  printed to standard output when it is not a terminal (``nohup``, SLURM, ``| tee``) and always
  appended to ``log.txt`` in the run directory, so a run can be followed with ``tail -f``.

Everything is read from the module's host-side counters; the losses are read back from the GPU once a
second at most. Only rank 0 prints.
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Literal, TextIO

import lightning as L
import torch

BAR_FORMAT = "{desc} {percentage:3.0f}%|{bar}| {n:.2f}/{total:g} kimg [{elapsed}<{remaining}{postfix}]"
#: Keys of the step's logs shown as ``G`` and ``D``.
LOSS_KEYS = {"G": "Loss/G/loss", "D": "Loss/D/loss"}


def format_duration(seconds: float) -> str:
    """``1h 02m 10s`` / ``3m 05s`` / ``42s`` (NVIDIA's ``format_time`` style)."""
    s = int(round(max(seconds, 0.0)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {(s // 60) % 60:02d}m {s % 60:02d}s"
    return f"{s // 86400}d {(s // 3600) % 24:02d}h {(s // 60) % 60:02d}m"


def _nice(kimg: float) -> float:
    """``kimg`` rounded down to 1, 2, 4 or 5 times a power of ten (an interval a person reads easily)."""
    if kimg <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(kimg))
    return max(m for m in (1, 2, 4, 5) if m * power <= kimg * (1 + 1e-9)) * power


def _sized_terminal(stream: TextIO) -> bool:
    """A terminal that reports a width: a bar needs one (a pseudo-terminal without a size shows nothing)."""
    try:
        return stream.isatty() and os.get_terminal_size(stream.fileno()).columns > 0
    except (OSError, ValueError, AttributeError):
        return False


def latest_metrics(trainer: L.Trainer) -> dict[str, float]:
    """The latest value of every metric recorded by the run's metric callbacks (``.history`` records with
    ``results``, as :class:`rootedgan.metrics.FIDCallback` keeps them)."""
    out: dict[str, float] = {}
    for cb in trainer.callbacks:
        for record in getattr(cb, "history", None) or []:
            results = record.get("results") if isinstance(record, dict) else None
            if isinstance(results, dict):
                out.update({k: float(v) for k, v in results.items() if isinstance(v, (int, float))})
    return out


class TrainingProgress(L.Callback):
    """A progress bar in kimg and NVIDIA-style tick lines (module docstring)."""

    def __init__(
        self,
        tick_kimg: float | None = None,
        bar: Literal["auto", "on", "off"] = "auto",
        log_file: bool = True,
    ) -> None:
        """
        Args:
            tick_kimg: thousands of images between tick lines; null: NVIDIA's 4, or a tenth of a shorter
                run (at least 10 tick lines).
            bar: ``auto`` shows the bar when standard error is a terminal (tick lines then go to log.txt
                only); ``on`` / ``off`` force it.
            log_file: append the tick lines to ``log.txt`` in the run directory.
        """
        super().__init__()
        if tick_kimg is not None and not tick_kimg > 0:
            raise ValueError(f"progress.tick_kimg must be > 0, got {tick_kimg}")
        if bar not in ("auto", "on", "off"):
            raise ValueError(f"progress.bar must be auto, on or off, got {bar!r}")
        self.tick_kimg, self.bar, self.log_file = tick_kimg, bar, log_file
        self._bar: Any = None
        self._log: TextIO | None = None
        # the run's state, set by on_train_start (rank 0)
        self._start_time = self._tick_time = self._next_tick = 0.0
        self._tick = self._tick_nimg = self._shown_nimg = 0
        self._rate: tuple[float, int] = (0.0, 0)  # (time, nimg) at the last refresh of the bar's rates
        self._total_kimg, self._every = 0.0, 4.0
        self._run: Path | None = None

    # -- helpers -----------------------------------------------------------------------------------

    @staticmethod
    def _values(trainer: L.Trainer, module: Any) -> dict[str, str]:
        """The latest G and D losses (one host read per refresh, not per step) and metrics, formatted."""
        logs = module.last_step_logs
        losses = {short: f"{float(logs[key]):.3f}" for short, key in LOSS_KEYS.items() if key in logs}
        return {**losses, **{k: f"{v:.4g}" for k, v in latest_metrics(trainer).items()}}

    def _kimg(self, nimg: int) -> str:
        """kimg with the precision the run needs (tiny runs: to the image)."""
        return f"{nimg / 1000:.1f}" if self._total_kimg >= 10 else f"{nimg / 1000:.3f}"

    def _write(self, line: str) -> None:
        if self._log is not None:
            self._log.write(line + "\n")
            self._log.flush()
        if self._bar is None:  # else the bar shows the same, and the line is in log.txt
            print(line, flush=True)

    def tick_line(self, trainer: L.Trainer, module: Any, now: float, nimg: int) -> str:
        """NVIDIA's tick line for the images since the previous tick."""
        dt, dn = now - self._tick_time, nimg - self._tick_nimg
        fields = [
            f"tick {self._tick:<5d}",
            f"kimg {self._kimg(nimg):<8s}",
            f"time {format_duration(now - self._start_time):<12s}",
            f"sec/tick {dt:<7.1f}",
        ]
        if dn > 0:
            fields += [f"sec/kimg {dt / dn * 1000:<7.2f}", f"img/s {dn / max(dt, 1e-9):<8.1f}"]
        fields += [f"{k} {v}" for k, v in self._values(trainer, module).items()]
        if torch.cuda.is_available() and module.device.type == "cuda":
            fields.append(f"gpumem {torch.cuda.max_memory_allocated(module.device) / 2**30:.1f}")
        return "  ".join(f.rstrip() for f in fields)

    def _next_tick_after(self, nimg: int) -> float:
        """The image count of the next multiple of the tick interval after ``nimg``."""
        every = self._every * 1000
        return (math.floor(nimg / every + 1e-9) + 1) * every - 1e-6

    # -- hooks -------------------------------------------------------------------------------------

    def on_train_start(self, trainer: L.Trainer, module: Any) -> None:
        run = Path(trainer.log_dir or trainer.default_root_dir)  # a collective under DDP: every rank asks
        if not trainer.is_global_zero:
            return
        now, nimg = time.monotonic(), module._counters()[1]
        self._start_time = self._tick_time = now
        self._tick_nimg = self._shown_nimg = nimg
        self._rate = (now, nimg)
        total = self._total_kimg = float(module.hparams.total_kimg)
        self._every = self.tick_kimg or _nice(min(4.0, total / 10))
        self._tick = int(nimg / 1000 // self._every)  # tick lines are numbered on from a resumed run's
        self._next_tick = self._next_tick_after(nimg)
        self._run = run
        if self.log_file:
            run.mkdir(parents=True, exist_ok=True)
            self._log = open(run / "log.txt", "a")
        if self.bar == "on" or (self.bar == "auto" and _sized_terminal(sys.stderr)):
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=total, initial=nimg / 1000, dynamic_ncols=True, bar_format=BAR_FORMAT, desc="finetune"
            )
        per_device = getattr(getattr(trainer, "datamodule", None), "batch_size", None)
        if per_device:  # NVIDIA's --batch is global; data.batch_size is per device
            n = trainer.world_size
            self._write(f"batch: {per_device} per device x {n} device(s) = {per_device * n} images a step")
        resumed = f" (resumed from {trainer.ckpt_path})" if trainer.ckpt_path else ""
        self._write(f"run folder: {run}{resumed}")
        verb = "resuming at" if nimg else "starting at"
        self._write(
            f"training {verb} kimg {self._kimg(nimg)} of {total:g}; tick lines every {self._every:g} kimg"
        )

    def on_train_batch_end(self, trainer: L.Trainer, module: Any, *args: Any) -> None:
        if not trainer.is_global_zero:
            return
        now, nimg = time.monotonic(), module._counters()[1]
        if self._bar is not None:
            self._bar.update((nimg - self._shown_nimg) / 1000)
            self._shown_nimg = nimg
            t0, n0 = self._rate
            if now - t0 >= 1.0:
                postfix = {}
                if nimg > n0:
                    rate = (nimg - n0) / max(now - t0, 1e-9)
                    postfix = {"img/s": f"{rate:.1f}", "sec/kimg": f"{1000 / rate:.2f}"}
                self._bar.set_postfix({**postfix, **self._values(trainer, module)}, refresh=True)
                self._rate = (now, nimg)
        if nimg >= self._next_tick:
            self._tick += 1
            self._next_tick = self._next_tick_after(nimg)
            self._write(self.tick_line(trainer, module, now, nimg))
            self._tick_time, self._tick_nimg = now, nimg

    def on_train_end(self, trainer: L.Trainer, module: Any) -> None:
        if not trainer.is_global_zero:
            return
        now, nimg = time.monotonic(), module._counters()[1]
        if nimg > self._tick_nimg:
            self._tick += 1
            self._write(self.tick_line(trainer, module, now, nimg))
        took = format_duration(now - self._start_time)
        self._write(f"done: kimg {self._kimg(nimg)} in {took}; outputs in {self._run}")
        self._close()

    def on_exception(self, trainer: L.Trainer, module: Any, exception: BaseException) -> None:
        if trainer.is_global_zero and self._log is not None:
            self._write(f"stopped by {type(exception).__name__}: {exception}")
        self._close()

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._log is not None:
            self._log.close()
            self._log = None
