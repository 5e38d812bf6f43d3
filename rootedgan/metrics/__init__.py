"""FID and KID of generators and image folders, cached reference statistics, and a training callback.

The protocols (``mode``: NVIDIA's ``legacy_tensorflow`` by default, clean-fid's ``clean``, our ``fast``) and
the options are in the README, "FID / KID"; why NVIDIA's is the default: :mod:`rootedgan.metrics.evaluator`.
:func:`folder_fid` / :func:`folder_kid` are ``cleanfid.compute_fid`` / ``compute_kid`` of two folders,
:func:`generator_fid` scores a generator, :class:`Evaluator` does either with control over devices, ranks and
caching, and :class:`FIDCallback` runs while finetuning (``trainer.callbacks`` in YAML).
"""

from __future__ import annotations

import os
from typing import Any

import torch

from rootedgan.metrics.callback import FIDCallback
from rootedgan.metrics.evaluator import (
    PROTOCOLS,
    Evaluator,
    MetricSpec,
    metric_mode,
    metric_name,
    parse_metric,
)
from rootedgan.metrics.features import DEFAULT_MODE, MODES, DatasetImages, FolderImages, ImageSource
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
    """FID between all images of two folders/zips, any size (``path1`` may also be statistics, ``.npz``);
    ``evaluator_kwargs`` go to :class:`Evaluator` (``mode="clean"`` gives clean-fid's default protocol)."""
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
