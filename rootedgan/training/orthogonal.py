"""Orthogonal finetuning (OFT, and OPT's parameterizations) of StyleGAN2 generator weights.

Convention (``docs/DESIGN.md``): a weight ``W0`` is viewed as ``[out, fan_in]`` (rows are filters,
``fan_in = in * kh * kw`` in the flattened ``(in, kh, kw)`` order) and finetuned as ``W = W0 @ R^T``, i.e.
every filter row ``w_j -> R w_j`` with one orthogonal ``R`` per layer. ``R`` is block-diagonal with
``fan_in / block_size`` blocks of size ``block_size`` (or one block repeated, ``shared``). The frozen base
weight stays untouched; the weights are rotated, never the input patches (rotating patches is only the same
for 1x1 kernels). Rotating all filters of a layer by the same ``R`` keeps their pairwise angles and so their
hyperspherical energy (:func:`hyperspherical_energy`).

Parameterizations of one block (``b = block_size``):

* ``cayley``: ``R = (I - Q)(I + Q)^-1`` with ``Q`` skew-symmetric, stored as its strict upper triangle
  (``b (b - 1) / 2`` numbers); exact (orthogonal to rounding) for any ``Q``.
* ``neumann``: the same with ``(I + Q)^-1 ~ sum_{i=0..n} (-Q)^i`` (``n = neumann_terms``), so
  ``R = (I - Q) sum_i (-Q)^i``, no linear solve. Since ``(I + Q) sum_{i<=n} (-Q)^i = I - E`` with
  ``E = (-Q)^(n+1)``, ``R = C (I - E)`` (``C`` the exact Cayley transform) and
  ``R^T R - I = -(E + E^T) + E^T E``: for odd ``n`` (``E^T = E``) the error is ``O(|Q|^(n+1))``, for even
  ``n`` (``E^T = -E``, the linear terms cancel) it is ``E^T E = O(|Q|^(2(n+1)))``. So even ``n`` are the
  sensible choices: 2 terms are as orthogonal as 5 (both order 6), and the default, 4 (order 10, one
  matrix product fewer than 5), is orthogonal to float32 rounding for ``||Q||_2 <= 0.2``
  (``bench/neumann_terms.py`` measures the orders and costs).
* ``gram_schmidt`` (OPT's unrolled orthogonalization): ``R = GS(I + P)`` with ``P`` a free ``b x b``
  matrix; the columns of ``I + P`` are orthonormalized in order by a differentiable, unrolled classical
  Gram-Schmidt with one re-orthogonalization pass. A Python loop of ``b`` steps per forward: meant for small
  blocks (``block_size <= 64``).

Every parameterization starts at its zero parameter, where ``R = I`` exactly, so the step-0 network is the
pretrained one bit for bit. COFT's constraint is applied to the free parameter: after each optimizer step
:meth:`OrthogonalRotation.project_` rescales it so that ``||Q||_F <= eps``, where ``Q`` is the layer's
whole block-diagonal matrix (a shared block counted once per repetition; for ``gram_schmidt`` it is
``P``). For Cayley this bounds the rotation: ``||R - I||_F = ||2 Q (I + Q)^-1||_F <= 2 eps``, since
``||(I + Q)^-1||_2 <= 1`` for skew ``Q``. This ``eps`` is not OFT's: the OFT reference code and peft's
COFT project every block on its own, ``||Q_i||_F <= eps / sqrt(r)`` for ``r`` blocks (which also bounds
the layer by ``eps``, but gives every block the same share), while here the layer's ``Q`` is rescaled as
a whole, so one block may use the entire radius. The same ``eps`` is therefore the same bound on the
layer's ``||Q||_F`` (and Cayley's ``||R - I||_F``), and a looser one on each block.

An optional per-filter magnitude ``m`` (initialised to 1) gives ``w_j -> m_j R w_j``. Demodulated
convolutions (``SynthesisLayer``: conv0/conv1) divide every filter by its norm, so a magnitude would have no
effect there; it is only created on layers without demodulation (torgb, affine and mapping layers).

Hooking in: :func:`apply_orthogonal` registers an :class:`OrthogonalRotation` as a
``torch.nn.utils.parametrize`` parametrization of each selected module's ``weight``; our layers read
``self.weight`` in ``forward``, so modulation/demodulation act on the rotated weight. :func:`merge` folds the
rotations back into plain weights (same ``state_dict`` keys as the original network).
"""

from __future__ import annotations

import copy
import fnmatch
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from rootedgan.errors import UserError
from rootedgan.networks.generator import SynthesisLayer

PARAMETERIZATIONS = ("cayley", "neumann", "gram_schmidt")
DEFAULT_LAYERS = ("synthesis.*.conv0", "synthesis.*.conv1")
GRAM_SCHMIDT_MAX_BLOCK = 64
HE_LOG_S = 1.0  # the power s of the hyperspherical energy that training logs (mean variant)


@dataclass
class OrthogonalConfig:
    """Settings of orthogonal finetuning (``model.orthogonal`` in the YAML config).

    Attributes:
        layers: which weights of G to rotate: patterns over G's module names, ``fnmatch`` style
            (``*`` also matches dots), or a regular expression when prefixed with ``re:``. Names look like
            ``synthesis.b64.conv0``, ``synthesis.b64.conv1``, ``synthesis.b64.torgb``,
            ``synthesis.b64.conv1.affine``, ``mapping.fc0``. Every pattern must match a layer.
        block_size: size of the diagonal blocks of R; must divide every selected layer's fan-in.
        shared: one block per layer, repeated along the diagonal (fewer parameters).
        parameterization: ``cayley`` (exact), ``neumann`` (truncated series) or ``gram_schmidt`` (OPT).
        neumann_terms: highest power of ``-Q`` in the Neumann series (``neumann`` only); use an even
            number: the orthogonality error is of order ``2 (n + 1)`` for even ``n``, ``n + 1`` for odd
            ``n`` (module docstring). Default 4 (order 10).
        eps: COFT radius: after every G step each layer's whole ``||Q||_F`` is rescaled into ``[0, eps]``
            (None: unconstrained). OFT and peft bound each block by ``eps / sqrt(blocks)`` instead
            (module docstring).
        magnitude: learn a per-filter magnitude (layers without demodulation only).
        train_extra: patterns over G's parameter names that also train as usual (e.g. ``*.bias``,
            ``*.noise_strength``); by default only the rotations (and magnitudes) train.
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

    @classmethod
    def from_any(cls, value: OrthogonalConfig | Mapping[str, Any] | None) -> OrthogonalConfig:
        """A validated config from an instance, a mapping (YAML, checkpoint hparams) or None (defaults)."""
        if value is None:
            cfg = cls()
        elif isinstance(value, OrthogonalConfig):
            cfg = copy.deepcopy(value)
        elif isinstance(value, Mapping):
            known = {f.name for f in fields(cls)}
            unknown = sorted(set(value) - known)
            if unknown:
                raise UserError(
                    f"model.orthogonal: unknown setting(s) {', '.join(unknown)}; "
                    f"known: {', '.join(sorted(known))}"
                )
            cfg = cls(**dict(value))
        else:
            raise UserError(f"model.orthogonal must be a mapping of settings, got {type(value).__name__}")
        cfg.layers = [cfg.layers] if isinstance(cfg.layers, str) else list(cfg.layers)
        cfg.train_extra = [cfg.train_extra] if isinstance(cfg.train_extra, str) else list(cfg.train_extra)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Raise a :class:`UserError` for settings that cannot work."""
        where = "model.orthogonal"
        if self.parameterization not in PARAMETERIZATIONS:
            raise UserError(
                f"{where}.parameterization must be one of {', '.join(PARAMETERIZATIONS)}, "
                f"got {self.parameterization!r}"
            )
        if not isinstance(self.block_size, int) or self.block_size < 2:
            raise UserError(f"{where}.block_size must be an integer >= 2, got {self.block_size!r}")
        if self.parameterization == "gram_schmidt" and self.block_size > GRAM_SCHMIDT_MAX_BLOCK:
            raise UserError(
                f"{where}.parameterization gram_schmidt unrolls a loop of block_size steps per forward pass; "
                f"use block_size <= {GRAM_SCHMIDT_MAX_BLOCK} (got {self.block_size}) or cayley"
            )
        if self.neumann_terms < 1:
            raise UserError(f"{where}.neumann_terms must be >= 1, got {self.neumann_terms}")
        if self.eps is not None and not (self.eps > 0 and math.isfinite(self.eps)):
            raise UserError(f"{where}.eps (COFT radius) must be > 0 or null, got {self.eps}")
        if self.log_every < 1:
            raise UserError(f"{where}.log_every must be >= 1, got {self.log_every}")
        if not self.layers:
            raise UserError(f"{where}.layers is empty: name at least one layer pattern")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (for checkpoints and adapter metadata)."""
        return asdict(self)


# -- one block: the parameterizations --------------------------------------------------------------------


def skew_from_triu(q: torch.Tensor, size: int) -> torch.Tensor:
    """``q [n, size*(size-1)/2]`` (strict upper triangle, row-major) -> skew-symmetric ``[n, size, size]``."""
    rows, cols = torch.triu_indices(size, size, 1, device=q.device)
    upper = q.new_zeros(q.shape[0], size, size)
    upper[:, rows, cols] = q
    return upper - upper.transpose(1, 2)


def cayley(q_skew: torch.Tensor) -> torch.Tensor:
    """Exact Cayley transform ``(I - Q)(I + Q)^-1`` of skew ``[..., b, b]`` (= ``(I + Q)^-1 (I - Q)``)."""
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
    """Orthonormalize the columns of ``v [..., b, b]`` in order (unrolled classical Gram-Schmidt, run twice
    per column for numerical orthogonality). Equals the ``Q`` of a QR decomposition with a positive
    diagonal in ``R``. Columns must be linearly independent."""
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
    """Parametrization of one weight: ``W0 [out, ...] -> (W0.view(out, fan_in) @ R^T) * m`` (module doc).

    Parameters: ``q`` (``[blocks, b*(b-1)/2]`` for cayley/neumann, ``[blocks, b, b]`` for gram_schmidt;
    ``blocks`` is 1 when shared) and, optionally, ``magnitude`` ``[out]``. All start at the identity.
    """

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
        self.out_features = shape[0]
        self.fan_in = math.prod(shape[1:])
        if self.fan_in % block_size:
            raise ValueError(f"block size {block_size} does not divide the fan-in {self.fan_in}")
        if parameterization not in PARAMETERIZATIONS:
            raise ValueError(f"unknown parameterization {parameterization!r}")
        self.block_size = block_size
        self.num_blocks = self.fan_in // block_size
        self.shared = shared
        self.parameterization = parameterization
        self.neumann_terms = neumann_terms
        stored = 1 if shared else self.num_blocks
        if parameterization == "gram_schmidt":
            self.q = nn.Parameter(torch.zeros(stored, block_size, block_size))
        else:
            self.q = nn.Parameter(torch.zeros(stored, block_size * (block_size - 1) // 2))
        self.magnitude = nn.Parameter(torch.ones(self.out_features)) if magnitude else None
        self.param_order: list[str] = []  # the host module's parameter names before it was parametrized

    @property
    def multiplicity(self) -> int:
        """How often each stored block appears on the diagonal of R."""
        return self.num_blocks if self.shared else 1

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
        eye = torch.eye(self.block_size, dtype=gen.dtype, device=gen.device)
        return gram_schmidt(eye + gen)

    def matrix(self) -> torch.Tensor:
        """The whole block-diagonal ``R [fan_in, fan_in]`` (dense; for tests and inspection)."""
        blocks = self.blocks()
        return torch.block_diag(*blocks.expand(self.num_blocks, -1, -1).unbind(0))

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
        """COFT projection: rescale ``q`` so that :meth:`free_norm` ``<= eps`` (no host sync). The whole
        layer's ``Q`` is bounded, not each block (OFT/peft bound each block by ``eps / sqrt(blocks)``)."""
        scale = (eps / self.free_norm()).clamp(max=1.0).to(self.q.dtype)
        self.q.mul_(scale)

    @torch.no_grad()
    def errors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(||R^T R - I||_F, ||R - I||_F)`` of the whole block-diagonal R (float64 scalars)."""
        rot = self.blocks().double()
        eye = torch.eye(self.block_size, dtype=rot.dtype, device=rot.device)
        orth = (rot.transpose(1, 2) @ rot - eye).square().sum() * self.multiplicity
        dist = (rot - eye).square().sum() * self.multiplicity
        return orth.sqrt(), dist.sqrt()

    def extra_repr(self) -> str:
        shared = ", shared" if self.shared else ""
        blocks = f"{self.num_blocks}x{self.block_size}{shared}"
        return f"{self.parameterization}, fan_in={self.fan_in}, blocks={blocks}"


# -- whole networks -------------------------------------------------------------------------------------


def _matches(name: str, pattern: str) -> bool:
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return fnmatch.fnmatchcase(name, pattern)


def weight_layers(net: nn.Module) -> dict[str, nn.Module]:
    """Modules of ``net`` with a plain (not yet parametrized) ``weight`` parameter of 2+ dimensions."""
    out = {}
    for name, module in net.named_modules():
        weight = module._parameters.get("weight")
        if isinstance(weight, nn.Parameter) and weight.ndim >= 2:
            out[name] = module
    return out


def select_layers(net: nn.Module, patterns: Iterable[str]) -> list[str]:
    """Names of the weight layers matched by any pattern (module order). Every pattern must match."""
    candidates = weight_layers(net)
    chosen = set()
    for pattern in patterns:
        hits = [name for name in candidates if _matches(name, pattern)]
        if not hits:
            parametrized = [n for n, m in net.named_modules() if parametrize.is_parametrized(m, "weight")]
            hint = " (those layers are already orthogonal)" if parametrized else ""
            examples = ", ".join(list(candidates)[:6])
            raise UserError(
                f"model.orthogonal.layers: the pattern {pattern!r} matches no weight layer of the generator"
                f"{hint}. Layer names look like: {examples} ... (fnmatch patterns, or re:REGEX)"
            )
        chosen.update(hits)
    return [name for name in candidates if name in chosen]


def _demodulated(module: nn.Module) -> bool:
    return isinstance(module, SynthesisLayer)


def _divisors(n: int, limit: int = 128) -> list[int]:
    return [d for d in range(2, min(n, limit) + 1) if n % d == 0]


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
            raise UserError(
                f"model.orthogonal.block_size={cfg.block_size} does not divide the fan-in {fan_in} "
                f"(in*kh*kw of weight {list(shape)}) of layer {name}. Choose a block size dividing every "
                f"selected layer's fan-in (for this layer: {_divisors(fan_in)}) or leave the layer out."
            )
        rotation = OrthogonalRotation(
            shape,
            cfg.block_size,
            shared=cfg.shared,
            parameterization=cfg.parameterization,
            neumann_terms=cfg.neumann_terms,
            magnitude=cfg.magnitude and not _demodulated(module),
        ).to(device=module.weight.device)
        rotation.param_order = list(module._parameters)
        parametrize.register_parametrization(module, "weight", rotation)
    return layers


def rotations(net: nn.Module) -> dict[str, OrthogonalRotation]:
    """``layer name -> OrthogonalRotation`` of a network prepared by :func:`apply_orthogonal`."""
    out = {}
    for name, module in net.named_modules():
        for p in _chain(module):
            if isinstance(p, OrthogonalRotation):
                out[name] = p
    return out


def trainable_names(net: nn.Module, cfg: OrthogonalConfig) -> list[str]:
    """Parameter names that train in orthogonal mode: rotations, magnitudes, and ``cfg.train_extra``."""
    names = []
    extra_hit = dict.fromkeys(cfg.train_extra, False)
    for name, _ in net.named_parameters():
        if name.endswith(".original"):
            continue  # the frozen base weight of a rotated layer
        if ".parametrizations.weight." in name:
            names.append(name)
            continue
        for pattern in cfg.train_extra:
            if _matches(name, pattern):
                extra_hit[pattern] = True
                names.append(name)
                break
    missing = [p for p, hit in extra_hit.items() if not hit]
    if missing:
        raise UserError(
            f"model.orthogonal.train_extra: {', '.join(map(repr, missing))} matches no parameter of the "
            "generator (names look like synthesis.b8.conv0.bias, mapping.fc0.weight)"
        )
    return names


def freeze_base(net: nn.Module, cfg: OrthogonalConfig) -> list[str]:
    """Freeze every parameter of ``net`` except :func:`trainable_names`; returns those names."""
    names = trainable_names(net, cfg)
    keep = set(names)
    for name, p in net.named_parameters():
        p.requires_grad_(name in keep)
    return names


def project_(net: nn.Module, eps: float) -> None:
    """COFT projection of every rotation of ``net`` (call after each optimizer step)."""
    for rotation in rotations(net).values():
        rotation.project_(eps)


@torch.no_grad()
def merge_(net: nn.Module) -> nn.Module:
    """Fold the rotations into plain weights, in place: afterwards ``net`` has its original classes and
    ``state_dict`` keys (in the original order), weights ``W0 @ R^T`` (times magnitudes), with gradients."""
    for _, module in list(net.named_modules()):
        rotation = next((p for p in _chain(module) if isinstance(p, OrthogonalRotation)), None)
        if rotation is None:
            continue
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


def _chain(module: nn.Module) -> list[nn.Module]:
    if not parametrize.is_parametrized(module, "weight"):
        return []
    return list(module.parametrizations["weight"])


def merge(net: nn.Module) -> nn.Module:
    """A merged copy of ``net`` (see :func:`merge_`); ``net`` itself keeps its parametrizations.
    A network without rotations comes back as a plain copy."""
    clone = copy.deepcopy(net)
    for module in clone.modules():
        if parametrize.is_parametrized(module):
            # torch's deepcopy of a parametrized module shares its generated class with the original, and
            # removing a parametrization edits that class: give the copy a class of its own first.
            cls = type(module)
            module.__class__ = type(cls.__name__, cls.__bases__, dict(cls.__dict__))
    return merge_(clone)


def adapter_state(net: nn.Module, cfg: OrthogonalConfig) -> dict[str, torch.Tensor]:
    """What an adapter stores for ``net``: rotation parameters, ``train_extra`` parameters and
    ``mapping.w_avg`` (training updates it), keyed like ``net.state_dict()`` (detached CPU copies)."""
    keep = set(trainable_names(net, cfg)) | {"mapping.w_avg"}
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in net.state_dict().items() if k in keep}


# -- hyperspherical energy and per-layer statistics -----------------------------------------------------


def hyperspherical_energy(
    weight: torch.Tensor, s: float = 1.0, reduction: str = "mean", eps: float = 1e-6
) -> torch.Tensor:
    """Hyperspherical energy of the neurons (rows) of ``weight [N, ...]`` (each row flattened).

    With ``u_i = w_i / ||w_i||`` and ``d_ij = ||u_i - u_j||``: ``HE_s = sum_{i != j} d_ij^(-s)`` for
    ``s > 0`` and ``sum_{i != j} log(1 / d_ij)`` for ``s = 0``, over ordered pairs. ``reduction='mean'``
    divides by ``N (N - 1)``; ``'sum'`` does not. Computed in float64 from ``d_ij^2 = 2 - 2 u_i.u_j``;
    coincident neurons (``d_ij < eps``) count as ``d_ij = eps`` so the energy stays finite (a huge value
    then signals collapsed neurons). Zero rows are undefined. Differentiable.
    """
    if s < 0:
        raise ValueError(f"hyperspherical energy needs s >= 0, got {s}")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    n = weight.shape[0]
    if n < 2:
        raise ValueError("hyperspherical energy needs at least two neurons (rows)")
    w = weight.reshape(n, -1).to(torch.float64)
    u = w / w.norm(dim=1, keepdim=True).clamp_min(1e-300)
    d2 = (2 - 2 * (u @ u.T)).clamp_min(eps * eps)
    off = ~torch.eye(n, dtype=torch.bool, device=w.device)
    d2 = d2[off]
    energy = (-0.5 * d2.log()) if s == 0 else d2.pow(-s / 2)
    total = energy.sum()
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


# -- the finetuning-mode bundle used by FinetuneModule --------------------------------------------------


class OrthogonalFinetune:
    """Orthogonal mode of :class:`~rootedgan.training.module.FinetuneModule`: parametrizes G and G_ema alike,
    says which
    parameters train, the EMA pairs, the COFT projection, the logs, export and adapter files.

    G_ema is parametrized the same way, so the EMA generator is ``R(EMA(q))`` on G_ema's own (frozen)
    base; only the trainable parameters are averaged and buffers are copied as usual. Bases never change,
    which is what lets an adapter (the small parameters + a reference to the base file) reproduce both.
    Mapping, affines, biases, noise strengths and ``const`` stay frozen unless named in ``train_extra``.
    """

    def __init__(self, cfg: OrthogonalConfig, G: nn.Module, G_ema: nn.Module, base: str | None) -> None:
        self.cfg = OrthogonalConfig.from_any(cfg)
        self.layers = apply_orthogonal(G, self.cfg)
        if apply_orthogonal(G_ema, self.cfg) != self.layers:
            raise UserError("G and G_ema of the checkpoint have different layers; cannot rotate them alike")
        self.trainable = freeze_base(G, self.cfg)
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
        if self.cfg.eps is not None:
            project_(G, self.cfg.eps)

    def logs(self, G: nn.Module, step: int) -> dict[str, torch.Tensor]:
        """``Orthogonal/{he,orth_err,rot_dist}/<layer>`` plus ``Orthogonal/orth_err_max`` and
        ``Orthogonal/rot_dist_max``: refreshed every ``log_every`` steps, the latest values every step (so
        whichever step the logger writes has them)."""
        if self._stats is None or step % self.cfg.log_every == 0:
            stats = layer_stats(G)
            logs = {f"Orthogonal/{key}/{name}": v[key] for name, v in stats.items() for key in v}
            logs["Orthogonal/orth_err_max"] = torch.stack([v["orth_err"] for v in stats.values()]).max()
            logs["Orthogonal/rot_dist_max"] = torch.stack([v["rot_dist"] for v in stats.values()]).max()
            self._stats = logs
        return dict(self._stats)

    def export(self, G: nn.Module, D: nn.Module, G_ema: nn.Module) -> dict[str, nn.Module]:
        """Plain networks for ``save_network``: merged copies of G and G_ema, D as is."""
        return {"G": merge(G), "D": D, "G_ema": merge(G_ema)}
