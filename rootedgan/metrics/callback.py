"""``FIDCallback``: FID (and KID) of G_ema every ``every_kimg`` thousand images while finetuning.

In YAML under ``trainer.callbacks`` (README, "FID / KID"). Each evaluation logs ``metrics/<name>`` (the name
follows ``num_gen`` and the protocol: ``clean_fid10k_full`` under ``mode: clean``) and appends a record to
``metric-<name>.jsonl`` in the run folder. Evaluations inside the loop are also ``LightningModule.log``-ged
(float64, the same on every rank) for ``ModelCheckpoint(monitor=...)``; Lightning allows no ``log`` before
training (``at_start``) and at its end (``at_end``). Under DDP each rank generates ``num_gen / world`` images.
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
from rootedgan.metrics.evaluator import Evaluator, metric_name
from rootedgan.metrics.features import DEFAULT_MODE, DatasetImages, check_mode
from rootedgan.metrics.stats import GaussianStats
from rootedgan.runs import append_metric_record, snapshot_path


def reference_dataset(
    trainer: L.Trainer, module: Any, data_path: str | None = None, mirror: bool | None = None, who: str = ""
) -> Any:
    """The reference images of a metric callback: ``data_path`` (at the module's resolution and channels),
    else the datamodule's training set; ``mirror`` (None: the data set's own xflip) adds x-flipped copies."""
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
        dataset = getattr(trainer.train_dataloader, "dataset", None)
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
        """``num_gen`` generated images per evaluation (50000: ``fid50k_full``); ``kid``: also KID (keeps the
        features); ``data_path``: reference images (default: the datamodule's data set), with x-flipped
        copies per ``mirror`` (default: the data set's xflip); ``seed``: of the latents (the same images at
        every evaluation) and KID subsets. ``inception``, ``mode``, ``bf16`` (``fast`` only), ``batch_size``,
        ``num_workers``, ``progress``: :class:`~rootedgan.metrics.evaluator.Evaluator`'s."""
        super().__init__(every_kimg, at_start=at_start, at_end=at_end)
        if num_gen < 2:
            raise ValueError(f"FIDCallback: num_gen must be >= 2, got {num_gen}")
        mode = check_mode(mode)
        if bf16 and mode != "fast":
            raise ValueError(f"FIDCallback: bf16 needs mode 'fast' (the {mode} protocol runs in float32)")
        self.num_gen, self.kid, self.data_path, self.mirror = num_gen, kid, data_path, mirror
        self.mode, self.seed = mode, seed
        self._generate = dict(truncation_psi=truncation_psi, noise_mode=noise_mode)  # G's settings
        self.fid_name, self.kid_name = metric_name("fid", num_gen, mode), metric_name("kid", num_gen, mode)
        self.history: list[dict[str, Any]] = []
        dtype = torch.bfloat16 if bf16 else torch.float32
        # the Evaluator is made in prepare, on the module's device
        self._evaluator_kwargs = dict(
            inception=inception,
            mode=mode,
            dtype=dtype,
            batch_size=batch_size,
            num_workers=num_workers,
            progress=progress,
            download=download_inception,
        )
        self._evaluator: Evaluator | None = None
        self._reference: GaussianStats | None = None
        self._labels: Any = None
        self._reference_path: str | None = None

    @property
    def monitor(self) -> str:
        """The logged key, for ``ModelCheckpoint(monitor=...)``: ``metrics/fid50k_full`` etc. (with the
        protocol's prefix: ``metrics/clean_fid50k_full`` under ``mode: clean``)."""
        return f"metrics/{self.fid_name}"

    def prepare(self, trainer: L.Trainer, module: Any) -> None:
        """The Inception file and the reference statistics (on every rank)."""
        if self._evaluator is None:
            self._evaluator = Evaluator(device=module.device, **self._evaluator_kwargs)
        if self._reference is None:
            dataset = reference_dataset(trainer, module, self.data_path, self.mirror, "FIDCallback")
            self._reference = self._evaluator.reference_stats(DatasetImages(dataset), keep_features=self.kid)
            self._labels = dataset.labels if getattr(dataset, "has_labels", False) else None
            self._reference_path = str(dataset.path)

    def evaluate(self, trainer: L.Trainer, module: Any) -> dict[str, float]:
        """``{"metrics/<name>": value}`` of ``module.G_ema`` now (every rank calls), each value also appended
        to ``metric-<name>.jsonl``."""
        start = time.time()
        self.prepare(trainer, module)
        assert self._evaluator is not None and self._reference is not None
        ev, generate = self._evaluator, dict(seed=self.seed, labels=self._labels, **self._generate)
        gen = ev.generator_stats(module.G_ema, self.num_gen, keep_features=self.kid, **generate)
        results = {self.fid_name: ev.fid(self._reference, gen)}
        if self.kid:
            results[self.kid_name] = ev.kid(self._reference, gen, seed=self.seed)
        seconds, out = time.time() - start, self._out or Path(trainer.default_root_dir)
        snapshot = snapshot_path(out, int(module.cur_nimg))
        gpus = rank_world()[1] if module.device.type == "cuda" else 0  # NVIDIA's field: GPUs, not ranks
        info = dict(kimg=float(module.cur_nimg) / 1000, num_gen=self.num_gen, reference=self._reference_path)
        for name, value in results.items():
            record = ev.metric_record(name, value, seconds, snapshot and snapshot.name, gpus, **info)
            self.history.append(record)
            if trainer.is_global_zero:
                append_metric_record(out, name, record)
        return {f"metrics/{name}": value for name, value in results.items()}
