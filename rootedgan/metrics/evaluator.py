"""FID / KID of generators and image folders against a reference set: metric names, ranks, caching.

Metric names follow NVIDIA's: ``fid50k_full`` is the FID of 50,000 generated images against the full
reference set, ``kid50k_full`` its KID; other counts are written the same way (``fid10k_full``,
``fid1k_full``, ``fid2500_full``). :class:`Evaluator` works in one process or under
``torch.distributed`` (every rank must call the same methods in the same order): each rank extracts
the features of its share of the images, and the float64 statistics are summed over ranks.
Reference statistics are cached on disk (:mod:`rootedgan.metrics.cache`); under several ranks rank 0
decides whether the cache has them and shares them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist

from rootedgan.errors import UserError
from rootedgan.metrics import cache
from rootedgan.metrics.features import FeatureExtractor, ImageSource
from rootedgan.metrics.inception import FEATURE_DIM, load_inception
from rootedgan.metrics.stats import FeatureStats, GaussianStats, frechet_distance, kernel_inception_distance

__all__ = ["Evaluator", "MetricSpec", "dist_rank_world", "format_time", "metric_name", "parse_metric"]

_METRIC_RX = re.compile(r"^(fid|kid)(\d+)(k?)_full$")


@dataclass(frozen=True)
class MetricSpec:
    """One metric: ``kind`` (``fid`` or ``kid``) on ``num_gen`` images, reported as ``name``."""

    name: str
    kind: Literal["fid", "kid"]
    num_gen: int


def metric_name(kind: str, num_gen: int) -> str:
    """``('fid', 50000)`` -> ``'fid50k_full'``; counts that are not whole thousands are written out."""
    return f"{kind}{num_gen // 1000}k_full" if num_gen % 1000 == 0 else f"{kind}{num_gen}_full"


def parse_metric(name: str, num_gen: int | None = None) -> MetricSpec:
    """``'fid50k_full'`` -> ``MetricSpec('fid50k_full', 'fid', 50000)``; ``num_gen`` overrides the count
    (and the name follows it)."""
    match = _METRIC_RX.match(name.strip().lower())
    if not match:
        raise UserError(
            f"unknown metric {name!r}: use fidNk_full or kidNk_full "
            "(e.g. fid50k_full, kid50k_full, fid10k_full)"
        )
    kind, number, k = match.groups()
    count = int(number) * (1000 if k else 1)
    if num_gen is not None:
        count = int(num_gen)
    if count < 2:
        raise UserError(f"{name}: needs at least 2 generated images, got {count}")
    return MetricSpec(metric_name(kind, count), kind, count)  # type: ignore[arg-type]


def format_time(seconds: float) -> str:
    """``75.2`` -> ``'1m 15s'`` (NVIDIA's style for ``total_time_str``)."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s // 60 % 60:02d}m {s % 60:02d}s"


def dist_rank_world() -> tuple[int, int]:
    """``(rank, world_size)`` of ``torch.distributed``; ``(0, 1)`` when it is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (itself in a single process)."""
    _, world = dist_rank_world()
    if world == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class Evaluator:
    """Computes FID / KID with one loaded Inception network (see module docstring).

    Args:
        inception: path of NVIDIA's Inception torchscript (None: ``$ROOTEDGAN_INCEPTION``, the caches).
        device: where Inception (and, for ``mode="fast"``, the resize) runs.
        mode: ``"clean"`` (exact clean-fid protocol) or ``"fast"`` (resize on ``device`` too).
        dtype: Inception's dtype in fast mode (``torch.bfloat16`` for speed); clean mode is float32.
        batch_size: images per Inception batch.
        num_workers: CPU workers (DataLoader processes / resize threads).
        progress: progress bars (rank 0).
        download: fetch the Inception file when it is not found.
        use_cache: read and write reference statistics in the on-disk cache.
        cache_dir: cache folder (default ``$ROOTEDGAN_CACHE/fid-stats``).
    """

    def __init__(
        self,
        inception: str | os.PathLike[str] | None = None,
        device: torch.device | str = "cpu",
        mode: Literal["clean", "fast"] = "clean",
        dtype: torch.dtype = torch.float32,
        batch_size: int = 64,
        num_workers: int = 4,
        progress: bool = True,
        download: bool = True,
        use_cache: bool = True,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        if mode == "clean" and dtype != torch.float32:
            raise UserError(
                "the clean (exact) FID protocol runs Inception in float32; use mode='fast' for bf16"
            )
        self.inception_path = inception
        self.device = torch.device(device)
        self.mode = mode
        self.dtype = dtype
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.progress = progress
        self.download = download
        self.use_cache = use_cache
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._extractor: FeatureExtractor | None = None

    @property
    def extractor(self) -> FeatureExtractor:
        """The feature extractor (loads the Inception network on first use)."""
        if self._extractor is None:
            net = load_inception(self.inception_path, self.device, download=self.download, dtype=self.dtype)
            self._extractor = FeatureExtractor(
                net, self.mode, self.batch_size, self.num_workers, self.progress
            )
        return self._extractor

    def protocol(self) -> dict[str, Any]:
        """What determines the features besides the images: mode, dtype and the Inception file."""
        return {
            "protocol": "clean-fid clean" if self.mode == "clean" else "rootedgan fast",
            "mode": self.mode,
            "dtype": str(self.dtype).replace("torch.", ""),
            "inception_sha256": self.extractor.inception.digest,
        }

    def _new_stats(self, keep_features: bool) -> FeatureStats:
        stats = FeatureStats(FEATURE_DIM, keep_features=keep_features).to(self.device)
        # every rank contributes (a rank may get no images), so the ranks' states always match
        stats.update(torch.zeros([0, FEATURE_DIM], device=self.device))
        return stats

    # -- statistics ----------------------------------------------------------------------------

    def images_stats(
        self,
        source: ImageSource,
        keep_features: bool = False,
        max_images: int | None = None,
        desc: str = "features",
    ) -> GaussianStats:
        """Statistics of (the first ``max_images`` of) an image set, computed by all ranks together."""
        rank, world = dist_rank_world()
        stats = self._new_stats(keep_features)
        self.extractor.images_stats(source, stats, rank=rank, world=world, desc=desc, max_images=max_images)
        return stats.compute()

    def reference_stats(self, source: ImageSource, keep_features: bool = False) -> GaussianStats:
        """Statistics of a reference set, from the on-disk cache when there (then written to it)."""
        rank, _ = dist_rank_world()
        key = meta = None
        cached = None
        if self.use_cache and rank == 0:
            key, meta = cache.cache_key(source.content_key(), self.protocol())
            cached = cache.load_stats(key, features=keep_features, folder=self.cache_dir)
        cached = _broadcast(cached)
        if cached is not None:
            return cached
        stats = self.images_stats(source, keep_features=keep_features, desc="reference features")
        if self.use_cache and rank == 0:
            try:
                cache.save_stats(key, stats, {**meta, "source": source.describe()}, folder=self.cache_dir)
            except OSError as err:
                import warnings

                warnings.warn(f"could not cache the reference statistics: {err}", stacklevel=2)
        return stats

    def generator_stats(
        self,
        G: torch.nn.Module,
        num_gen: int,
        keep_features: bool = False,
        seed: int = 0,
        labels: np.ndarray | None = None,
        truncation_psi: float = 1.0,
        noise_mode: str = "random",
        latents: torch.Tensor | None = None,
    ) -> GaussianStats:
        """Statistics of ``num_gen`` images of ``G`` (each rank generates its share; see features.py)."""
        rank, world = dist_rank_world()
        stats = self._new_stats(keep_features)
        self.extractor.generator_stats(
            G,
            num_gen,
            stats,
            seed=seed,
            rank=rank,
            world=world,
            labels=labels,
            truncation_psi=truncation_psi,
            noise_mode=noise_mode,
            latents=latents,
        )
        return stats.compute()

    # -- distances -----------------------------------------------------------------------------

    def fid(self, a: GaussianStats, b: GaussianStats) -> float:
        """FID between two statistics (computed on rank 0, the same value returned on every rank)."""
        rank, _ = dist_rank_world()
        value = frechet_distance(a.mu, a.sigma, b.mu, b.sigma, device=self.device) if rank == 0 else None
        return float(_broadcast(value))

    def kid(
        self,
        reference: GaussianStats,
        other: GaussianStats,
        seed: int = 0,
        num_subsets: int = 100,
        max_subset_size: int = 1000,
    ) -> float:
        """KID with clean-fid's subset procedure, ``kernel_distance(reference, other)`` (rank 0, shared)."""
        if reference.features is None or other.features is None:
            raise ValueError("KID needs the features of both sets (keep_features=True)")
        rank, _ = dist_rank_world()
        value = None
        if rank == 0:
            value = kernel_inception_distance(
                reference.features,
                other.features,
                num_subsets,
                max_subset_size,
                seed=seed,
                device=self.device,
            )
        return float(_broadcast(value))

    def metrics(
        self, reference: GaussianStats, other: GaussianStats, specs: list[MetricSpec], kid_seed: int = 0
    ) -> dict[str, float]:
        """``{spec.name: value}`` for FID/KID specs evaluated on the same two sets."""
        return {
            s.name: self.fid(reference, other)
            if s.kind == "fid"
            else self.kid(reference, other, seed=kid_seed)
            for s in specs
        }

    def evaluate_generator(
        self,
        G: torch.nn.Module,
        reference: ImageSource | GaussianStats,
        specs: list[MetricSpec],
        seed: int = 0,
        labels: np.ndarray | None = None,
        truncation_psi: float = 1.0,
        noise_mode: str = "random",
    ) -> dict[str, float]:
        """All ``specs`` for a generator; one generated set per distinct count (KID keeps its features)."""
        need_feats = any(s.kind == "kid" for s in specs)
        ref = (
            reference if isinstance(reference, GaussianStats) else self.reference_stats(reference, need_feats)
        )
        if need_feats and ref.features is None:
            raise UserError("KID needs reference features; these reference statistics hold only mu/sigma")
        results: dict[str, float] = {}
        for count in dict.fromkeys(s.num_gen for s in specs):
            group = [s for s in specs if s.num_gen == count]
            gen = self.generator_stats(
                G,
                count,
                keep_features=any(s.kind == "kid" for s in group),
                seed=seed,
                labels=labels,
                truncation_psi=truncation_psi,
                noise_mode=noise_mode,
            )
            results.update(self.metrics(ref, gen, group, kid_seed=seed))
        return results
