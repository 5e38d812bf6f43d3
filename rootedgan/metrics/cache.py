"""Reference statistics cached on disk, reused across runs, by ``rootedgan fid`` and by the callback.

Files live in ``$ROOTEDGAN_CACHE/fid-stats/`` (default ``~/.cache/rootedgan/fid-stats/``):
``<key>.npz`` (float64 ``mu``, ``sigma``, ``count`` and a JSON ``meta`` describing the entry) and,
once KID has needed them, ``<key>.features.npy`` (float32 ``[N, 2048]``). The key is the sha256 of
the data set's content key (file names and bytes, resolution, channels, mirroring, subset), the
FID protocol (``legacy_tensorflow`` / ``clean`` / ``fast``) and dtype, the Inception file's sha256, and
clean-fid's version. The same facts are stored in every ``.npz`` (``meta``), so that a statistics file
passed as a reference (``rootedgan fid --data FILE.npz``) is refused when it was made under another
protocol or with another Inception file, and a cache entry whose stored facts do not match its key is
recomputed. Files are written to a temporary name and renamed, so a reader never sees half a file; an
unreadable entry is recomputed.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from rootedgan.fileio import atomic_open
from rootedgan.metrics.stats import GaussianStats

__all__ = ["cache_key", "load_stats", "save_stats", "stats_cache_dir"]

CACHE_ENV = "ROOTEDGAN_CACHE"
DEFAULT_CACHE = "~/.cache/rootedgan"
SUBDIR = "fid-stats"
_SCHEMA = "rootedgan-fid-stats-v1"


def stats_cache_dir() -> Path:
    """``$ROOTEDGAN_CACHE/fid-stats`` (default ``~/.cache/rootedgan/fid-stats``)."""
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser() / SUBDIR


def _cleanfid_version() -> str:
    try:
        from importlib.metadata import version

        return version("clean-fid")
    except Exception:
        return "unknown"


def cache_key(content_key: str, protocol: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """``(key, meta)`` for a data set's content key and the feature protocol (mode, dtype, Inception)."""
    meta = {"schema": _SCHEMA, "content": content_key, "clean_fid": _cleanfid_version(), **protocol}
    key = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:32]
    return key, meta


def _paths(key: str, folder: Path | None) -> tuple[Path, Path]:
    folder = folder or stats_cache_dir()
    return folder / f"{key}.npz", folder / f"{key}.features.npy"


_CHECKED = ("protocol", "mode", "dtype", "inception_sha256")


def load_stats(
    key: str, features: bool = False, folder: Path | None = None, expect: dict[str, Any] | None = None
) -> GaussianStats | None:
    """The cached statistics for ``key`` (with features when asked and stored), else None.

    ``expect``: the ``meta`` of :func:`cache_key`; an entry whose stored protocol, dtype or Inception
    sha256 differ from it is not used (a warning; the caller recomputes and overwrites it).
    """
    stats_path, feats_path = _paths(key, folder)
    if not stats_path.is_file() or (features and not feats_path.is_file()):
        return None
    try:
        with np.load(stats_path, allow_pickle=False) as data:
            stats = GaussianStats(
                np.asarray(data["mu"], np.float64), np.asarray(data["sigma"], np.float64), int(data["count"])
            )
            stored = json.loads(str(data["meta"])) if "meta" in data else {}
        if expect is not None:
            differ = [k for k in _CHECKED if stored.get(k) != expect.get(k)]
            if differ:
                raise ValueError(f"its {', '.join(differ)} differ from the key's")
        stats.meta = stored or None
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
