"""FID and KID under NVIDIA's or clean-fid's protocol, cached reference statistics and a training callback.

The protocol is ``mode``: ``"legacy_tensorflow"`` (the default: NVIDIA's, reported as ``fid50k_full``,
comparable with published StyleGAN FIDs), ``"clean"`` (clean-fid's, reported as ``clean_fid50k_full``)
or ``"fast"`` (our approximation of ``clean`` on the GPU, ``approx_clean_fid50k_full``); why the default
is NVIDIA's: :mod:`rootedgan.metrics.evaluator`.

* :func:`folder_fid` / :func:`folder_kid`: two image folders (or zips) of any image size, like
  ``cleanfid.compute_fid(fdir1, fdir2, mode=...)`` / ``compute_kid``;
* :func:`generator_fid`: a generator against a reference (folder, zip, or cached statistics);
* :class:`Evaluator`: the same with control over devices, modes, ranks and caching;
* :class:`FIDCallback`: FID of G_ema every N kimg while finetuning (``trainer.callbacks`` in YAML);
* :func:`frechet_distance`, :func:`kernel_inception_distance`, :class:`FeatureStats`: the formulas and
  the float64, rank-combined statistics.

clean-fid is imported only when features are computed (``pip install clean-fid``); NVIDIA's
Inception torchscript is found as :mod:`rootedgan.metrics.inception` describes.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from rootedgan.metrics.evaluator import (
    DEFAULT_MODE,
    MODES,
    PROTOCOLS,
    Evaluator,
    MetricSpec,
    metric_mode,
    metric_name,
    parse_metric,
)
from rootedgan.metrics.features import DatasetImages, FolderImages, ImageSource
from rootedgan.metrics.inception import INCEPTION_URL, load_inception, resolve_inception
from rootedgan.metrics.stats import FeatureStats, GaussianStats, frechet_distance, kernel_inception_distance

__all__ = [
    "DEFAULT_MODE",
    "INCEPTION_URL",
    "MODES",
    "PROTOCOLS",
    "DatasetImages",
    "Evaluator",
    "FIDCallback",
    "FeatureStats",
    "FolderImages",
    "GaussianStats",
    "ImageSource",
    "MetricSpec",
    "folder_fid",
    "folder_kid",
    "frechet_distance",
    "generator_fid",
    "kernel_inception_distance",
    "load_inception",
    "metric_mode",
    "metric_name",
    "parse_metric",
    "resolve_inception",
]


def __getattr__(name: str) -> Any:
    # FIDCallback imports Lightning: loaded on first use, so that the formulas import quickly.
    if name == "FIDCallback":
        from rootedgan.metrics.callback import FIDCallback

        return FIDCallback
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _reference(evaluator: Evaluator, reference: Any, keep_features: bool) -> GaussianStats:
    if isinstance(reference, GaussianStats):
        return reference
    if isinstance(reference, ImageSource):
        return evaluator.reference_stats(reference, keep_features=keep_features)
    if str(reference).endswith(".npz") and os.path.isfile(reference):
        return evaluator.load_reference_file(reference, need_features=keep_features)
    return evaluator.reference_stats(FolderImages(reference), keep_features=keep_features)


def folder_fid(
    path1: str | os.PathLike[str], path2: str | os.PathLike[str], **evaluator_kwargs: Any
) -> float:
    """FID between all images of two folders/zips, any size (``path1`` may also be statistics, ``.npz``,
    refused when made under another protocol or Inception file).

    ``evaluator_kwargs`` go to :class:`Evaluator` (``inception``, ``device``, ``mode``, ...); the default
    protocol is NVIDIA's (``mode="legacy_tensorflow"``), ``mode="clean"`` gives clean-fid's default.
    """
    ev = Evaluator(**evaluator_kwargs)
    return ev.fid(_reference(ev, path1, False), ev.images_stats(FolderImages(path2)))


def folder_kid(
    path1: str | os.PathLike[str],
    path2: str | os.PathLike[str],
    seed: int = 0,
    num_subsets: int = 100,
    max_subset_size: int = 1000,
    **evaluator_kwargs: Any,
) -> float:
    """KID between two folders/zips, clean-fid's ``kernel_distance(feats1, feats2)`` with a seeded RNG."""
    ev = Evaluator(**evaluator_kwargs)
    ref = _reference(ev, path1, True)
    other = ev.images_stats(FolderImages(path2), keep_features=True)
    return ev.kid(ref, other, seed=seed, num_subsets=num_subsets, max_subset_size=max_subset_size)


def generator_fid(
    G: torch.nn.Module,
    reference: str | os.PathLike[str] | ImageSource | GaussianStats,
    num_gen: int = 50000,
    seed: int = 0,
    truncation_psi: float = 1.0,
    noise_mode: str = "random",
    **evaluator_kwargs: Any,
) -> float:
    """FID of ``num_gen`` images of ``G`` (on its own device) against a reference set or statistics."""
    ev = Evaluator(**evaluator_kwargs)
    gen = ev.generator_stats(G, num_gen, seed=seed, truncation_psi=truncation_psi, noise_mode=noise_mode)
    return ev.fid(_reference(ev, reference, False), gen)
