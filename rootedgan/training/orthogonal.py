"""Orthogonal finetuning (OFT, with OPT's parameterizations) of StyleGAN2: README "Orthogonal finetuning".

Convention: a weight ``W0`` is viewed as ``[out, fan_in]`` (``fan_in = in * kh * kw`` in ``(in, kh, kw)``
order) and finetuned as ``W = W0 @ R^T`` (every filter ``w_j -> m_j R w_j``), with one block-diagonal
orthogonal ``R`` per layer and optional magnitudes ``m`` (not on demodulated layers, which divide them
out). Weights are rotated, never input patches. Every parameterization starts at ``R = I`` exactly.

Neumann: ``R = (I - Q) sum_{i<=n} (-Q)^i = C (I - E)`` (``C`` exact Cayley, ``E = (-Q)^(n+1)``), so
``R^T R - I = -(E + E^T) + E^T E`` is ``O(|Q|^(n+1))`` for odd ``n`` but ``O(|Q|^(2(n+1)))`` for even ``n``
(``E^T = -E``): use even ``n`` (``bench/neumann_terms.py``).

COFT (``eps``) rescales the layer's whole block-diagonal free matrix (``Q``, or ``P``; a shared block
counted once per repetition) to ``||Q||_F <= eps`` after each step (Cayley: ``||R - I||_F <= 2 eps``).
OFT's reference code and peft's COFT cap every block at ``eps / sqrt(blocks)`` instead: the same bound
on the layer, but here one block may use all of it.
"""

from __future__ import annotations

import copy
import fnmatch
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn.utils import parametrize

from rootedgan.errors import SettingError, UserError
from rootedgan.networks.generator import SynthesisLayer
from rootedgan.training.settings import Section, check_choice, check_number

PARAMETERIZATIONS = ("cayley", "neumann", "gram_schmidt")
DEFAULT_LAYERS = ("synthesis.*.conv0", "synthesis.*.conv1")
GRAM_SCHMIDT_MAX_BLOCK = 64
HE_LOG_S = 1.0  # the power s of the hyperspherical energy that training logs (mean variant)
MAX_PATTERNS = 64
MAX_BLOCK = 4096
MAX_NEUMANN_TERMS = 32  # each term is one more matrix product per forward pass
MAX_PATTERN_CHARS = 256
MAX_REGEX_REPEATS = 3


@dataclass
class OrthogonalConfig(Section):
    """Settings of orthogonal finetuning (``model.orthogonal``; README "Orthogonal finetuning (OFT)").

    Attributes:
        layers: G's modules to rotate: ``fnmatch`` patterns (``*`` also matches dots) or ``re:REGEX`` over
            names like ``synthesis.b64.conv0``, ``synthesis.b64.torgb``, ``mapping.fc0``; each must match.
        block_size: size of the diagonal blocks of R; must divide every selected layer's fan-in.
        shared: one block per layer, repeated along the diagonal (fewer parameters).
        parameterization: ``cayley`` (exact), ``neumann`` (truncated series) or ``gram_schmidt`` (OPT).
        neumann_terms: highest power ``n`` of ``-Q`` in the Neumann series; even: error ``O(|Q|^(2n+2))``.
        eps: COFT radius of each layer's whole ``||Q||_F`` after every G step (None: unconstrained).
        magnitude: learn a per-filter magnitude (layers without demodulation only).
        train_extra: patterns over G's parameter names that also train (e.g. ``*.bias``).
        log_every: refresh the logged per-layer statistics every this many steps.
    """

    layers: list[str] = field(default_factory=lambda: list(DEFAULT_LAYERS))
    block_size: int = 32
    shared: bool = False
    parameterization: str = "cayley"
    neumann_terms: int = 4
    eps: float | None = None
    magnitude: bool = False
    train_extra: list[str] = field(default_factory=list)
    log_every: int = 50

    where: ClassVar[str] = "model.orthogonal"

    def __post_init__(self) -> None:
        where = self.where
        for name in ("layers", "train_extra"):
            patterns = getattr(self, name)
            patterns = [patterns] if isinstance(patterns, str) else patterns
            if not isinstance(patterns, (list, tuple)) or len(patterns) > MAX_PATTERNS:
                raise SettingError(f"{where}.{name} must be a list of at most {MAX_PATTERNS} patterns")
            for pattern in patterns:
                check_pattern(pattern, f"{where}.{name}")
            setattr(self, name, list(patterns))
        if not self.layers:
            raise SettingError(f"{where}.layers is empty: name at least one layer pattern")
        check_choice(f"{where}.parameterization", self.parameterization, PARAMETERIZATIONS)
        check_number(f"{where}.block_size", self.block_size, 2, MAX_BLOCK, integer=True)
        if self.parameterization == "gram_schmidt" and self.block_size > GRAM_SCHMIDT_MAX_BLOCK:
            raise SettingError(
                f"{where}.parameterization gram_schmidt unrolls a loop of block_size steps per forward pass; "
                f"use block_size <= {GRAM_SCHMIDT_MAX_BLOCK} (got {self.block_size}) or cayley"
            )
        check_number(f"{where}.neumann_terms", self.neumann_terms, 1, MAX_NEUMANN_TERMS, integer=True)
        check_number(f"{where}.eps", self.eps, 0, open_low=True, optional=True)
        check_number(f"{where}.log_every", self.log_every, 1, integer=True)
        for name in ("shared", "magnitude"):
            if not isinstance(getattr(self, name), bool):
                raise SettingError(f"{where}.{name} must be true or false, got {getattr(self, name)!r}")


def check_pattern(pattern: Any, where: str) -> None:
    """Accept only patterns that match in bounded time (one read from a file cannot hang): at most 256
    characters; with ``re:``, no backreferences, nested repeats, alternatives under a repeat, 4+ repeats."""
    if not isinstance(pattern, str) or not 0 < len(pattern) <= MAX_PATTERN_CHARS:
        raise SettingError(f"{where}: a pattern must be a string of 1 to {MAX_PATTERN_CHARS} characters")
    if not pattern.startswith("re:"):
        return
    try:
        tree = re._parser.parse(pattern[3:])
    except re.error as err:
        raise SettingError(f"{where}: {pattern!r} is not a regular expression ({err})") from None
    repeats = 0

    def walk(items: Any, in_repeat: bool) -> None:
        nonlocal repeats
        for op, arg in items:
            kind = str(op)
            if kind.startswith("GROUPREF"):
                raise SettingError(f"{where}: {pattern!r}: backreferences are not allowed")
            repeat = kind.endswith("_REPEAT")
            repeats += repeat
            if (in_repeat and (repeat or kind == "BRANCH")) or repeats > MAX_REGEX_REPEATS:
                raise SettingError(
                    f"{where}: {pattern!r} can take exponential time (nested repeats, alternatives under "
                    f"a repeat or more than {MAX_REGEX_REPEATS} repeats): simplify it or use fnmatch"
                )
            if repeat:
                walk(arg[2], True)
            elif kind == "SUBPATTERN":
                walk(arg[-1], in_repeat)
            elif kind == "BRANCH":
                for branch in arg[1]:
                    walk(branch, in_repeat)

    walk(tree, False)


def skew_from_triu(q: torch.Tensor, size: int) -> torch.Tensor:
    """``q [n, size*(size-1)/2]`` (strict upper triangle, row-major) -> skew-symmetric ``[n, size, size]``."""
    rows, cols = torch.triu_indices(size, size, 1, device=q.device)
    upper = q.new_zeros(q.shape[0], size, size)
    upper[:, rows, cols] = q
    return upper - upper.transpose(1, 2)


def cayley(q_skew: torch.Tensor) -> torch.Tensor:
    """Exact Cayley transform ``(I - Q)(I + Q)^-1 = (I + Q)^-1 (I - Q)`` of skew ``[..., b, b]``."""
    eye = torch.eye(q_skew.shape[-1], dtype=q_skew.dtype, device=q_skew.device)
    return torch.linalg.solve(eye + q_skew, eye - q_skew)


def cayley_neumann(q_skew: torch.Tensor, terms: int) -> torch.Tensor:
    """``(I - Q) sum_{i=0..terms} (-Q)^i``: the Cayley transform with a truncated Neumann series."""
    eye = torch.eye(q_skew.shape[-1], dtype=q_skew.dtype, device=q_skew.device)
    power = eye.expand_as(q_skew)
    series = power
    for _ in range(terms):
        power = power @ -q_skew
        series = series + power
    return (eye - q_skew) @ series


def gram_schmidt(v: torch.Tensor) -> torch.Tensor:
    """Orthonormalize the (linearly independent) columns of ``v [..., b, b]`` in order: unrolled classical
    Gram-Schmidt, twice per column; the ``Q`` of a QR decomposition with a positive diagonal in ``R``."""
    columns: list[torch.Tensor] = []
    for j in range(v.shape[-1]):
        x = v[..., :, j]
        if columns:
            basis = torch.stack(columns, dim=-1)  # [..., b, j]
            for _ in range(2):
                x = x - (basis @ (basis.transpose(-1, -2) @ x.unsqueeze(-1))).squeeze(-1)
        columns.append(x / x.norm(dim=-1, keepdim=True).clamp_min(1e-30))
    return torch.stack(columns, dim=-1)


class OrthogonalRotation(nn.Module):
    """Parametrization of one weight: ``W0 [out, ...] -> (W0.view(out, fan_in) @ R^T) * m``. Parameters:
    ``q [blocks, b*(b-1)/2]`` (strict upper triangle of a skew ``Q``; cayley, neumann) or ``[blocks, b, b]``
    (``P`` of ``R = GS(I + P)``; gram_schmidt), ``blocks`` = 1 when shared; optionally ``magnitude [out]``."""

    def __init__(
        self,
        weight_shape: Iterable[int],
        block_size: int,
        shared: bool = False,
        parameterization: str = "cayley",
        neumann_terms: int = 4,
        magnitude: bool = False,
    ) -> None:
        super().__init__()
        shape = tuple(int(s) for s in weight_shape)
        self.out_features, self.fan_in = shape[0], math.prod(shape[1:])
        if self.fan_in % block_size:
            raise ValueError(f"block size {block_size} does not divide the fan-in {self.fan_in}")
        if parameterization not in PARAMETERIZATIONS:
            raise ValueError(f"unknown parameterization {parameterization!r}")
        self.block_size, self.num_blocks, self.shared = block_size, self.fan_in // block_size, shared
        self.parameterization, self.neumann_terms = parameterization, neumann_terms
        self.multiplicity = self.num_blocks if shared else 1  # how often each stored block is on R's diagonal
        b, stored = block_size, 1 if shared else self.num_blocks
        free = (b, b) if parameterization == "gram_schmidt" else (b * (b - 1) // 2,)
        self.q = nn.Parameter(torch.zeros(stored, *free))
        self.magnitude = nn.Parameter(torch.ones(self.out_features)) if magnitude else None
        self.param_order: list[str] = []  # the host module's parameter names before it was parametrized

    def generator_matrix(self) -> torch.Tensor:
        """Blocks of the free matrix, ``[n, b, b]``: skew ``Q`` (cayley/neumann) or ``P`` (gram_schmidt)."""
        if self.parameterization == "gram_schmidt":
            return self.q
        return skew_from_triu(self.q, self.block_size)

    def blocks(self) -> torch.Tensor:
        """The stored diagonal blocks of R, ``[n, b, b]`` (n = 1 when shared), in ``q``'s dtype."""
        gen = self.generator_matrix()
        if self.parameterization == "cayley":
            return cayley(gen)
        if self.parameterization == "neumann":
            return cayley_neumann(gen, self.neumann_terms)
        return gram_schmidt(torch.eye(self.block_size, dtype=gen.dtype, device=gen.device) + gen)

    def matrix(self) -> torch.Tensor:
        """The whole block-diagonal ``R [fan_in, fan_in]`` (dense; for tests and inspection)."""
        return torch.block_diag(*self.blocks().expand(self.num_blocks, -1, -1).unbind(0))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        # fp32 math even under autocast: R must stay orthogonal, and the result feeds the modulation.
        with torch.autocast(device_type=weight.device.type, enabled=False):
            rot = self.blocks()
            w = weight.reshape(self.out_features, self.num_blocks, self.block_size).to(rot.dtype)
            if self.shared:
                out = w @ rot[0].transpose(0, 1)
            else:  # out[o, n, i] = sum_j R[n, i, j] w[o, n, j]
                out = torch.einsum("onj,nij->oni", w, rot)
            if self.magnitude is not None:
                out = out * self.magnitude.to(out.dtype)[:, None, None]
        return out.reshape(weight.shape).to(weight.dtype)

    @torch.no_grad()
    def free_norm(self) -> torch.Tensor:
        """``||Q||_F`` of the layer's whole block-diagonal free matrix (``P`` for gram_schmidt)."""
        return (self.generator_matrix().double().square().sum() * self.multiplicity).sqrt()

    @torch.no_grad()
    def project_(self, eps: float) -> None:
        """COFT projection: rescale ``q`` so that :meth:`free_norm` ``<= eps`` (no host sync)."""
        self.q.mul_((eps / self.free_norm()).clamp(max=1.0).to(self.q.dtype))

    @torch.no_grad()
    def errors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(||R^T R - I||_F, ||R - I||_F)`` of the whole block-diagonal R (float64 scalars)."""
        rot = self.blocks().double()
        eye = torch.eye(self.block_size, dtype=rot.dtype, device=rot.device)
        orth = (rot.transpose(1, 2) @ rot - eye).square().sum() * self.multiplicity
        dist = (rot - eye).square().sum() * self.multiplicity
        return orth.sqrt(), dist.sqrt()

    def extra_repr(self) -> str:
        blocks = f"{self.num_blocks}x{self.block_size}" + (", shared" if self.shared else "")
        return f"{self.parameterization}, fan_in={self.fan_in}, blocks={blocks}"


def _matches(name: str, pattern: str) -> bool:
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return fnmatch.fnmatchcase(name, pattern)


def select_layers(net: nn.Module, patterns: Iterable[str]) -> list[str]:
    """Names of the modules with a plain (not yet parametrized) ``weight`` parameter of 2+ dimensions that
    any pattern matches, in module order. Every pattern must match."""
    candidates = []
    for name, module in net.named_modules():
        if isinstance(weight := module._parameters.get("weight"), nn.Parameter) and weight.ndim >= 2:
            candidates.append(name)
    chosen = set()
    for pattern in patterns:
        hits = [name for name in candidates if _matches(name, pattern)]
        if not hits:
            parametrized = [n for n, m in net.named_modules() if parametrize.is_parametrized(m, "weight")]
            hint = " (those layers are already orthogonal)" if parametrized else ""
            raise UserError(
                f"model.orthogonal.layers: the pattern {pattern!r} matches no weight layer of the generator"
                f"{hint}. Layer names look like: {', '.join(candidates[:6])} ... (fnmatch patterns, or "
                "re:REGEX)"
            )
        chosen.update(hits)
    return [name for name in candidates if name in chosen]


def apply_orthogonal(net: nn.Module, cfg: OrthogonalConfig) -> list[str]:
    """Register an :class:`OrthogonalRotation` on the ``weight`` of every selected layer of ``net``
    (in place; ``R = I`` so outputs are unchanged). Returns the layer names."""
    cfg = OrthogonalConfig.from_any(cfg)
    layers = select_layers(net, cfg.layers)
    modules = dict(net.named_modules())
    for name in layers:
        module = modules[name]
        shape = tuple(module.weight.shape)
        fan_in = math.prod(shape[1:])
        if fan_in % cfg.block_size:
            divisors = [d for d in range(2, min(fan_in, 128) + 1) if fan_in % d == 0]
            raise UserError(
                f"model.orthogonal.block_size={cfg.block_size} does not divide the fan-in {fan_in} "
                f"(in*kh*kw of weight {list(shape)}) of layer {name}. Choose a block size dividing every "
                f"selected layer's fan-in (for this layer: {divisors}) or leave the layer out."
            )
        magnitude = cfg.magnitude and not isinstance(module, SynthesisLayer)  # demodulated: no magnitude
        rotation = OrthogonalRotation(
            shape, cfg.block_size, cfg.shared, cfg.parameterization, cfg.neumann_terms, magnitude
        ).to(device=module.weight.device)
        rotation.param_order = list(module._parameters)
        parametrize.register_parametrization(module, "weight", rotation)
    return layers


def rotations(net: nn.Module) -> dict[str, OrthogonalRotation]:
    """``layer name -> OrthogonalRotation`` of a network prepared by :func:`apply_orthogonal`."""
    out = {}
    for name, module in net.named_modules():
        if parametrize.is_parametrized(module, "weight"):
            for p in module.parametrizations["weight"]:
                if isinstance(p, OrthogonalRotation):
                    out[name] = p
    return out


def trainable_names(net: nn.Module, cfg: OrthogonalConfig) -> list[str]:
    """Parameter names that train in orthogonal mode: rotations, magnitudes, and ``cfg.train_extra``."""
    names, hit = [], set()
    for name, _ in net.named_parameters():
        if name.endswith(".original"):
            continue  # the frozen base weight of a rotated layer
        if ".parametrizations.weight." in name:
            names.append(name)
        elif extra := [p for p in cfg.train_extra if _matches(name, p)]:
            hit.add(extra[0])
            names.append(name)
    missing = [p for p in dict.fromkeys(cfg.train_extra) if p not in hit]
    if missing:
        raise UserError(
            f"model.orthogonal.train_extra: {', '.join(map(repr, missing))} matches no parameter of the "
            "generator (names look like synthesis.b8.conv0.bias, mapping.fc0.weight)"
        )
    return names


@torch.no_grad()
def merge_(net: nn.Module) -> nn.Module:
    """Fold the rotations into plain weights, in place: afterwards ``net`` has its original classes and
    ``state_dict`` keys (in the original order), weights ``W0 @ R^T`` (times magnitudes), with gradients."""
    modules = dict(net.named_modules())
    for name, rotation in rotations(net).items():
        module = modules[name]
        merged = module.weight.detach().clone()
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
        module.weight.copy_(merged)
        module.weight.requires_grad_(True)
        order = rotation.param_order or list(module._parameters)
        params = dict(module._parameters)
        module._parameters.clear()  # re-register in the original order (the base put `weight` last)
        for key in [*[k for k in order if k in params], *[k for k in params if k not in order]]:
            module._parameters[key] = params[key]
    return net


def merge(net: nn.Module) -> nn.Module:
    """A merged copy of ``net`` (:func:`merge_`; a network without rotations: a plain copy)."""
    clone = copy.deepcopy(net)
    for module in clone.modules():
        if parametrize.is_parametrized(module):
            # torch's deepcopy of a parametrized module shares its generated class with the original, and
            # removing a parametrization edits that class: give the copy a class of its own first.
            cls = type(module)
            module.__class__ = type(cls.__name__, cls.__bases__, dict(cls.__dict__))
    return merge_(clone)


def adapter_state(net: nn.Module, cfg: OrthogonalConfig) -> dict[str, torch.Tensor]:
    """An adapter's tensors for ``net`` (CPU copies): its trainable parameters and ``mapping.w_avg``."""
    keep = set(trainable_names(net, cfg)) | {"mapping.w_avg"}
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in net.state_dict().items() if k in keep}


def hyperspherical_energy(
    weight: torch.Tensor, s: float = 1.0, reduction: str = "mean", eps: float = 1e-6
) -> torch.Tensor:
    """Hyperspherical energy of the rows ``w_i`` of ``weight [N, ...]`` (differentiable, float64): with
    ``d_ij = ||u_i - u_j||``, ``u_i = w_i / ||w_i||``, ``sum_{i != j} d_ij^(-s)`` (``s > 0``) or
    ``log(1 / d_ij)`` (``s = 0``); ``mean`` divides by ``N (N - 1)``. Coincident rows count as ``d = eps``."""
    n = weight.shape[0]
    if s < 0 or reduction not in ("mean", "sum") or n < 2:
        raise ValueError(
            "hyperspherical energy needs s >= 0, reduction 'mean' or 'sum' and at least two neurons (rows); "
            f"got s={s}, {reduction!r}, {n} rows"
        )
    w = weight.reshape(n, -1).to(torch.float64)
    u = w / w.norm(dim=1, keepdim=True).clamp_min(1e-300)
    d2 = (2 - 2 * (u @ u.T)).clamp_min(eps * eps)  # d_ij^2
    d2 = d2[~torch.eye(n, dtype=torch.bool, device=w.device)]
    total = ((-0.5 * d2.log()) if s == 0 else d2.pow(-s / 2)).sum()
    return total / (n * (n - 1)) if reduction == "mean" else total


@torch.no_grad()
def layer_stats(net: nn.Module, s: float = HE_LOG_S) -> dict[str, dict[str, torch.Tensor]]:
    """Per rotated layer: ``he`` (mean HE_s of the effective weight), ``orth_err`` (``||R^T R - I||_F``)
    and ``rot_dist`` (``||R - I||_F``), as float64 tensors on the network's device."""
    modules = dict(net.named_modules())
    out = {}
    for name, rotation in rotations(net).items():
        orth, dist = rotation.errors()
        he = hyperspherical_energy(modules[name].weight, s=s)
        out[name] = {"he": he, "orth_err": orth, "rot_dist": dist}
    return out


class OrthogonalFinetune:
    """Orthogonal mode of :class:`~rootedgan.training.module.FinetuneModule`: rotates G and G_ema alike (G_ema
    is ``R(EMA(q))`` on its own frozen base) and gives the trainable parameters, EMA pairs, COFT projection,
    logs and exported networks."""

    def __init__(self, cfg: OrthogonalConfig, G: nn.Module, G_ema: nn.Module, base: str | None) -> None:
        self.cfg = OrthogonalConfig.from_any(cfg)
        self.layers = apply_orthogonal(G, self.cfg)
        if apply_orthogonal(G_ema, self.cfg) != self.layers:
            raise UserError("G and G_ema of the checkpoint have different layers; cannot rotate them alike")
        self.trainable = trainable_names(G, self.cfg)
        keep = set(self.trainable)
        for name, p in G.named_parameters():
            p.requires_grad_(name in keep)
        G_ema.requires_grad_(False)
        self.base_source = base  # the pretrained file (as given); rootedgan.checkpoints.adapter references it
        self._stats: dict[str, torch.Tensor] | None = None

    def parameters(self, G: nn.Module) -> list[nn.Parameter]:
        named = dict(G.named_parameters())
        return [named[n] for n in self.trainable]

    def set_requires_grad(self, G: nn.Module, flag: bool) -> None:
        for p in self.parameters(G):
            p.requires_grad_(flag)

    def ema_pairs(self, G: nn.Module, G_ema: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
        ema = dict(G_ema.named_parameters())
        return [(ema[n], p) for n, p in zip(self.trainable, self.parameters(G), strict=True)]

    def project_(self, G: nn.Module) -> None:
        """COFT projection of every rotation of G (after each optimizer step)."""
        if self.cfg.eps is not None:
            for rotation in rotations(G).values():
                rotation.project_(self.cfg.eps)

    def logs(self, G: nn.Module, step: int) -> dict[str, torch.Tensor]:
        """``Orthogonal/{he,orth_err,rot_dist}/<layer>`` and two ``*_max``, refreshed every ``log_every``."""
        if self._stats is None or step % self.cfg.log_every == 0:
            stats = layer_stats(G)
            logs = {f"Orthogonal/{key}/{name}": v[key] for name, v in stats.items() for key in v}
            for key in ("orth_err", "rot_dist"):
                logs[f"Orthogonal/{key}_max"] = torch.stack([v[key] for v in stats.values()]).max()
            self._stats = logs
        return dict(self._stats)

    def export(self, G: nn.Module, D: nn.Module, G_ema: nn.Module) -> dict[str, nn.Module]:
        """Plain networks for ``save_network``: merged copies of G and G_ema, D as is."""
        return {"G": merge(G), "D": D, "G_ema": merge(G_ema)}
