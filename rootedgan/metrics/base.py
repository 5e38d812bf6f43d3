"""The skeleton of every metric callback: evaluate ``G_ema`` at the start, every ``every_kimg`` thousand
images and at the end, and write the values to the loggers at the step Lightning's own logging uses.

Subclasses implement :meth:`KimgMetricCallback.prepare` (load what an evaluation needs, at the start of
training, so a missing file fails then and not hours in) and :meth:`KimgMetricCallback.evaluate`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch

from rootedgan.runs import KimgSchedule, run_dir


class KimgMetricCallback(L.Callback):
    """Evaluate every ``every_kimg`` thousand real images (0: never in between), before the first step of a
    fresh run (``at_start``) and when training ends (``at_end``, unless that point was just evaluated)."""

    def __init__(self, every_kimg: float, at_start: bool = True, at_end: bool = True) -> None:
        super().__init__()
        if every_kimg < 0:
            raise ValueError(f"{type(self).__name__}: every_kimg must be >= 0, got {every_kimg}")
        self.every_kimg = every_kimg
        self.at_start = at_start
        self.at_end = at_end
        self._schedule = KimgSchedule(every_kimg)
        self._last_nimg: int | None = None
        self._out: Path | None = None  # the run folder (version_N), known from the start of training

    def prepare(self, trainer: L.Trainer, module: Any) -> None:
        """Load and check what an evaluation needs (every rank; random state is preserved)."""

    def evaluate(self, trainer: L.Trainer, module: Any) -> dict[str, float]:
        """Compute the metrics of ``module.G_ema`` now (every rank calls); ``{logged key: value}``."""
        raise NotImplementedError

    def _fork_rng(self, module: Any) -> Any:
        return torch.random.fork_rng(devices=[module.device] if module.device.type == "cuda" else [])

    def _evaluate_and_log(self, trainer: L.Trainer, module: Any, in_batch: bool = False) -> dict[str, float]:
        """Evaluate (the training's random stream untouched) and write the values to every logger now (rank
        0) at the step Lightning writes this batch's values under (``in_batch``: at a batch's end), so metric
        curves line up with the losses: ``LightningModule.log`` is not allowed outside the loop, and in it
        reaches the loggers only every ``log_every_n_steps`` steps."""
        with self._fork_rng(module):
            values = self.evaluate(trainer, module)
        self._last_nimg = int(module.cur_nimg)
        if trainer.is_global_zero and values:
            step = int(module.step_idx) - int(in_batch)  # the batches trained before this one
            for logger in trainer.loggers:
                logger.log_metrics(values, step=step)
        return values

    def on_train_start(self, trainer: L.Trainer, module: Any) -> None:
        self._out = run_dir(trainer)  # a collective under DDP: resolved on every rank
        nimg = int(module.cur_nimg)
        self._schedule.start(nimg / 1000)
        with self._fork_rng(module):
            self.prepare(trainer, module)
        if nimg > 0:
            self._last_nimg = nimg  # a resumed run: this point was evaluated (or passed) before
        if self.at_start and nimg == 0:
            self._evaluate_and_log(trainer, module)

    def on_train_batch_end(self, trainer: L.Trainer, module: Any, *args: Any) -> None:
        if self._schedule.due(float(module.cur_nimg) / 1000):
            values = self._evaluate_and_log(trainer, module, in_batch=True)
            for key, value in values.items():  # callback_metrics (ModelCheckpoint): same on every rank
                value64 = torch.tensor(value, dtype=torch.float64)
                module.log(key, value64, on_step=True, on_epoch=False, sync_dist=False, logger=False)

    def on_train_end(self, trainer: L.Trainer, module: Any) -> None:
        if self.at_end and self._last_nimg != int(module.cur_nimg):
            self._evaluate_and_log(trainer, module)
