"""Reference statistics cached on disk in ``$ROOTEDGAN_CACHE/fid-stats/``, reused across runs.

An entry is ``<key>.npz`` (float64 ``mu``, ``sigma``, ``count``, a JSON ``meta``) and, once KID needed them,
``<key>.features.npy`` (float32 ``[N, 2048]``). The key hashes the data's content key, the protocol, dtype,
the Inception file's sha256 and clean-fid's version; ``meta`` repeats them, so statistics made otherwise are
refused as a reference, and an entry contradicting its key (or unreadable) is recomputed.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

from rootedgan.checkpoints.download import cache_dir
from rootedgan.fileio import atomic_open
from rootedgan.metrics.stats import GaussianStats

_SCHEMA = "rootedgan-fid-stats-v1"
_CHECKED = ("protocol", "mode", "dtype", "inception_sha256")


def cache_key(content_key: str, protocol: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """``(key, meta)`` for a data set's content key and the feature protocol (mode, dtype, Inception)."""
    try:
        cleanfid_version = version("clean-fid")
    except Exception:  # not installed, or unreadable metadata
        cleanfid_version = "unknown"
    meta = {"schema": _SCHEMA, "content": content_key, "clean_fid": cleanfid_version, **protocol}
    key = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:32]
    return key, meta


def _paths(key: str, folder: Path | None) -> tuple[Path, Path]:
    folder = folder or cache_dir().parent / "fid-stats"  # beside the networks' folder
    return folder / f"{key}.npz", folder / f"{key}.features.npy"


def load_stats(
    key: str, features: bool = False, folder: Path | None = None, expect: dict[str, Any] | None = None
) -> GaussianStats | None:
    """The cached statistics for ``key`` (with features when asked and stored), else None; an entry whose
    protocol, dtype or Inception sha256 differ from ``expect`` (:func:`cache_key`'s ``meta``) is not used
    (a warning; the caller recomputes and overwrites it)."""
    stats_path, feats_path = _paths(key, folder)
    if not stats_path.is_file() or (features and not feats_path.is_file()):
        return None
    try:
        stats = GaussianStats.load(stats_path)
        stored = stats.meta or {}
        differ = [k for k in _CHECKED if stored.get(k) != expect.get(k)] if expect is not None else []
        if differ:
            raise ValueError(f"its {', '.join(differ)} differ from the key's")
        if features:
            stats.features = np.load(feats_path, allow_pickle=False)
            if stats.features.shape[0] != stats.count:
                raise ValueError(f"{len(stats.features)} features for {stats.count} images")
    except Exception as err:  # damaged or foreign file: recompute
        warnings.warn(f"ignoring unreadable cached FID statistics {stats_path}: {err}", stacklevel=2)
        return None
    return stats


def save_stats(key: str, stats: GaussianStats, meta: dict[str, Any], folder: Path | None = None) -> Path:
    """Write ``stats`` (and its features, if any) under ``key`` atomically; returns the ``.npz`` path."""
    stats_path, feats_path = _paths(key, folder)
    stats_path.parent.mkdir(parents=True, exist_ok=True)
    if stats.features is not None:
        with atomic_open(feats_path, "wb") as fh:
            np.save(fh, np.asarray(stats.features, np.float32))
    GaussianStats(stats.mu, stats.sigma, stats.count).save(stats_path, meta=json.dumps(meta, sort_keys=True))
    return stats_path
