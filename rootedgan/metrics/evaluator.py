"""FID / KID of generators and image folders against a reference set: protocols, metric names, ranks, caching.

Protocols (``mode``), all through clean-fid's own definitions, all with NVIDIA's Inception file:

=====================  ==========================================  ========================================
``mode``               what happens to an image                    metric names
=====================  ==========================================  ========================================
``legacy_tensorflow``  none outside the network: the Inception     NVIDIA's: ``fid50k_full``,
(default)              file resizes it to 299x299 inside, as the   ``kid50k_full``
                       TensorFlow FID did (bilinear, aliased)
``clean``              clean-fid's PIL bicubic (antialiased)       ``clean_fid50k_full``,
                       resize to 299x299 on the CPU                ``clean_kid50k_full``
``fast``               ours: ``clean``'s filter in torch on the    ``approx_clean_fid50k_full``,
                       device (optionally bf16); not exact         ``approx_clean_kid50k_full``
=====================  ==========================================  ========================================

**Why ``legacy_tensorflow`` is the default.** rootedgan finetunes StyleGAN2 networks, and the FIDs its
users compare against (the StyleGAN2 / StyleGAN2-ADA papers, MetFaces, FFHQ, AFHQ, every paper that
reports ``fid50k_full``) were all computed with NVIDIA's code, i.e. with this protocol. A number
computed otherwise under the same name cannot be put next to them: the resize alone changes FID
(clean-fid's paper and leaderboard list different values for the same networks under the two
protocols). So the default reproduces NVIDIA's numbers under NVIDIA's names,
and it is also the cheapest (no CPU resize: everything runs on the GPU). clean-fid's ``clean``
protocol resizes better (antialiased; its authors recommend it for new comparisons) and is one
``mode`` away, under names that say so; its values are comparable only with other ``clean`` values.
``fast`` approximates ``clean`` to about 1e-7 relative (float32) and is named as an approximation.

The protocol is part of every metric name, of every ``metric-*.jsonl`` record (``protocol``), of the
logged key (``metrics/<name>``) and of the key and the metadata of cached statistics, together with the
Inception file's sha256: statistics from another protocol or another Inception file are refused
(:meth:`Evaluator.load_reference_file`).

Counts follow NVIDIA's names: ``fid50k_full`` is the FID of 50,000 generated images against the full
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
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist

from rootedgan.distributed import rank_world
from rootedgan.errors import UserError
from rootedgan.metrics import cache
from rootedgan.metrics.features import DEFAULT_MODE, MODES, FeatureExtractor, ImageSource, Mode
from rootedgan.metrics.inception import FEATURE_DIM, load_inception
from rootedgan.metrics.stats import FeatureStats, GaussianStats, frechet_distance, kernel_inception_distance

__all__ = [
    "DEFAULT_MODE",
    "METRIC_PREFIX",
    "MODES",
    "PROTOCOLS",
    "Evaluator",
    "MetricSpec",
    "format_time",
    "metric_mode",
    "metric_name",
    "parse_metric",
]

METRIC_PREFIX: dict[str, str] = {"legacy_tensorflow": "", "clean": "clean_", "fast": "approx_clean_"}
PROTOCOLS: dict[str, str] = {
    "legacy_tensorflow": "NVIDIA's FID protocol (clean-fid mode legacy_tensorflow: the Inception file "
    "resizes inside, like TensorFlow); comparable with FIDs published with NVIDIA's StyleGAN code",
    "clean": "clean-fid's clean protocol (PIL bicubic resize to 299x299); comparable with clean-fid "
    "clean numbers only, not with NVIDIA's",
    "fast": "rootedgan's fast approximation of clean-fid's clean protocol (resize on the device); "
    "not exact, comparable with neither",
}
_METRIC_RX = re.compile(r"^(approx_clean_|clean_)?(fid|kid)(\d+)(k?)_full$")
_PREFIX_MODE = {prefix: mode for mode, prefix in METRIC_PREFIX.items()}


@dataclass(frozen=True)
class MetricSpec:
    """One metric: ``kind`` (``fid`` or ``kid``) on ``num_gen`` images under protocol ``mode``,
    reported as ``name``."""

    name: str
    kind: Literal["fid", "kid"]
    num_gen: int
    mode: str = DEFAULT_MODE


def check_mode(mode: str) -> Mode:
    """``mode`` if it is a protocol (:data:`MODES`), else a :class:`UserError`."""
    if mode not in MODES:
        raise UserError(f"unknown FID protocol (mode) {mode!r}: use one of {', '.join(MODES)}")
    return mode  # type: ignore[return-value]


def metric_name(kind: str, num_gen: int, mode: str = DEFAULT_MODE) -> str:
    """``('fid', 50000)`` -> ``'fid50k_full'`` (NVIDIA's protocol), ``('fid', 50000, 'clean')`` ->
    ``'clean_fid50k_full'``; counts that are not whole thousands are written out (``fid2500_full``)."""
    count = f"{num_gen // 1000}k" if num_gen % 1000 == 0 else f"{num_gen}"
    return f"{METRIC_PREFIX[check_mode(mode)]}{kind}{count}_full"


def metric_mode(name: str) -> str | None:
    """The protocol a metric name states by its prefix (``clean_fid50k_full`` -> ``'clean'``), or None
    for an unprefixed (NVIDIA) name, which takes the protocol of the run (default legacy_tensorflow)."""
    match = _METRIC_RX.match(name.strip().lower())
    return _PREFIX_MODE[match.group(1)] if match and match.group(1) else None


def parse_metric(name: str, num_gen: int | None = None, mode: str | None = None) -> MetricSpec:
    """``'fid50k_full'`` -> ``MetricSpec('fid50k_full', 'fid', 50000, 'legacy_tensorflow')``.

    ``num_gen`` overrides the count (and the name follows it). ``mode`` is the protocol of the run
    (None: the default); the name is written for it (``fid50k_full`` under ``clean`` becomes
    ``clean_fid50k_full``), and a name whose prefix states another protocol is refused.
    """
    match = _METRIC_RX.match(name.strip().lower())
    if not match:
        raise UserError(
            f"unknown metric {name!r}: use fidNk_full or kidNk_full, optionally prefixed with the protocol "
            "(e.g. fid50k_full, kid50k_full, clean_fid50k_full, fid10k_full)"
        )
    prefix, kind, number, k = match.groups()
    stated = _PREFIX_MODE[prefix] if prefix else None
    run_mode = check_mode(mode) if mode is not None else (stated or DEFAULT_MODE)
    if stated is not None and stated != run_mode:
        raise UserError(f"metric {name} is the {stated} protocol's, but this evaluation uses {run_mode}")
    count = int(number) * (1000 if k else 1)
    if num_gen is not None:
        count = int(num_gen)
    if count < 2:
        raise UserError(f"{name}: needs at least 2 generated images, got {count}")
    return MetricSpec(metric_name(kind, count, run_mode), kind, count, run_mode)  # type: ignore[arg-type]


def format_time(seconds: float) -> str:
    """``75.2`` -> ``'1m 15s'`` (NVIDIA's style for ``total_time_str``)."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s // 60 % 60:02d}m {s % 60:02d}s"


def _broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (itself in a single process)."""
    _, world = rank_world()
    if world == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class Evaluator:
    """Computes FID / KID with one loaded Inception network (see module docstring).

    Args:
        inception: path of NVIDIA's Inception torchscript (None: ``$ROOTEDGAN_INCEPTION``, the caches).
        device: where Inception (and, except for ``mode="clean"``, the resize) runs.
        mode: the protocol: ``"legacy_tensorflow"`` (NVIDIA's, default), ``"clean"`` (clean-fid's) or
            ``"fast"`` (an approximation of ``clean``); see the module docstring.
        dtype: Inception's dtype in fast mode (``torch.bfloat16`` for speed); the exact modes are float32.
        batch_size: images per Inception batch.
        num_workers: CPU workers (DataLoader processes / resize threads); None: ``min(4, usable cores)``.
        progress: progress bars (rank 0).
        download: fetch the Inception file when it is not found.
        use_cache: read and write reference statistics in the on-disk cache.
        cache_dir: cache folder (default ``$ROOTEDGAN_CACHE/fid-stats``).
        announce: print which Inception file is used (path, sha256, origin) when it is loaded (rank 0).
    """

    def __init__(
        self,
        inception: str | os.PathLike[str] | None = None,
        device: torch.device | str = "cpu",
        mode: Mode = DEFAULT_MODE,
        dtype: torch.dtype = torch.float32,
        batch_size: int = 64,
        num_workers: int | None = None,
        progress: bool = True,
        download: bool = True,
        use_cache: bool = True,
        cache_dir: str | os.PathLike[str] | None = None,
        announce: bool = True,
    ) -> None:
        mode = check_mode(mode)
        if mode != "fast" and dtype != torch.float32:
            raise UserError(f"the {mode} FID protocol runs Inception in float32; use mode='fast' for bf16")
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
        self.announce = announce
        self._extractor: FeatureExtractor | None = None

    @property
    def extractor(self) -> FeatureExtractor:
        """The feature extractor (loads the Inception network on first use, and says which file it is)."""
        if self._extractor is None:
            net = load_inception(
                self.inception_path,
                self.device,
                download=self.download,
                dtype=self.dtype,
                resize_inside=self.mode == "legacy_tensorflow",
            )
            self._extractor = FeatureExtractor(
                net, self.mode, self.batch_size, self.num_workers, self.progress
            )
            if self.announce and rank_world()[0] == 0:
                print(f"FID protocol: {self.mode} ({PROTOCOLS[self.mode]})", flush=True)
                print(f"Inception: {net.describe()}", flush=True)
        return self._extractor

    def protocol(self) -> dict[str, Any]:
        """What determines the features besides the images: the protocol, dtype and the Inception file's
        sha256 (part of the key and the metadata of cached statistics)."""
        return {
            "protocol": self.mode,
            "mode": self.mode,
            "dtype": str(self.dtype).replace("torch.", ""),
            "inception_sha256": self.extractor.inception.digest,
        }

    def record_fields(self) -> dict[str, Any]:
        """What every ``metric-*.jsonl`` record says about the protocol and the Inception file."""
        net = self.extractor.inception
        return {
            "protocol": self.mode,
            "protocol_description": PROTOCOLS[self.mode],
            "dtype": str(self.dtype).replace("torch.", ""),
            "inception": net.path,
            "inception_sha256": net.digest,
        }

    def metric_record(
        self, name: str, value: float, seconds: float, snapshot: str | None, num_gpus: int, **fields: Any
    ) -> dict[str, Any]:
        """One line of ``metric-<name>.jsonl``: NVIDIA's fields, then ``fields`` (``kimg``, ``num_gen``,
        ``reference``, ...), then the protocol and the Inception file (:meth:`record_fields`)."""
        return {
            "results": {name: value},
            "metric": name,
            "total_time": seconds,
            "total_time_str": format_time(seconds),
            "num_gpus": num_gpus,
            "snapshot_pkl": snapshot,
            "timestamp": time.time(),
            **fields,
            **self.record_fields(),
        }

    def check_stats_meta(self, meta: dict[str, Any] | None, what: str) -> str | None:
        """Refuse (:class:`UserError`, one line) statistics ``what`` whose recorded protocol or Inception
        file differ from this evaluator's; returns a note when ``meta`` records neither (not checkable)."""
        mine = self.protocol()
        if not meta or ("inception_sha256" not in meta and "mode" not in meta):
            return (
                f"note: {what} records neither its FID protocol nor its Inception file; it is assumed to "
                f"match this run ({self.mode}, Inception sha256 {mine['inception_sha256'][:16]}...): "
                "statistics made otherwise give meaningless FIDs"
            )
        theirs_mode = meta.get("mode")
        theirs_sha = meta.get("inception_sha256")
        problems = []
        if theirs_mode is not None and theirs_mode != self.mode:
            problems.append(f"protocol {theirs_mode}, not {self.mode}")
        if (
            theirs_mode == "fast"
            and self.mode == "fast"
            and meta.get("dtype", mine["dtype"]) != mine["dtype"]
        ):
            problems.append(f"Inception in {meta.get('dtype')}, not {mine['dtype']}")
        if theirs_sha is not None and theirs_sha != mine["inception_sha256"]:
            problems.append(
                f"Inception sha256 {str(theirs_sha)[:16]}..., not {mine['inception_sha256'][:16]}... "
                f"({self.extractor.inception.path})"
            )
        if problems:
            raise UserError(
                f"{what} was computed with {' and '.join(problems)}: recompute it with this protocol and "
                "Inception file, or evaluate with the ones it was made with (--mode / --inception)"
            )
        return None

    def load_reference_file(self, path: str | os.PathLike[str], need_features: bool = False) -> GaussianStats:
        """Statistics from an ``.npz`` (ours or clean-fid's), refused in one line when they were computed
        under another protocol or with another Inception file (their metadata, or clean-fid's file name
        ``<name>_<mode>_<split>_<res>.npz``); files that record neither are used with a printed note."""
        p = Path(path).expanduser()
        try:
            stats = GaussianStats.load(p)
        except Exception as err:
            raise UserError(f"cannot read statistics {p}: {err}") from None
        if stats.mu.shape != (FEATURE_DIM,):
            raise UserError(
                f"{p} holds {stats.mu.size}-d statistics, not Inception's {FEATURE_DIM}-d features"
            )
        meta = stats.meta
        if not meta:
            named = _cleanfid_file_mode(p.name)
            if named is not None:
                meta = {"mode": named}
        note = self.check_stats_meta(meta, f"statistics file {p}")
        if note and self.announce and rank_world()[0] == 0:
            print(note, flush=True)
        if need_features and stats.features is None:
            raise UserError(f"KID needs features, but {p} holds only mu/sigma")
        return stats

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
        _check_count(source, max_images)
        rank, world = rank_world()
        stats = self._new_stats(keep_features)
        self.extractor.images_stats(source, stats, rank=rank, world=world, desc=desc, max_images=max_images)
        return stats.compute()

    def reference_stats(self, source: ImageSource, keep_features: bool = False) -> GaussianStats:
        """Statistics of a reference set, from the on-disk cache when there (then written to it)."""
        _check_count(source, None)
        rank, _ = rank_world()
        key = meta = None
        cached = None
        if self.use_cache and rank == 0:
            key, meta = cache.cache_key(source.content_key(), self.protocol())
            cached = cache.load_stats(key, features=keep_features, folder=self.cache_dir, expect=meta)
        cached = _broadcast(cached)
        if cached is not None:
            return cached
        stats = self.images_stats(source, keep_features=keep_features, desc="reference features")
        if self.use_cache and rank == 0:
            try:
                cache.save_stats(key, stats, {**meta, "source": source.describe()}, folder=self.cache_dir)
            except OSError as err:
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
        rank, world = rank_world()
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
        rank, _ = rank_world()
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
        rank, _ = rank_world()
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
        for s in specs:
            if s.mode != self.mode:
                raise ValueError(f"metric {s.name} is for protocol {s.mode}, this evaluator uses {self.mode}")
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


def _check_count(source: ImageSource, max_images: int | None) -> None:
    count = len(source) if max_images is None else min(len(source), max_images)
    if count < 2:
        raise UserError(
            f"{getattr(source, 'path', 'the image set')} has {count} image{'s' if count != 1 else ''}: "
            "FID and KID need at least 2 (a covariance)"
        )


_CLEANFID_STATS_RX = re.compile(r"_(legacy_tensorflow|legacy_pytorch|clean)_")


def _cleanfid_file_mode(name: str) -> str | None:
    """The protocol in a clean-fid statistics file name (``ffhq_clean_trainval70k_1024.npz``), if any."""
    match = _CLEANFID_STATS_RX.search(name.lower())
    return match.group(1) if match else None
