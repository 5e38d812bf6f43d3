"""FID and KID of generators and image folders, cached reference statistics, and a training callback.

The protocols (``mode``: NVIDIA's ``legacy_tensorflow`` by default, clean-fid's ``clean``, our ``fast``) and
the options are in the README, "FID / KID". :func:`folder_fid` / :func:`folder_kid` are
``cleanfid.compute_fid`` / ``compute_kid`` of two folders, :class:`Evaluator` scores generators and image
sets with control over devices, ranks and caching (``rootedgan fid``: :mod:`.score`), and
:class:`FIDCallback` runs while finetuning (``trainer.callbacks`` in YAML).
"""

from __future__ import annotations

import os
from typing import Any

from rootedgan.metrics.callback import FIDCallback
from rootedgan.metrics.evaluator import Evaluator
from rootedgan.metrics.features import DEFAULT_MODE, MODES, DatasetImages, FolderImages, ImageSource
from rootedgan.metrics.stats import FeatureStats, GaussianStats, frechet_distance, kernel_inception_distance

__all__ = [
    "DEFAULT_MODE",
    "MODES",
    "DatasetImages",
    "Evaluator",
    "FIDCallback",
    "FeatureStats",
    "FolderImages",
    "GaussianStats",
    "ImageSource",
    "folder_fid",
    "folder_kid",
    "frechet_distance",
    "kernel_inception_distance",
]


def _reference(evaluator: Evaluator, reference: Any, keep_features: bool) -> GaussianStats:
    if str(reference).endswith(".npz") and os.path.isfile(reference):
        return evaluator.load_reference_file(reference, need_features=keep_features)
    return evaluator.reference_stats(FolderImages(reference), keep_features=keep_features)


def folder_fid(path1: str | os.PathLike[str], path2: str | os.PathLike[str], **options: Any) -> float:
    """FID between all images of two folders/zips, any size (``path1`` may also be statistics, ``.npz``);
    ``options`` go to :class:`Evaluator` (``mode="clean"`` gives clean-fid's default protocol)."""
    ev = Evaluator(**options)
    return ev.fid(_reference(ev, path1, False), ev.images_stats(FolderImages(path2)))


def folder_kid(
    path1: str | os.PathLike[str],
    path2: str | os.PathLike[str],
    seed: int = 0,
    num_subsets: int = 100,
    max_subset_size: int = 1000,
    **options: Any,
) -> float:
    """KID between two folders/zips, clean-fid's ``kernel_distance(feats1, feats2)`` with a seeded RNG."""
    ev = Evaluator(**options)
    ref = _reference(ev, path1, True)
    other = ev.images_stats(FolderImages(path2), keep_features=True)
    return ev.kid(ref, other, seed=seed, num_subsets=num_subsets, max_subset_size=max_subset_size)
