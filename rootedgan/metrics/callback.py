"""``FIDCallback``: FID of G_ema every ``every_kimg`` thousand images while finetuning.

Add it in YAML under ``trainer.callbacks``::

    trainer:
      callbacks:
        - class_path: rootedgan.metrics.FIDCallback
          init_args: {every_kimg: 50, num_gen: 50000}
        - class_path: lightning.pytorch.callbacks.ModelCheckpoint
          init_args: {monitor: metrics/fid50k_full, mode: min, save_top_k: 1, every_n_train_steps: 1,
                      filename: best-fid}

Each evaluation writes ``metrics/fid50k_full`` (the name follows ``num_gen``: ``fid10k_full``,
``fid1k_full``, ...; ``metrics/kid50k_full`` too with ``kid=True``) to the loggers and appends
NVIDIA-style lines to ``metric-fid50k_full.jsonl`` in the run directory. The names are NVIDIA's
because the default protocol is NVIDIA's (``mode: legacy_tensorflow``, comparable with published
StyleGAN FIDs); ``mode: clean`` (clean-fid's protocol) logs ``metrics/clean_fid50k_full`` and ``mode:
fast`` ``metrics/approx_clean_fid50k_full`` (see :mod:`rootedgan.metrics.evaluator`). Every jsonl record
also names the protocol and the Inception file (path and sha256), which is printed when the run
starts. Evaluations inside the loop are also ``LightningModule.log``-ged (float64, the same value on
every rank, not re-sent to the loggers), so ``ModelCheckpoint(monitor=...)`` keeps the best snapshot;
the evaluations before training (``at_start``) and at the end (``at_end``) are outside the loop, where
Lightning allows no ``log``.

The reference set is the datamodule's data set (its resolution, channels and xflip; ``mirror``
overrides xflip) or ``data_path``; its statistics are computed once and cached on disk
(:mod:`rootedgan.metrics.cache`). Under DDP every rank generates ``num_gen / world`` images and the
statistics are summed over ranks; training's random state is left untouched.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch

from rootedgan.data import ImageDataset
from rootedgan.distributed import rank_world
from rootedgan.metrics.base import KimgMetricCallback
from rootedgan.metrics.evaluator import (
    DEFAULT_MODE,
    Evaluator,
    check_mode,
    metric_name,
)
from rootedgan.metrics.features import DatasetImages
from rootedgan.metrics.stats import GaussianStats
from rootedgan.runs import append_metric_record, snapshot_path

__all__ = ["FIDCallback", "reference_dataset"]


def reference_dataset(
    trainer: L.Trainer, module: Any, data_path: str | None = None, mirror: bool | None = None, who: str = ""
) -> Any:
    """The reference images of a metric callback: ``data_path`` (at the module's resolution and
    channels), else the datamodule's training set; ``mirror`` (None: the data set's own xflip) sets
    whether x-flipped copies are included. The training set itself is never modified (a copy is)."""
    if data_path is not None:
        return ImageDataset(
            data_path,
            resolution=module.img_resolution,
            channels=module.img_channels,
            xflip=bool(mirror),
            use_labels=module.c_dim > 0,
        )
    dataset = getattr(getattr(trainer, "datamodule", None), "dataset", None)
    if dataset is None:
        loader = trainer.train_dataloader
        dataset = getattr(loader, "dataset", None)
    if dataset is None or not hasattr(dataset, "content_key"):
        raise ValueError(
            f"{who} needs the reference images: use rootedgan's ImageDataModule or set data_path"
        )
    if mirror is not None and bool(mirror) != bool(dataset.xflip):
        dataset = dataset.with_xflip(bool(mirror))  # a copy: the training set is never modified
    return dataset


class FIDCallback(KimgMetricCallback):
    """FID (and optionally KID) of ``G_ema`` every ``every_kimg`` thousand images (module docstring)."""

    def __init__(
        self,
        every_kimg: float = 50.0,
        num_gen: int = 50000,
        kid: bool = False,
        at_start: bool = True,
        at_end: bool = True,
        data_path: str | None = None,
        mirror: bool | None = None,
        inception: str | None = None,
        download_inception: bool = True,
        mode: Literal["legacy_tensorflow", "clean", "fast"] = DEFAULT_MODE,
        bf16: bool = False,
        batch_size: int = 64,
        num_workers: int | None = None,
        seed: int = 0,
        truncation_psi: float = 1.0,
        noise_mode: Literal["random", "const", "none"] = "random",
        progress: bool = False,
    ) -> None:
        """
        Args:
            every_kimg: interval in thousands of real images (0: only at the start and the end).
            num_gen: generated images per evaluation (50000 gives ``fid50k_full``).
            kid: also compute KID on the same images (keeps the features in memory).
            at_start: evaluate the starting network before the first step (fresh runs only).
            at_end: evaluate when training ends (unless that point was just evaluated).
            data_path: reference images (folder or zip); default: the datamodule's data set.
            mirror: reference with x-flipped copies; default: the data set's own xflip setting.
            inception: NVIDIA's Inception torchscript file (default: ``$ROOTEDGAN_INCEPTION``, the caches).
            download_inception: download the Inception file when it is not found locally.
            mode: the FID protocol: ``legacy_tensorflow`` (NVIDIA's, the default; names ``fid50k_full``),
                ``clean`` (clean-fid's; ``clean_fid50k_full``) or ``fast`` (an approximation of ``clean``
                on the GPU; ``approx_clean_fid50k_full``).
            bf16: run Inception in bf16 (``fast`` mode only).
            batch_size: images per generator / Inception batch.
            num_workers: CPU workers for decoding and resizing (None: ``min(4, usable cores)``).
            seed: seed of the generated latents (the same images at every evaluation) and KID subsets.
            truncation_psi: truncation of the generated images (1: none, as for reported FIDs).
            noise_mode: G's noise inputs (NVIDIA's metrics use ``random``, seeded here).
            progress: show progress bars (rank 0).
        """
        super().__init__(every_kimg, at_start=at_start, at_end=at_end)
        if num_gen < 2:
            raise ValueError(f"FIDCallback: num_gen must be >= 2, got {num_gen}")
        mode = check_mode(mode)
        if bf16 and mode != "fast":
            raise ValueError(f"FIDCallback: bf16 needs mode 'fast' (the {mode} protocol runs in float32)")
        self.num_gen = num_gen
        self.kid = kid
        self.data_path = data_path
        self.mirror = mirror
        self.inception = inception
        self.download_inception = download_inception
        self.mode = mode
        self.bf16 = bf16
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.truncation_psi = truncation_psi
        self.noise_mode = noise_mode
        self.progress = progress
        self.fid_name = metric_name("fid", num_gen, mode)
        self.kid_name = metric_name("kid", num_gen, mode)
        self.history: list[dict[str, Any]] = []
        self._evaluator: Evaluator | None = None
        self._reference: GaussianStats | None = None
        self._labels: Any = None
        self._reference_path: str | None = None

    @property
    def monitor(self) -> str:
        """The logged key, for ``ModelCheckpoint(monitor=...)``: ``metrics/fid50k_full`` etc. (with the
        protocol's prefix: ``metrics/clean_fid50k_full`` under ``mode: clean``)."""
        return f"metrics/{self.fid_name}"

    # -- set-up ------------------------------------------------------------------------------------

    def _dataset(self, trainer: L.Trainer, module: Any) -> Any:
        return reference_dataset(trainer, module, self.data_path, self.mirror, "FIDCallback")

    def prepare(self, trainer: L.Trainer, module: Any) -> None:
        """The Inception file and the reference statistics (on every rank)."""
        if self._evaluator is None:
            self._evaluator = Evaluator(
                inception=self.inception,
                device=module.device,
                mode=self.mode,
                dtype=torch.bfloat16 if self.bf16 else torch.float32,
                batch_size=self.batch_size,
                num_workers=self.num_workers,
                progress=self.progress,
                download=self.download_inception,
            )
        if self._reference is None:
            dataset = self._dataset(trainer, module)
            self._reference = self._evaluator.reference_stats(DatasetImages(dataset), keep_features=self.kid)
            self._labels = dataset.labels if getattr(dataset, "has_labels", False) else None
            self._reference_path = str(dataset.path)

    # -- evaluation --------------------------------------------------------------------------------

    def evaluate(self, trainer: L.Trainer, module: Any) -> dict[str, float]:
        """Compute the metrics of ``module.G_ema`` now (every rank must call); ``{"metrics/<name>": value}``,
        each also appended to ``metric-<name>.jsonl`` in the run folder."""
        start = time.time()
        self.prepare(trainer, module)
        assert self._evaluator is not None and self._reference is not None
        gen = self._evaluator.generator_stats(
            module.G_ema,
            self.num_gen,
            keep_features=self.kid,
            seed=self.seed,
            labels=self._labels,
            truncation_psi=self.truncation_psi,
            noise_mode=self.noise_mode,
        )
        results = {self.fid_name: self._evaluator.fid(self._reference, gen)}
        if self.kid:
            results[self.kid_name] = self._evaluator.kid(self._reference, gen, seed=self.seed)
        self._record(trainer, module, results, time.time() - start)
        return {f"metrics/{name}": value for name, value in results.items()}

    def _record(self, trainer: L.Trainer, module: Any, results: dict[str, float], seconds: float) -> None:
        _, world = rank_world()
        assert self._evaluator is not None
        kimg = float(module.cur_nimg) / 1000
        out = self._out or Path(trainer.default_root_dir)
        snapshot = snapshot_path(out, int(module.cur_nimg))
        for name, value in results.items():
            record = self._evaluator.metric_record(
                name,
                value,
                seconds,
                snapshot.name if snapshot is not None else None,
                world,
                kimg=kimg,
                num_gen=self.num_gen,
                reference=self._reference_path,
            )
            self.history.append(record)
            if trainer.is_global_zero:
                append_metric_record(out, name, record)
