"""Landscape probe: the alpha-beta condition of arXiv 2410.12455 measured along a training trajectory.

For iterates ``x_0 .. x_K`` with final point ``x_K`` and per-step loss ``f_k`` (a deterministic function
of the parameters) we log, per step,

* ``A_k = <grad f_k(x_k), x_k - x_K>``
* ``B_k = f_k(x_k) - f_k(x_K)``
* ``C_k = f_k(x_k) - f_lb``  (``f_lb``: a lower bound of ``f_k``; 0 for non-negative losses)
* ``cos_k = cos(grad f_k(x_k), x_k - x_K)`` (the "aiming" cosine)
* ``||grad f_k(x_k)||^2`` (for a PL-style constant).

The condition holds on the trajectory for ``alpha > beta > 0`` iff ``T_k = A_k - alpha*B_k + beta*C_k >= 0``
for every k. ``T`` is linear in ``(alpha, beta)``, so A, B, C are logged once and the feasible region,
a min-T heatmap and the smallest feasible alpha are computed offline (:func:`feasible_region`,
:func:`min_T_grid`, :func:`alpha_interval`, :func:`smallest_feasible_alpha`).

GAN replay (:func:`replay_generator_objective`)
-----------------------------------------------
The generator's objective ``f(x) = mean phi(-D(G_x(z)))`` depends on D, which keeps moving during
training: with a moving D there is no single function whose landscape the trajectory explores, and
``f_k(x_K)`` would be ill-defined. We therefore **freeze D** at one chosen snapshot (by default the last
one) so the generator objective is a fixed function of G's parameters. Each step's latents come from a
``torch.Generator`` seeded with ``(seed, step)``, and the synthesis runs with ``noise_mode='const'`` (no
style mixing, no augmentation), so ``f_k`` is deterministic and the *same* function is evaluated at
``x_k`` and at ``x_K``.

The trajectory points are saved **snapshots**, not every optimizer step: the training loop does not keep
every iterate (a StyleGAN2 generator is tens of MB per copy), snapshots are what a finished run has on
disk, and the condition is a statement about any points of the trajectory versus its end point, so a
sub-sampled trajectory is a valid (if coarser) probe. ``steps_per_snapshot > 1`` evaluates several
independent mini-batches at each snapshot.
"""

from __future__ import annotations

import glob
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rootedgan.checkpoints import load_network
from rootedgan.errors import UserError
from rootedgan.fileio import atomic_open
from rootedgan.sampling import derive_seed
from rootedgan.training.losses import AdversarialLoss, make_loss
from rootedgan.training.settings import migrate

LossFn = Callable[[torch.Tensor], torch.Tensor]


# -- the log ----------------------------------------------------------------------------------------


@dataclass
class LandscapeLog:
    """Per-step quantities of one trajectory (float64 arrays of equal length)."""

    A: np.ndarray
    B: np.ndarray
    C: np.ndarray
    cos: np.ndarray
    grad_sq: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("A", "B", "C", "cos", "grad_sq"):
            setattr(self, name, np.asarray(getattr(self, name), dtype=np.float64).reshape(-1))
        n = len(self.A)
        if any(len(getattr(self, k)) != n for k in ("B", "C", "cos", "grad_sq")):
            raise ValueError("A, B, C, cos and grad_sq must have the same length")

    def __len__(self) -> int:
        return len(self.A)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict; NaN/inf become ``None`` (strict JSON has no NaN)."""

        def clean(a: np.ndarray) -> list[float | None]:
            return [float(v) if math.isfinite(v) else None for v in a.tolist()]

        return {
            "A": clean(self.A),
            "B": clean(self.B),
            "C": clean(self.C),
            "cos": clean(self.cos),
            "grad_sq": clean(self.grad_sq),
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LandscapeLog:
        """Inverse of :meth:`to_dict` (``None`` reads back as NaN)."""

        def arr(key: str) -> np.ndarray:
            return np.array([np.nan if v is None else v for v in data[key]], dtype=np.float64)

        return cls(arr("A"), arr("B"), arr("C"), arr("cos"), arr("grad_sq"), dict(data.get("meta", {})))

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the log as JSON (atomically)."""
        return _atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=1, allow_nan=False))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> LandscapeLog:
        """Read a log written by :meth:`save`."""
        return cls.from_dict(json.loads(Path(path).read_text()))


def _atomic_write_text(path: Path, text: str) -> Path:
    with atomic_open(path, "w") as f:
        f.write(text)
    return path


# -- the generic core -------------------------------------------------------------------------------


def probe_step(x: torch.Tensor, final: torch.Tensor, loss_fn: LossFn, f_lb: float = 0.0) -> dict[str, float]:
    """A, B, C, cos and ``||grad||^2`` of one step: ``loss_fn`` at ``x`` against the final point."""
    xk = x.detach().clone().requires_grad_(True)
    fx = loss_fn(xk)
    (grad,) = torch.autograd.grad(fx, xk)
    with torch.no_grad():
        f_final = loss_fn(final.detach())
        diff = (x.detach() - final.detach()).to(grad.dtype)
        a = float(torch.dot(grad.reshape(-1).double(), diff.reshape(-1).double()))
        g_norm = float(grad.double().norm())
        d_norm = float(diff.double().norm())
    cos = a / (g_norm * d_norm) if g_norm > 0 and d_norm > 0 else math.nan
    fx_f = float(fx.detach())
    return {"A": a, "B": fx_f - float(f_final), "C": fx_f - f_lb, "cos": cos, "grad_sq": g_norm**2}


def probe_trajectory(
    iterates: Sequence[torch.Tensor],
    final: torch.Tensor,
    losses: Sequence[LossFn],
    f_lb: float | Sequence[float] = 0.0,
    meta: dict[str, Any] | None = None,
) -> LandscapeLog:
    """Log A, B, C, cos per step for flat parameter vectors ``iterates[k]`` with loss ``losses[k]``.

    ``losses[k]`` maps a flat parameter vector to a scalar and must be deterministic (the same function
    is evaluated at ``iterates[k]`` and at ``final``). ``f_lb`` is the loss's lower bound (per step or one
    value for all).
    """
    if len(iterates) != len(losses):
        raise ValueError(f"{len(iterates)} iterates but {len(losses)} losses")
    lbs = [float(f_lb)] * len(iterates) if isinstance(f_lb, (int, float)) else [float(v) for v in f_lb]
    if len(lbs) != len(iterates):
        raise ValueError("f_lb must be one value or one per step")
    rows = [probe_step(x, final, fn, lb) for x, fn, lb in zip(iterates, losses, lbs, strict=True)]
    return LandscapeLog(
        A=np.array([r["A"] for r in rows]),
        B=np.array([r["B"] for r in rows]),
        C=np.array([r["C"] for r in rows]),
        cos=np.array([r["cos"] for r in rows]),
        grad_sq=np.array([r["grad_sq"] for r in rows]),
        meta=dict(meta or {}),
    )


# -- offline analysis -------------------------------------------------------------------------------


def _abc(A: Any, B: Any, C: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return tuple(np.asarray(v, dtype=np.float64).reshape(-1) for v in (A, B, C))  # type: ignore[return-value]


def t_values(A: Any, B: Any, C: Any, alpha: float, beta: float) -> np.ndarray:
    """``T_k = A_k - alpha*B_k + beta*C_k`` for one ``(alpha, beta)``."""
    a, b, c = _abc(A, B, C)
    return a - alpha * b + beta * c


def min_T_grid(A: Any, B: Any, C: Any, alphas: Any, betas: Any) -> np.ndarray:
    """``min_k T_k`` on a grid: array ``[len(alphas), len(betas)]``; entry ``[i, j]`` is for
    ``(alphas[i], betas[j])``."""
    a, b, c = _abc(A, B, C)
    al = np.asarray(alphas, dtype=np.float64).reshape(-1, 1)
    be = np.asarray(betas, dtype=np.float64).reshape(-1, 1)
    out = np.empty((len(al), len(be)))
    for i, alpha in enumerate(al[:, 0]):  # one row at a time keeps memory at O(len(betas) * K)
        out[i] = np.min(a[None, :] - alpha * b[None, :] + be * c[None, :], axis=1)
    return out


def feasible_region(A: Any, B: Any, C: Any, alphas: Any, betas: Any, margin: float = 0.0) -> np.ndarray:
    """Boolean ``[len(alphas), len(betas)]``: ``alpha > beta > 0`` and ``min_k T_k >= margin``."""
    al = np.asarray(alphas, dtype=np.float64).reshape(-1, 1)
    be = np.asarray(betas, dtype=np.float64).reshape(1, -1)
    return (al > be) & (be > 0) & (min_T_grid(A, B, C, alphas, betas) >= margin)


@dataclass(frozen=True)
class AlphaInterval:
    """Alphas with ``min_k T_k >= margin`` for a fixed beta: the closed interval ``[lo, hi]`` (may be empty
    or unbounded). The alpha-beta condition additionally needs ``alpha > beta > 0``: see :meth:`contains`."""

    beta: float
    lo: float
    hi: float

    @property
    def empty(self) -> bool:
        """No alpha satisfies the T constraints and ``alpha > beta > 0``."""
        return self.beta <= 0 or self.lo > self.hi or self.hi <= self.beta

    def contains(self, alpha: float) -> bool:
        """``alpha`` is feasible: in ``[lo, hi]`` and ``alpha > beta > 0``."""
        return self.beta > 0 and alpha > self.beta and self.lo <= alpha <= self.hi

    @property
    def smallest(self) -> float:
        """Infimum of the feasible alphas (NaN if empty). Equals beta when the bound is the open one."""
        return math.nan if self.empty else max(self.lo, self.beta)


def alpha_interval(A: Any, B: Any, C: Any, beta: float, margin: float = 0.0) -> AlphaInterval:
    """Exact feasible alphas for fixed ``beta``.

    ``T_k >= margin`` is ``alpha*B_k <= A_k + beta*C_k - margin``.

    ``B_k > 0`` gives an upper bound ``(A_k + beta*C_k - margin) / B_k``, ``B_k < 0`` a lower bound, and
    ``B_k == 0`` either no constraint or (if ``A_k + beta*C_k < margin``) an empty set.
    """
    a, b, c = _abc(A, B, C)
    r = a + beta * c - margin
    pos, neg, zero = b > 0, b < 0, b == 0
    hi = float(np.min(r[pos] / b[pos])) if pos.any() else math.inf
    lo = float(np.max(r[neg] / b[neg])) if neg.any() else -math.inf
    if zero.any() and float(np.min(r[zero])) < 0:
        lo, hi = math.inf, -math.inf
    return AlphaInterval(beta=float(beta), lo=lo, hi=hi)


def smallest_feasible_alpha(A: Any, B: Any, C: Any, beta_grid: Any, margin: float = 0.0) -> np.ndarray:
    """For each beta in ``beta_grid``, the infimum of feasible alphas (NaN where none), in closed form."""
    return np.array([alpha_interval(A, B, C, float(be), margin).smallest for be in np.asarray(beta_grid)])


def pl_constants(grad_sq: Any, C: Any, eps: float = 1e-12) -> np.ndarray:
    """Per-step PL-style constant ``mu_k = ||grad f_k(x_k)||^2 / (2 * C_k)`` (NaN where ``C_k <= eps``).

    This is the largest ``mu`` with ``||grad f_k||^2 >= 2 mu (f_k - f_lb)`` at the visited point: the
    Polyak-Lojasiewicz inequality checked per mini-batch along the trajectory, with the loss's lower bound
    in place of the (unknown) mini-batch minimum, so it is a conservative estimate.
    """
    g = np.asarray(grad_sq, dtype=np.float64).reshape(-1)
    c = np.asarray(C, dtype=np.float64).reshape(-1)
    out = np.full_like(g, np.nan)
    ok = c > eps
    out[ok] = g[ok] / (2 * c[ok])
    return out


def _stat(values: np.ndarray, fn: Callable[[np.ndarray], Any]) -> float | None:
    v = values[np.isfinite(values)]
    return float(fn(v)) if v.size else None


def default_grid(alpha_max: float = 50.0, n: int = 201) -> np.ndarray:
    """Default alpha/beta grid ``linspace(0, alpha_max, n)``."""
    return np.linspace(0.0, alpha_max, n)


def summarize(log: LandscapeLog, alphas: Any, betas: Any, margin: float = 0.0) -> dict[str, Any]:
    """JSON-able summary: feasible-region size, smallest feasible alpha, PL constant, aiming cosine."""
    region = feasible_region(log.A, log.B, log.C, alphas, betas, margin)
    betas_pos = np.asarray(betas, dtype=np.float64)
    betas_pos = betas_pos[betas_pos > 0]
    small = smallest_feasible_alpha(log.A, log.B, log.C, betas_pos, margin)
    best: dict[str, float] | None = None
    if np.isfinite(small).any():
        j = int(np.nanargmin(small))
        best = {"alpha": float(small[j]), "beta": float(betas_pos[j])}
    mu = pl_constants(log.grad_sq, log.C)
    cells = np.asarray(alphas).reshape(-1, 1) > np.asarray(betas).reshape(1, -1)
    cells &= np.asarray(betas).reshape(1, -1) > 0
    return {
        "steps": len(log),
        "margin": margin,
        "grid": {
            "alpha": [float(np.min(alphas)), float(np.max(alphas)), len(np.asarray(alphas))],
            "beta": [float(np.min(betas)), float(np.max(betas)), len(np.asarray(betas))],
        },
        "feasible_cells": int(region.sum()),
        "feasible_fraction": float(region.sum() / max(int(cells.sum()), 1)),
        "smallest_feasible_alpha": best,
        "holds_alpha1_beta0": bool(np.all(t_values(log.A, log.B, log.C, 1.0, 0.0) >= margin)),
        "pl_mu_min": _stat(mu, np.min),
        "pl_mu_median": _stat(mu, np.median),
        "cos_min": _stat(log.cos, np.min),
        "cos_median": _stat(log.cos, np.median),
    }


# -- plotting ---------------------------------------------------------------------------------------


def plot_landscape(
    logs: dict[str, LandscapeLog],
    path: str | os.PathLike[str],
    alphas: Any | None = None,
    betas: Any | None = None,
    note: str | None = None,
) -> Path:
    """One PNG: per run, the min-T heatmap with the feasible region outlined; then the aiming cosines.
    ``note`` (e.g. which D was frozen) goes under the panels.

    Written atomically (temp file in the same folder, then renamed).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import SymLogNorm

    alphas = default_grid() if alphas is None else np.asarray(alphas, dtype=np.float64)
    betas = default_grid() if betas is None else np.asarray(betas, dtype=np.float64)
    n = len(logs)
    fig, axes = plt.subplots(1, n + 1, figsize=(4.2 * (n + 1), 3.8), squeeze=False)
    for ax, (name, log) in zip(axes[0], logs.items(), strict=False):
        grid = min_T_grid(log.A, log.B, log.C, alphas, betas)
        scale = float(np.nanmax(np.abs(grid))) or 1.0
        norm = SymLogNorm(linthresh=max(scale * 1e-3, 1e-12), vmin=-scale, vmax=scale)
        extent = (alphas[0], alphas[-1], betas[0], betas[-1])
        im = ax.imshow(grid.T, origin="lower", extent=extent, aspect="auto", cmap="coolwarm_r", norm=norm)
        region = feasible_region(log.A, log.B, log.C, alphas, betas)
        if region.any() and not region.all():
            ax.contour(alphas, betas, region.T.astype(float), levels=[0.5], colors="k", linewidths=1)
        lim = min(alphas[-1], betas[-1])
        ax.plot([max(alphas[0], betas[0]), lim], [max(alphas[0], betas[0]), lim], "k--", lw=0.8)
        ax.set_title(f"{name}: min_k T_k ({int(region.sum())} feasible cells)", fontsize=9)
        ax.set_xlabel("alpha")
        ax.set_ylabel("beta")
        fig.colorbar(im, ax=ax, fraction=0.046)
    ax = axes[0][n]
    for name, log in logs.items():
        ax.plot(np.arange(len(log)), log.cos, marker=".", label=name)
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xlabel("step")
    ax.set_ylabel("cos(grad f_k, x_k - x_K)")
    ax.set_title("aiming cosine", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    if note:
        fig.subplots_adjust(bottom=0.2)
        fig.text(0.01, 0.01, note, fontsize=7, ha="left", va="bottom", wrap=True)
    out = Path(path)
    try:
        with atomic_open(out, "wb") as fh:
            fig.savefig(fh, format="png", dpi=100)
    finally:
        plt.close(fig)
    return out


# -- GAN replay -------------------------------------------------------------------------------------


def loss_lower_bound(loss: Any) -> float:
    """Per-sample lower bound of ``loss.generator``: ``k`` for rooted without ``subtract_k`` (times the
    loss's constant ``scale``), else 0 (:meth:`rootedgan.training.losses.AdversarialLoss.lower_bound`)."""
    return float(loss.lower_bound())


def recorded_loss(meta: dict[str, Any]) -> AdversarialLoss | None:
    """The adversarial loss a snapshot was trained with, from its metadata (written by
    :meth:`~rootedgan.training.module.FinetuneModule.provenance`, any version), or None for a file without
    it (e.g. an NVIDIA pickle)."""
    label = meta.get("loss")
    if not isinstance(label, str) or not label:
        return None
    hparams = meta.get("hparams") if isinstance(meta.get("hparams"), dict) else {}
    return make_loss(migrate({"loss": label, **hparams})["loss"])


def frozen_d_note(d_path: str, snapshots: Sequence[str]) -> str:
    """One sentence: which snapshot's D the replay froze."""
    which = "the last snapshot" if str(d_path) == str(snapshots[-1]) else "a chosen snapshot"
    return (
        f"D is frozen at {which} ({d_path}) for every step: f_k is the generator objective against that "
        "one D, not the loss G saw while D was training."
    )


def _flat(module: torch.nn.Module) -> tuple[list[str], list[torch.Size], torch.Tensor]:
    names, shapes, parts = [], [], []
    for name, p in module.named_parameters():
        names.append(name)
        shapes.append(p.shape)
        parts.append(p.detach().reshape(-1).to(torch.float32))
    return names, shapes, torch.cat(parts)


def _unflatten(x: torch.Tensor, names: list[str], shapes: list[torch.Size]) -> dict[str, torch.Tensor]:
    out, i = {}, 0
    for name, shape in zip(names, shapes, strict=True):
        n = math.prod(shape)
        out[name] = x[i : i + n].reshape(shape)
        i += n
    return out


def _replay_loss(
    snapshots: Sequence[str | Path], loss: Any
) -> tuple[AdversarialLoss, str, AdversarialLoss | None]:
    """``(loss to replay, where it came from, loss recorded in the snapshots)``."""
    recorded = [recorded_loss(load_network(snap)["meta"]) for snap in (snapshots[0], snapshots[-1])]
    found = recorded[-1] or recorded[0]
    if recorded[0] and recorded[-1] and recorded[0].label != recorded[-1].label:
        raise UserError(
            f"the snapshots record different losses ({recorded[0].label} in {snapshots[0]}, "
            f"{recorded[-1].label} in {snapshots[-1]}): probe one run at a time, or pass --loss"
        )
    if loss is not None:
        return make_loss(loss), "given", found
    if found is None:
        raise UserError(
            f"{snapshots[-1]} records no training loss (not a rootedgan snapshot?): pass --loss, e.g. "
            "--loss logistic or --loss rooted:2"
        )
    return found, "recorded in the snapshots", found


def replay_generator_objective(
    snapshots: Sequence[str | os.PathLike[str]],
    d_snapshot: str | os.PathLike[str] | None = None,
    loss: str | None = None,
    seed: int = 0,
    batch: int = 16,
    steps_per_snapshot: int = 1,
    device: str | torch.device = "cpu",
    network: str = "G",
) -> LandscapeLog:
    """Replay the generator objective with D frozen along snapshots ``x_0 .. x_K`` (in order).

    ``f_j(x) = mean loss.generator(D(G_x(z_j, c_j, noise_mode='const')))`` with D from ``d_snapshot``
    (default: the last snapshot) and ``z_j`` from a generator seeded with ``derive_seed(seed, 0, j)``; step
    ``j = k * steps_per_snapshot + s`` evaluates snapshot k. ``network`` picks ``'G'`` or ``'G_ema'``.

    ``loss`` None (the default) takes the loss recorded in the snapshots (their metadata, with its
    ``subtract_k`` and ``max_grad``); a file without one needs ``loss``. A ``loss`` that differs from
    the recorded one is used as given and noted in ``meta["loss_recorded"]``.
    """
    if not snapshots:
        raise UserError("no snapshots to replay")
    if batch < 1 or steps_per_snapshot < 1:
        raise UserError("--batch and --steps-per-snapshot must be >= 1")
    device = torch.device(device)
    d_path = snapshots[-1] if d_snapshot is None else d_snapshot
    adv, source, found = _replay_loss(snapshots, loss)
    D = load_network(d_path, device=device)["D"]
    if D is None:
        raise UserError(f"{d_path} holds no discriminator; pass --d-snapshot with one that does")
    D.eval().requires_grad_(False)

    template: torch.nn.Module | None = None
    names: list[str] = []
    shapes: list[torch.Size] = []
    points: list[torch.Tensor] = []
    for snap in snapshots:
        G = load_network(snap, device=device)[network]
        if G is None:
            raise UserError(f"{snap} holds no {network}")
        n, s, x = _flat(G)
        if template is None:
            template, names, shapes = G, n, s
        elif n != names or s != shapes:
            raise UserError(f"{snap}: {network} has a different architecture from {snapshots[0]}")
        points.append(x)
    assert template is not None
    template.eval().requires_grad_(False)
    final = points[-1]
    z_dim, c_dim = template.z_dim, template.c_dim

    def objective_at(step: int) -> LossFn:
        gen = torch.Generator().manual_seed(derive_seed(seed, 0, step))
        z = torch.randn([batch, z_dim], generator=gen).to(device)
        if c_dim > 0:
            idx = torch.randint(0, c_dim, [batch], generator=gen)
            c = torch.nn.functional.one_hot(idx, c_dim).to(torch.float32).to(device)
        else:
            c = torch.zeros([batch, 0], device=device)

        def f(x: torch.Tensor) -> torch.Tensor:
            params = _unflatten(x, names, shapes)
            img = torch.func.functional_call(template, params, (z, c), {"noise_mode": "const"})
            return adv.generator(D(img, c)).mean()

        return f

    iterates, losses = [], []
    for k, x in enumerate(points):
        for s in range(steps_per_snapshot):
            iterates.append(x)
            losses.append(objective_at(k * steps_per_snapshot + s))
    meta = {
        "snapshots": [str(p) for p in snapshots],
        "d_snapshot": str(d_path),
        "d_frozen": frozen_d_note(str(d_path), [str(p) for p in snapshots]),
        "loss": adv.label,
        "loss_source": source,
        "loss_recorded": found.label if found else None,
        "f_lb": loss_lower_bound(adv),
        "seed": seed,
        "batch": batch,
        "steps_per_snapshot": steps_per_snapshot,
        "network": network,
        "num_params": int(final.numel()),
    }
    return probe_trajectory(iterates, final, losses, f_lb=loss_lower_bound(adv), meta=meta)


# -- `rootedgan landscape` ----------------------------------------------------------------------------


@dataclass
class LandscapeOptions:
    """What ``rootedgan landscape`` takes (its options, same names and defaults): the run (``snapshots``, a
    glob), optionally a second one (``compare``), and the probe's settings."""

    snapshots: str
    out: str | os.PathLike[str]
    d_snapshot: str | None = None
    loss: str | None = None
    compare: str | None = None
    compare_loss: str | None = None
    compare_d_snapshot: str | None = None
    batch: int = 16
    seed: int = 0
    steps_per_snapshot: int = 1
    network: str = "G"
    alpha_max: float = 50.0
    grid: int = 201
    device: str = "cpu"


def expand_snapshots(pattern: str) -> list[str]:
    """The snapshots a glob matches, sorted by name: at least two (a trajectory)."""
    paths = sorted(glob.glob(pattern))
    if not paths:
        raise UserError(f"no snapshots match {pattern!r}")
    if len(paths) < 2:
        raise UserError(f"{pattern!r} matches one snapshot; the probe needs a trajectory of at least two")
    return paths


def landscape_report(o: LandscapeOptions) -> tuple[dict[str, Any], Path, Path]:
    """Replay each run (:func:`replay_generator_objective`) and write ``landscape.json`` (per run: which D
    was frozen, where the loss came from, :func:`summarize` and the log) and ``landscape.png`` into
    ``o.out``; returns ``(the report, json path, png path)``."""
    if o.grid < 2 or o.alpha_max <= 0:
        raise UserError("--grid must be >= 2 and --alpha-max > 0")
    runs = [("run", expand_snapshots(o.snapshots), o.loss, o.d_snapshot)]
    if o.compare:
        runs.append(("compare", expand_snapshots(o.compare), o.compare_loss, o.compare_d_snapshot))
    grid = default_grid(o.alpha_max, o.grid)
    logs: dict[str, LandscapeLog] = {}
    report: dict[str, Any] = {"runs": {}}
    for role, paths, loss, d_snap in runs:
        log = replay_generator_objective(
            paths, d_snap, loss, o.seed, o.batch, o.steps_per_snapshot, o.device, o.network
        )
        name = f"{role} ({log.meta['loss']})"
        logs[name] = log
        report["runs"][name] = {
            "d_frozen": log.meta["d_frozen"],
            "loss_source": log.meta["loss_source"],
            "summary": summarize(log, grid, grid),
            "log": log.to_dict(),
        }
    out = Path(o.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create output folder {out}: {err}") from None
    notes = {f"{name}: {log.meta['d_frozen'].split(' for every step')[0]}" for name, log in logs.items()}
    report["d_frozen"] = note = (
        "; ".join(sorted(notes)) + ". f_k is the generator objective against that frozen D."
    )
    json_path = _atomic_write_text(out / "landscape.json", json.dumps(report, indent=1, allow_nan=False))
    return report, json_path, plot_landscape(logs, out / "landscape.png", grid, grid, note=note)
