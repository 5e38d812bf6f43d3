"""FID / KID of generators and image sets against a reference: protocols, metric names, ranks, caching.

The protocols (``mode``; README, "FID / KID", also why NVIDIA's is the default) follow clean-fid's
definitions with NVIDIA's Inception file: ``legacy_tensorflow`` (NVIDIA's: ``fid50k_full``), ``clean``
(clean-fid's PIL resize on the CPU: ``clean_fid50k_full``) and ``fast`` (that filter in torch, not exact:
``approx_clean_fid50k_full``). The protocol and the Inception file's sha256 are part of every metric name,
``metric-*.jsonl`` record and cache key: statistics made otherwise are refused. Under ``torch.distributed``
every rank calls the same methods in the same order; each extracts its share and the float64 statistics
are summed over ranks.
"""

from __future__ import annotations

import math
import os
import re
import time
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist

from rootedgan.distributed import rank_world
from rootedgan.errors import UserError
from rootedgan.metrics import cache
from rootedgan.metrics.features import DEFAULT_MODE, FeatureExtractor, ImageSource, Mode, check_mode
from rootedgan.metrics.inception import FEATURE_DIM, InceptionFile, load_inception
from rootedgan.metrics.stats import FeatureStats, GaussianStats, frechet_distance, kernel_inception_distance

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
    """One metric: ``kind`` (``fid``/``kid``) on ``num_gen`` images under protocol ``mode``, as ``name``."""

    name: str
    kind: Literal["fid", "kid"]
    num_gen: int
    mode: str = DEFAULT_MODE


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
    """``'fid50k_full'`` -> ``MetricSpec('fid50k_full', 'fid', 50000, 'legacy_tensorflow')``; ``num_gen``
    overrides the count, and the name is written for the run's protocol ``mode`` (``fid50k_full`` under
    ``clean`` becomes ``clean_fid50k_full``; a prefix stating another protocol is refused)."""
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
    count = int(num_gen) if num_gen is not None else int(number) * (1000 if k else 1)
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
    box = [obj]
    if rank_world()[1] > 1:
        dist.broadcast_object_list(box, src=0)
    return box[0]


#: What a statistics file may hold: 2048-d mu and sigma, and for KID up to 200k feature vectors (float32).
MAX_STATS_BYTES = 2 * FEATURE_DIM * FEATURE_DIM * 8 + 200_000 * FEATURE_DIM * 4 + (1 << 20)


def check_stats_archive(path: Path) -> None:
    """Refuse a statistics ``.npz`` whose members would unpack to more than :data:`MAX_STATS_BYTES`, from
    the zip's own headers, before anything is decompressed (a small file can unpack to gigabytes)."""
    try:
        with zipfile.ZipFile(path) as archive:
            total = sum(info.file_size for info in archive.infolist())
    except (OSError, zipfile.BadZipFile) as err:
        raise UserError(f"cannot read statistics {path}: not an .npz archive ({err})") from None
    if total > MAX_STATS_BYTES:
        raise UserError(f"{path} unpacks to {total / 2**30:.1f} GiB, more than statistics hold; refused")


def check_stats_values(stats: GaussianStats, path: Path) -> None:
    """Shapes, finiteness and a covariance that is symmetric and positive semi-definite (within rounding),
    so that a damaged or crafted file is refused instead of giving a NaN or negative FID."""
    if stats.mu.shape != (FEATURE_DIM,) or stats.sigma.shape != (FEATURE_DIM, FEATURE_DIM):
        raise UserError(
            f"{path} holds statistics of shapes {stats.mu.shape} and {stats.sigma.shape}, not Inception's "
            f"({FEATURE_DIM},) and ({FEATURE_DIM}, {FEATURE_DIM})"
        )
    features = stats.features
    if features is not None and (features.ndim != 2 or features.shape[1] != FEATURE_DIM or len(features) < 2):
        raise UserError(f"{path}: its KID features are {features.shape}, not [N >= 2, {FEATURE_DIM}]")
    arrays = [stats.mu, stats.sigma] + ([features] if features is not None else [])
    if not all(np.isfinite(a).all() for a in arrays):
        raise UserError(f"{path} holds NaN or infinite statistics; refused (recompute them)")
    scale = max(float(np.abs(stats.sigma).max()), 1e-12)
    if np.abs(stats.sigma - stats.sigma.T).max() > 1e-6 * scale:
        raise UserError(f"{path}: its sigma is not symmetric, so not a covariance; refused")
    if np.linalg.eigvalsh(stats.sigma).min() < -1e-6 * scale:
        raise UserError(f"{path}: its sigma has negative eigenvalues, so not a covariance; refused")


def _checked(name: str, value: float, lowest: float) -> float:
    """``value``, or a one-line error when it cannot be a real FID / KID (nothing is recorded then)."""
    if not math.isfinite(value) or value < lowest:
        raise UserError(
            f"{name} came out {value}: the images or the statistics are broken (non-finite features, or a "
            "covariance that is not one); nothing was recorded"
        )
    return value


class Evaluator:
    """FID / KID with one Inception network (``inception``: its path, else found as
    :mod:`~rootedgan.metrics.inception` says, downloaded with ``download``) on ``device``, under the protocol
    ``mode`` (``dtype`` ``torch.bfloat16`` only with ``"fast"``). ``num_workers``: CPU workers (None:
    ``min(4, usable cores)``); ``use_cache``, ``cache_dir``: :mod:`~rootedgan.metrics.cache`; ``announce``:
    print the protocol and the Inception file (path, sha256, origin) when it is loaded (rank 0)."""

    def __init__(
        self,
        inception: str | os.PathLike[str] | InceptionFile | None = None,
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
        self.mode = check_mode(mode)
        if self.mode != "fast" and dtype != torch.float32:
            raise UserError(f"the {mode} FID protocol runs Inception in float32; use mode='fast' for bf16")
        self.inception_path, self.device, self.dtype = inception, torch.device(device), dtype
        self.batch_size, self.num_workers, self.progress = batch_size, num_workers, progress
        self.download, self.use_cache, self.announce = download, use_cache, announce
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._extractor: FeatureExtractor | None = None

    @property
    def extractor(self) -> FeatureExtractor:
        """The feature extractor (loads the Inception network on first use, and says which file it is)."""
        if self._extractor is None:
            resize_inside = self.mode == "legacy_tensorflow"
            net = load_inception(self.inception_path, self.device, self.download, self.dtype, resize_inside)
            self._extractor = FeatureExtractor(
                net, self.mode, self.batch_size, self.num_workers, self.progress
            )
            if self.announce and rank_world()[0] == 0:
                print(f"FID protocol: {self.mode} ({PROTOCOLS[self.mode]})", flush=True)
                print(f"Inception: {net.describe()}", flush=True)
        return self._extractor

    def protocol(self) -> dict[str, Any]:
        """What determines the features besides the images (part of the key and ``meta`` of cached
        statistics): the protocol, dtype and the Inception file's sha256."""
        dtype, sha = str(self.dtype).replace("torch.", ""), self.extractor.inception.digest
        return {"protocol": self.mode, "mode": self.mode, "dtype": dtype, "inception_sha256": sha}

    def metric_record(
        self, name: str, value: float, seconds: float, snapshot: str | None, num_gpus: int, **fields: Any
    ) -> dict[str, Any]:
        """One line of ``metric-<name>.jsonl``: NVIDIA's fields, then ``fields`` (``kimg``, ``num_gen``,
        ``reference``, ...), then the protocol and the Inception file."""
        net, dtype = self.extractor.inception, str(self.dtype).replace("torch.", "")
        return {
            "results": {name: value},
            "metric": name,
            "total_time": seconds,
            "total_time_str": format_time(seconds),
            "num_gpus": num_gpus,
            "snapshot_pkl": snapshot,
            "timestamp": time.time(),
            **fields,
            "protocol": self.mode,
            "protocol_description": PROTOCOLS[self.mode],
            "dtype": dtype,
            "inception": net.path,
            "inception_sha256": net.digest,
            "inception_is_nvidias": not net.not_nvidia,
        }

    def check_stats_meta(self, meta: dict[str, Any] | None, what: str) -> str | None:
        """Refuse (:class:`UserError`, one line) statistics ``what`` whose recorded protocol or Inception
        file differ from this evaluator's; returns a note when ``meta`` records neither (not checkable)."""
        mine = self.protocol()
        sha = mine["inception_sha256"]
        if not meta or ("inception_sha256" not in meta and "mode" not in meta):
            return (
                f"note: {what} records neither its FID protocol nor its Inception file; it is assumed to "
                f"match this run ({self.mode}, Inception sha256 {sha[:16]}...): "
                "statistics made otherwise give meaningless FIDs"
            )
        theirs_mode, theirs_sha = meta.get("mode"), meta.get("inception_sha256")
        problems = []
        if theirs_mode is not None and theirs_mode != self.mode:
            problems.append(f"protocol {theirs_mode}, not {self.mode}")
        if theirs_mode == self.mode == "fast" and meta.get("dtype", mine["dtype"]) != mine["dtype"]:
            problems.append(f"Inception in {meta.get('dtype')}, not {mine['dtype']}")
        if theirs_sha is not None and theirs_sha != sha:
            path = self.extractor.inception.path
            problems.append(f"Inception sha256 {str(theirs_sha)[:16]}..., not {sha[:16]}... ({path})")
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
        check_stats_archive(p)
        try:
            stats = GaussianStats.load(p)
        except Exception as err:
            raise UserError(f"cannot read statistics {p}: {err}") from None
        check_stats_values(stats, p)
        named = _CLEANFID_STATS_RX.search(p.name.lower())
        meta = stats.meta or ({"mode": named.group(1)} if named else None)
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

    def images_stats(
        self,
        source: ImageSource,
        keep_features: bool = False,
        max_images: int | None = None,
        desc: str = "features",
    ) -> GaussianStats:
        """Statistics of (the first ``max_images`` of) an image set, computed by all ranks together."""
        check_image_count(source, max_images)
        stats = self._new_stats(keep_features)
        rank, world = rank_world()
        self.extractor.images_stats(source, stats, rank=rank, world=world, desc=desc, max_images=max_images)
        return stats.compute()

    def reference_stats(self, source: ImageSource, keep_features: bool = False) -> GaussianStats:
        """Statistics of a reference set, from the on-disk cache when there (else written to it)."""
        check_image_count(source)
        rank = rank_world()[0]
        key = meta = cached = None
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
        self, G: torch.nn.Module, num_gen: int, keep_features: bool = False, **generate: Any
    ) -> GaussianStats:
        """Statistics of ``num_gen`` images of ``G``, each rank generating its share; ``generate``: ``seed``,
        ``labels``, ``truncation_psi``, ``noise_mode``, ``latents`` (:func:`~.features.generated_uint8`)."""
        stats = self._new_stats(keep_features)
        rank, world = rank_world()
        self.extractor.generator_stats(G, num_gen, stats, rank=rank, world=world, **generate)
        return stats.compute()

    def fid(self, a: GaussianStats, b: GaussianStats) -> float:
        """FID between two statistics (computed on rank 0, the same value returned on every rank)."""
        on_rank0 = rank_world()[0] == 0
        value = frechet_distance(a.mu, a.sigma, b.mu, b.sigma, device=self.device) if on_rank0 else None
        return _checked("FID", float(_broadcast(value)), lowest=-1e-3)

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
        args = (reference.features, other.features, num_subsets, max_subset_size, seed, self.device)
        value = kernel_inception_distance(*args) if rank_world()[0] == 0 else None
        return _checked("KID", float(_broadcast(value)), lowest=-1.0)  # unbiased: slightly < 0 is fine

    def metrics(
        self, reference: GaussianStats, other: GaussianStats, specs: list[MetricSpec], kid_seed: int = 0
    ) -> dict[str, float]:
        """``{spec.name: value}`` for FID/KID specs (of this evaluator's protocol) on the same two sets."""
        fid_or_kid = {"fid": self.fid, "kid": lambda a, b: self.kid(a, b, seed=kid_seed)}
        return {s.name: fid_or_kid[s.kind](reference, other) for s in specs}

    def evaluate_generator(
        self,
        G: torch.nn.Module,
        reference: GaussianStats,
        specs: list[MetricSpec],
        seed: int = 0,
        **generate: Any,
    ) -> dict[str, float]:
        """All ``specs`` for a generator against ``reference`` (with features for KID), one generated set per
        distinct count; ``generate``: ``labels``, ``truncation_psi``, ``noise_mode``."""
        results: dict[str, float] = {}
        for count in dict.fromkeys(s.num_gen for s in specs):
            group = [s for s in specs if s.num_gen == count]
            keep = any(s.kind == "kid" for s in group)
            gen = self.generator_stats(G, count, keep_features=keep, seed=seed, **generate)
            results.update(self.metrics(reference, gen, group, kid_seed=seed))
        return results


def check_image_count(source: ImageSource, max_images: int | None = None) -> None:
    """A one-line :class:`UserError` unless (the first ``max_images`` of) ``source`` has 2 images or more."""
    count = len(source) if max_images is None else min(len(source), max_images)
    if count < 2:
        raise UserError(
            f"{getattr(source, 'path', 'the image set')} has {count} image{'s' if count != 1 else ''}: "
            "FID and KID need at least 2 (a covariance)"
        )


#: The protocol in clean-fid's statistics file names (``ffhq_clean_trainval70k_1024.npz``).
_CLEANFID_STATS_RX = re.compile(r"_(legacy_tensorflow|legacy_pytorch|clean)_")
