"""Landscape probe: the alpha-beta condition of arXiv 2410.12455 along a training trajectory (the README's
"Loss-landscape probe" defines A, B, C and T). T is linear in ``(alpha, beta)``, so the feasible region, a
min-T heatmap and the smallest feasible alpha are computed offline from A, B, C.

GAN replay: D moves during training, so ``f_k(x_K)`` would be ill-defined; D is frozen at one snapshot and
the same function is evaluated at ``x_k`` and ``x_K``. The iterates are the saved snapshots, not every
optimizer step (a generator is tens of MB per copy; the condition is about any points against the end
point, so a sub-sampled trajectory is a valid, coarser probe).
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
from rootedgan.imaging import ensure_writable_dir
from rootedgan.sampling import derive_seed
from rootedgan.training.losses import AdversarialLoss, make_loss
from rootedgan.training.settings import migrate

LossFn = Callable[[torch.Tensor], torch.Tensor]
_FIELDS = ("A", "B", "C", "cos", "grad_sq")  # the per-step arrays of a LandscapeLog


def _vec(values: Any) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).reshape(-1)


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
        for name in _FIELDS:
            setattr(self, name, _vec(getattr(self, name)))
        if any(len(getattr(self, k)) != len(self.A) for k in _FIELDS):
            raise ValueError("A, B, C, cos and grad_sq must have the same length")

    def __len__(self) -> int:
        return len(self.A)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict; NaN/inf become ``None`` (strict JSON has no NaN)."""
        arrays = {k: [v if math.isfinite(v) else None for v in getattr(self, k).tolist()] for k in _FIELDS}
        return {**arrays, "meta": self.meta}

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the log as JSON (atomically)."""
        return _atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=1, allow_nan=False))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> LandscapeLog:
        """Read a log written by :meth:`save` (``None`` reads back as NaN)."""
        data = json.loads(Path(path).read_text())
        return cls(*([np.nan if v is None else v for v in data[k]] for k in _FIELDS), data.get("meta", {}))


def _atomic_write_text(path: Path, text: str) -> Path:
    with atomic_open(path, "w") as f:
        f.write(text)
    return path


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
    f_lb: float = 0.0,
    meta: dict[str, Any] | None = None,
) -> LandscapeLog:
    """Log A, B, C, cos per step for flat parameter vectors ``iterates[k]`` with the deterministic loss
    ``losses[k]`` (evaluated at ``iterates[k]`` and at ``final``); ``f_lb``: a lower bound of every loss."""
    if len(iterates) != len(losses):
        raise ValueError(f"{len(iterates)} iterates but {len(losses)} losses")
    rows = [probe_step(x, final, fn, float(f_lb)) for x, fn in zip(iterates, losses, strict=True)]
    return LandscapeLog(*(np.array([r[k] for r in rows]) for k in _FIELDS), meta=dict(meta or {}))


def t_values(A: Any, B: Any, C: Any, alpha: float, beta: float) -> np.ndarray:
    """``T_k = A_k - alpha*B_k + beta*C_k`` for one ``(alpha, beta)``."""
    a, b, c = map(_vec, (A, B, C))
    return a - alpha * b + beta * c


def min_T_grid(A: Any, B: Any, C: Any, alphas: Any, betas: Any) -> np.ndarray:
    """``min_k T_k`` on a grid: ``[len(alphas), len(betas)]``, ``[i, j]`` at ``(alphas[i], betas[j])``."""
    a, b, c = map(_vec, (A, B, C))
    al, be = _vec(alphas), _vec(betas)[:, None]
    out = np.empty((len(al), len(be)))
    for i, alpha in enumerate(al):  # one row at a time keeps memory at O(len(betas) * K)
        out[i] = np.min(a - alpha * b + be * c, axis=1)
    return out


def _cone(alphas: Any, betas: Any) -> np.ndarray:
    """Boolean ``[len(alphas), len(betas)]``: ``alpha > beta > 0``."""
    al, be = _vec(alphas)[:, None], _vec(betas)[None, :]
    return (al > be) & (be > 0)


def feasible_region(A: Any, B: Any, C: Any, alphas: Any, betas: Any, margin: float = 0.0) -> np.ndarray:
    """Boolean ``[len(alphas), len(betas)]``: ``alpha > beta > 0`` and ``min_k T_k >= margin``."""
    return _cone(alphas, betas) & (min_T_grid(A, B, C, alphas, betas) >= margin)


@dataclass(frozen=True)
class AlphaInterval:
    """Alphas with ``min_k T_k >= margin`` for a fixed beta: ``[lo, hi]`` (may be empty or unbounded); the
    condition also needs ``alpha > beta > 0`` (:meth:`contains`)."""

    beta: float
    lo: float
    hi: float

    def contains(self, alpha: float) -> bool:
        """``alpha`` is feasible: in ``[lo, hi]`` and ``alpha > beta > 0``."""
        return self.beta > 0 and alpha > self.beta and self.lo <= alpha <= self.hi

    @property
    def smallest(self) -> float:
        """Infimum of the feasible alphas (NaN if none). Equals beta when the bound is the open one."""
        if self.beta <= 0 or self.lo > self.hi or self.hi <= self.beta:
            return math.nan
        return max(self.lo, self.beta)


def alpha_interval(A: Any, B: Any, C: Any, beta: float, margin: float = 0.0) -> AlphaInterval:
    """Feasible alphas for a fixed ``beta``: ``T_k >= margin`` is ``alpha*B_k <= A_k + beta*C_k - margin``:
    an upper bound where ``B_k > 0``, a lower one where ``B_k < 0``, all or none where ``B_k == 0``."""
    a, b, c = map(_vec, (A, B, C))
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
    """Per-step PL-style constant ``mu_k = ||grad f_k(x_k)||^2 / (2 * C_k)`` (NaN where ``C_k <= eps``): the
    largest ``mu`` of the Polyak-Lojasiewicz inequality at the visited point, with the loss's lower bound in
    place of the unknown mini-batch minimum (a conservative estimate)."""
    g, c = _vec(grad_sq), _vec(C)
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
    betas_pos = _vec(betas)[_vec(betas) > 0]
    small = smallest_feasible_alpha(log.A, log.B, log.C, betas_pos, margin)
    best: dict[str, float] | None = None
    if np.isfinite(small).any():
        j = int(np.nanargmin(small))
        best = {"alpha": float(small[j]), "beta": float(betas_pos[j])}
    mu = pl_constants(log.grad_sq, log.C)
    return {
        "steps": len(log),
        "margin": margin,
        "grid": {
            "alpha": [float(np.min(alphas)), float(np.max(alphas)), len(np.asarray(alphas))],
            "beta": [float(np.min(betas)), float(np.max(betas)), len(np.asarray(betas))],
        },
        "feasible_cells": int(region.sum()),
        "feasible_fraction": float(region.sum() / max(int(_cone(alphas, betas).sum()), 1)),
        "smallest_feasible_alpha": best,
        "holds_alpha1_beta0": bool(np.all(t_values(log.A, log.B, log.C, 1.0, 0.0) >= margin)),
        "pl_mu_min": _stat(mu, np.min),
        "pl_mu_median": _stat(mu, np.median),
        "cos_min": _stat(log.cos, np.min),
        "cos_median": _stat(log.cos, np.median),
    }


def plot_landscape(
    logs: dict[str, LandscapeLog],
    path: str | os.PathLike[str],
    alphas: Any | None = None,
    betas: Any | None = None,
    note: str | None = None,
) -> Path:
    """One PNG, written atomically: per run, the min-T heatmap with the feasible region outlined; then the
    aiming cosines; ``note`` (e.g. which D was frozen) under the panels."""
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
        ax.set(xlabel="alpha", ylabel="beta")
        fig.colorbar(im, ax=ax, fraction=0.046)
    ax = axes[0][n]
    for name, log in logs.items():
        ax.plot(np.arange(len(log)), log.cos, marker=".", label=name)
    ax.axhline(0, color="k", lw=0.6)
    ax.set(xlabel="step", ylabel="cos(grad f_k, x_k - x_K)")
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


def recorded_loss(meta: dict[str, Any]) -> AdversarialLoss | None:
    """The adversarial loss a snapshot was trained with, from its metadata (``FinetuneModule.provenance``,
    any version), or None for a file without it (e.g. an NVIDIA pickle)."""
    label = meta.get("loss")
    if not isinstance(label, str) or not label:
        return None
    hparams = meta.get("hparams") if isinstance(meta.get("hparams"), dict) else {}
    return make_loss(migrate({"loss": label, **hparams})["loss"])


def _flat(module: torch.nn.Module) -> tuple[list[str], list[torch.Size], torch.Tensor]:
    named = list(module.named_parameters())
    flat = torch.cat([p.detach().reshape(-1).to(torch.float32) for _, p in named])
    return [name for name, _ in named], [p.shape for _, p in named], flat


def _unflatten(x: torch.Tensor, names: list[str], shapes: list[torch.Size]) -> dict[str, torch.Tensor]:
    parts = x.split([math.prod(shape) for shape in shapes])
    return {name: part.reshape(shape) for name, part, shape in zip(names, parts, shapes, strict=True)}


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


def _trajectory(
    snapshots: Sequence[str | os.PathLike[str]], network: str, device: torch.device
) -> tuple[torch.nn.Module, list[str], list[torch.Size], list[torch.Tensor]]:
    """``(G of the first snapshot, parameter names, shapes, flat parameters of every snapshot)``."""
    points: list[torch.Tensor] = []
    for snap in snapshots:
        G = load_network(snap, device=device)[network]
        if G is None:
            raise UserError(f"{snap} holds no {network}")
        n, s, x = _flat(G)
        if not points:
            template, names, shapes = G, n, s
        elif n != names or s != shapes:
            raise UserError(f"{snap}: {network} has a different architecture from {snapshots[0]}")
        points.append(x)
    return template.eval().requires_grad_(False), names, shapes, points


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
    (default: the last snapshot) and ``z_j`` seeded with ``derive_seed(seed, 0, j)``; step
    ``j = k * steps_per_snapshot + s`` evaluates snapshot k of ``network`` (``'G'`` or ``'G_ema'``).
    ``loss`` None takes the loss recorded in the snapshots' metadata (a file without one needs ``loss``);
    a given one that differs is used and the recorded one noted in ``meta["loss_recorded"]``.
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
    G, names, shapes, points = _trajectory(snapshots, network, device)

    def objective_at(step: int) -> LossFn:
        gen = torch.Generator().manual_seed(derive_seed(seed, 0, step))
        z = torch.randn([batch, G.z_dim], generator=gen).to(device)
        c = torch.zeros([batch, 0], device=device)
        if G.c_dim > 0:
            idx = torch.randint(0, G.c_dim, [batch], generator=gen)
            c = torch.nn.functional.one_hot(idx, G.c_dim).to(torch.float32).to(device)

        def f(x: torch.Tensor) -> torch.Tensor:
            img = torch.func.functional_call(G, _unflatten(x, names, shapes), (z, c), {"noise_mode": "const"})
            return adv.generator(D(img, c)).mean()

        return f

    iterates = [x for x in points for _ in range(steps_per_snapshot)]
    losses = [objective_at(j) for j in range(len(iterates))]
    f_lb = float(adv.lower_bound())  # k for rooted without subtract_k (times its scale), else 0
    which = "the last snapshot" if str(d_path) == str(snapshots[-1]) else "a chosen snapshot"
    meta = {
        "snapshots": [str(p) for p in snapshots],
        "d_snapshot": str(d_path),
        "d_frozen": f"D is frozen at {which} ({d_path}) for every step: f_k is the generator objective "
        "against that one D, not the loss G saw while D was training.",
        "loss": adv.label,
        "loss_source": source,
        "loss_recorded": found.label if found else None,
        "f_lb": f_lb,
        "seed": seed,
        "batch": batch,
        "steps_per_snapshot": steps_per_snapshot,
        "network": network,
        "num_params": int(points[-1].numel()),
    }
    return probe_trajectory(iterates, points[-1], losses, f_lb=f_lb, meta=meta)


@dataclass
class LandscapeOptions:
    """The options of ``rootedgan landscape`` (same names and defaults)."""

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
    out = ensure_writable_dir(o.out)
    notes = {f"{name}: {log.meta['d_frozen'].split(' for every step')[0]}" for name, log in logs.items()}
    report["d_frozen"] = note = (
        "; ".join(sorted(notes)) + ". f_k is the generator objective against that frozen D."
    )
    json_path = _atomic_write_text(out / "landscape.json", json.dumps(report, indent=1, allow_nan=False))
    return report, json_path, plot_landscape(logs, out / "landscape.png", grid, grid, note=note)
