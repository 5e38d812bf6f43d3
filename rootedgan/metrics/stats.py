"""Feature statistics in float64, summed across ranks, and the FID / KID formulas.

Sums and sums of outer products are accumulated in float64, so 50k 2048-d features lose no precision,
whatever their order or rank split. :func:`frechet_distance` avoids a general matrix square root:
``tr sqrt(S1 S2) = sum_i sqrt(lambda_i(A^T S2 A))`` with ``S1 = A A^T`` (same eigenvalues, and the latter
is symmetric PSD); it agrees with clean-fid's ``sqrtm`` formula and is better conditioned for singular
covariances. :func:`kernel_inception_distance` is clean-fid's ``kernel_distance`` draw for draw, seeded.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.linalg
import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from rootedgan.fileio import atomic_open


@dataclass
class GaussianStats:
    """Float64 mean ``mu [D]`` and unbiased covariance ``sigma [D, D]`` of ``count`` features (float32
    ``[count, D]``, when kept); ``meta``: how a loaded file says it was made (:mod:`.cache`; None for
    clean-fid's files)."""

    mu: np.ndarray
    sigma: np.ndarray
    count: int
    features: np.ndarray | None = None
    meta: dict[str, Any] | None = None

    @classmethod
    def from_features(cls, features: np.ndarray | torch.Tensor, keep_features: bool = False) -> GaussianStats:
        """Statistics of ``[N, D]`` features (N >= 2), accumulated in float64."""
        stats = FeatureStats(dim=int(features.shape[1]), keep_features=keep_features)
        stats.update(torch.as_tensor(np.asarray(features) if not torch.is_tensor(features) else features))
        return stats.compute()

    def save(self, path: str | os.PathLike[str], meta: str = "") -> None:
        """Write an ``.npz`` (``mu``, ``sigma``, ``count``, ``meta``; ``features`` when kept) atomically."""
        arrays = dict(mu=self.mu, sigma=self.sigma, count=np.int64(self.count), meta=np.array(meta))
        if self.features is not None:
            arrays["features"] = self.features
        with atomic_open(path, "wb") as fh:
            np.savez(fh, **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> GaussianStats:
        """Read an ``.npz`` written by :meth:`save` (``meta`` parsed from its JSON), or clean-fid's
        (``mu``/``sigma``; ``feats`` for KID; no ``meta``)."""
        with np.load(path, allow_pickle=False) as data:
            meta = _parse_meta(data["meta"]) if "meta" in data else None
            if "mu" in data and "sigma" in data:
                mu = np.asarray(data["mu"], dtype=np.float64)
                sigma = np.asarray(data["sigma"], dtype=np.float64)
                feats = data["features"] if "features" in data else data["feats"] if "feats" in data else None
                count = int(data["count"]) if "count" in data else (len(feats) if feats is not None else 0)
                return cls(mu, sigma, count, None if feats is None else np.asarray(feats, np.float32), meta)
            if "feats" in data:  # clean-fid's *_kid.npz: features only
                stats = cls.from_features(np.asarray(data["feats"], np.float32), keep_features=True)
                stats.meta = meta
                return stats
        raise ValueError(f"{path} holds neither mu/sigma nor features")


def _parse_meta(value: np.ndarray) -> dict[str, Any] | None:
    """The JSON object stored as a string array by :meth:`GaussianStats.save`, else None."""
    try:
        meta = json.loads(str(value))
    except (TypeError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta else None


class FeatureStats(Metric):
    """Running float64 sums ``total [D]`` and ``total_outer [D, D]`` of ``[N, D]`` feature batches (and, with
    ``keep_features``, the float32 batches), summed (concatenated) over ranks on ``compute()``."""

    full_state_update = False
    is_differentiable = False

    def __init__(self, dim: int = 2048, keep_features: bool = False) -> None:
        super().__init__(sync_on_compute=True, compute_on_cpu=False)
        self.dim = int(dim)
        self.keep_features = bool(keep_features)
        self.add_state("count", torch.zeros([], dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros([self.dim], dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state(
            "total_outer", torch.zeros([self.dim, self.dim], dtype=torch.float64), dist_reduce_fx="sum"
        )
        if self.keep_features:
            self.add_state("features", [], dist_reduce_fx="cat")

    def update(self, features: torch.Tensor) -> None:
        """Add a batch ``[N, D]`` (any float dtype; accumulated in float64)."""
        if features.ndim != 2 or features.shape[1] != self.dim:
            raise ValueError(f"expected [N, {self.dim}] features, got {list(features.shape)}")
        f = features.detach().to(device=self.total.device, dtype=torch.float64)
        self.count += f.shape[0]
        self.total += f.sum(dim=0)
        self.total_outer += f.T @ f
        if self.keep_features:
            self.features.append(features.detach().to(device=self.total.device, dtype=torch.float32))

    def compute(self) -> GaussianStats:
        """Mean, unbiased covariance (float64) and, when kept, the features, of all ranks' batches."""
        n = int(self.count)
        if n < 2:
            raise ValueError(f"need at least 2 feature vectors for a covariance, got {n}")
        mu = self.total / n
        sigma = (self.total_outer - n * torch.outer(mu, mu)) / (n - 1)
        sigma = (sigma + sigma.T) / 2
        feats = None
        if self.keep_features and not (isinstance(self.features, list) and not self.features):
            # a list of batches locally, one concatenated tensor after the ranks were synced
            feats = dim_zero_cat(self.features).reshape(-1, self.dim).cpu().numpy()
        return GaussianStats(mu.cpu().numpy(), sigma.cpu().numpy(), n, feats)


def _trace_sqrt_product(s1: np.ndarray | torch.Tensor, s2: np.ndarray | torch.Tensor) -> float:
    """``tr sqrt(S1 S2)`` of symmetric PSD float64 matrices (SciPy on the CPU, torch elsewhere)."""
    scipy_ops = (scipy.linalg.eigh, scipy.linalg.eigvalsh, np.sqrt)
    eigh, eigvalsh, sqrt = (
        scipy_ops if isinstance(s1, np.ndarray) else (torch.linalg.eigh, torch.linalg.eigvalsh, torch.sqrt)
    )
    w, v = eigh(s1)
    keep = w > 0
    a = v[:, keep] * sqrt(w[keep])  # S1 = A A^T
    m = a.T @ s2 @ a
    return float(sqrt(eigvalsh((m + m.T) / 2).clip(0)).sum()) if len(m) else 0.0


def frechet_distance(
    mu1: np.ndarray | torch.Tensor,
    sigma1: np.ndarray | torch.Tensor,
    mu2: np.ndarray | torch.Tensor,
    sigma2: np.ndarray | torch.Tensor,
    device: torch.device | str = "cpu",
) -> float:
    """``||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr sqrt(S1 S2)`` in float64 (``mu [D]``, ``S [D, D]``).

    Covariances are symmetrised; their negative rounding-level eigenvalues are treated as zero. On
    the CPU the eigendecompositions run in SciPy (LAPACK), on another ``device`` in torch.
    """

    def as64(x: np.ndarray | torch.Tensor) -> np.ndarray:
        return (x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x)).astype(np.float64)

    mu1, mu2, s1, s2 = as64(mu1), as64(mu2), as64(sigma1), as64(sigma2)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(
            f"mismatched statistics: mu {list(mu1.shape)} / {list(mu2.shape)}, "
            f"sigma {list(s1.shape)} / {list(s2.shape)}"
        )
    s1 = (s1 + s1.T) / 2
    s2 = (s2 + s2.T) / 2
    on_cpu = torch.device(device).type == "cpu"
    tr_covmean = _trace_sqrt_product(*(x if on_cpu else torch.from_numpy(x).to(device) for x in (s1, s2)))
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def kernel_inception_distance(
    feats1: np.ndarray,
    feats2: np.ndarray,
    num_subsets: int = 100,
    max_subset_size: int = 1000,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> float:
    """KID (unbiased MMD^2, cubic polynomial kernel) averaged over random subsets, float64.

    ``feats1 [N1, D]``, ``feats2 [N2, D]`` in the roles of clean-fid's ``kernel_distance(feats1,
    feats2)``: each subset draws from ``feats2`` first, then from ``feats1``, without replacement,
    ``m = min(N1, N2, max_subset_size)`` rows each, from ``np.random.RandomState(seed)``.
    """
    feats1 = np.asarray(feats1)
    feats2 = np.asarray(feats2)
    n = feats1.shape[1]
    m = min(feats1.shape[0], feats2.shape[0], max_subset_size)
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples per set, got {feats1.shape[0]} and {feats2.shape[0]}")
    rng = np.random.RandomState(seed)
    f1 = torch.as_tensor(feats1).to(device, torch.float64)
    f2 = torch.as_tensor(feats2).to(device, torch.float64)
    t = torch.zeros([], dtype=torch.float64, device=device)
    for _ in range(num_subsets):
        x = f2[torch.as_tensor(rng.choice(feats2.shape[0], m, replace=False), device=device)]
        y = f1[torch.as_tensor(rng.choice(feats1.shape[0], m, replace=False), device=device)]
        a = (x @ x.T / n + 1) ** 3 + (y @ y.T / n + 1) ** 3
        b = (x @ y.T / n + 1) ** 3
        t += (a.sum() - torch.diagonal(a).sum()) / (m - 1) - b.sum() * 2 / m
    return float(t / num_subsets / m)
