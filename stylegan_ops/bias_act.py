"""Fused bias + activation + gain + clamp: ``clamp(act(x + b) * gain, -clamp, clamp)``.

The pure-PyTorch reference (``impl='ref'``) is the specification; the CUDA kernel matches it, first and
second derivatives included (R1 and path length differentiate twice). Without a kernel (CPU tensors),
``impl='auto'`` runs linear/relu/lrelu as one autograd node (:mod:`stylegan_ops._bias_act_fused`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from stylegan_ops._bias_act_cuda import bias_act_cuda
from stylegan_ops._bias_act_fused import bias_act_fused, fusable
from stylegan_ops._impl import requested_impl, resolve_impl


@dataclass(frozen=True)
class ActivationSpec:
    """One activation: its function, StyleGAN's default alpha and gain, and its id in the kernel."""

    func: Callable[[torch.Tensor, float], torch.Tensor]
    def_alpha: float
    def_gain: float
    cuda_idx: int


ACTIVATIONS: dict[str, ActivationSpec] = {
    "linear": ActivationSpec(lambda x, a: x, 0.0, 1.0, 1),
    "relu": ActivationSpec(lambda x, a: F.relu(x), 0.0, math.sqrt(2), 2),
    "lrelu": ActivationSpec(lambda x, a: F.leaky_relu(x, a), 0.2, math.sqrt(2), 3),
    "tanh": ActivationSpec(lambda x, a: torch.tanh(x), 0.0, 1.0, 4),
    "sigmoid": ActivationSpec(lambda x, a: torch.sigmoid(x), 0.0, 1.0, 5),
    "elu": ActivationSpec(lambda x, a: F.elu(x), 0.0, 1.0, 6),
    "selu": ActivationSpec(lambda x, a: F.selu(x), 0.0, 1.0, 7),
    "softplus": ActivationSpec(lambda x, a: F.softplus(x), 0.0, 1.0, 8),
    "swish": ActivationSpec(lambda x, a: torch.sigmoid(x) * x, 0.0, math.sqrt(2), 9),
}


def resolve_bias_act_args(
    act: str, alpha: float | None, gain: float | None, clamp: float | None
) -> tuple[ActivationSpec, float, float, float]:
    """Validate the arguments and fill in defaults: ``(spec, alpha, gain, clamp)``, ``clamp < 0`` for none."""
    if act not in ACTIVATIONS:
        raise ValueError(f"unknown activation {act!r}; expected one of {', '.join(ACTIVATIONS)}")
    spec = ACTIVATIONS[act]
    if alpha is not None and act != "lrelu":
        raise ValueError(f"alpha is only used by 'lrelu', not by {act!r}")
    alpha = float(alpha if alpha is not None else spec.def_alpha)
    gain = float(gain if gain is not None else spec.def_gain)
    return spec, alpha, gain, float(clamp if clamp is not None else -1)


def _check_bias(x: torch.Tensor, b: torch.Tensor | None, dim: int) -> None:
    if b is None:
        return
    if b.ndim != 1:
        raise ValueError(f"bias must be 1-D, got shape {tuple(b.shape)}")
    if not 0 <= dim < x.ndim:
        raise ValueError(f"dim={dim} is out of range for a {x.ndim}-D input")
    if b.shape[0] != x.shape[dim]:
        raise ValueError(f"bias has {b.shape[0]} entries but x.shape[{dim}] = {x.shape[dim]}")


def bias_act(
    x: torch.Tensor,
    b: torch.Tensor | None = None,
    dim: int = 1,
    act: str = "linear",
    alpha: float | None = None,
    gain: float | None = None,
    clamp: float | None = None,
    impl: str | None = None,
) -> torch.Tensor:
    """Add bias ``b`` (1-D, broadcast along ``dim``), apply ``act``, scale by ``gain``, clamp.

    Args:
        x: input of any shape and float dtype.
        b: bias with ``x.shape[dim]`` entries, or None.
        act: linear, relu, lrelu, tanh, sigmoid, elu, selu, softplus or swish.
        alpha: negative slope of lrelu (default 0.2); only lrelu takes it.
        gain: output scale (default sqrt(2) for relu, lrelu, swish; 1 otherwise).
        clamp: clamp the output to [-clamp, clamp]; None for none.
        impl: ``'cuda'``, ``'ref'``, ``'auto'`` or None (environment variable ``STYLEGAN_OPS_IMPL``).

    Returns:
        A tensor shaped and typed like ``x``.
    """
    chosen = resolve_impl("bias_act", impl, x)
    spec, alpha, gain, clamp = resolve_bias_act_args(act, alpha, gain, clamp)
    _check_bias(x, b, dim)
    if chosen == "cuda":
        return bias_act_cuda(x, b, dim=dim, spec=spec, alpha=alpha, gain=gain, clamp=clamp)
    if requested_impl(impl) != "ref" and fusable(act, x, b, alpha, gain, clamp):
        return bias_act_fused(x, b, dim=dim, act=act, alpha=alpha, gain=gain, clamp=clamp)
    if b is not None:  # the reference: plain PyTorch ops, differentiable to any order
        x = x + b.reshape([-1 if d == dim else 1 for d in range(x.ndim)])
    x = spec.func(x, alpha)
    if gain != 1:
        x = x * gain
    return x.clamp(-clamp, clamp) if clamp >= 0 else x


#: The reference implementation (``impl='ref'``): the specification the kernel and the fused path match.
bias_act_ref = functools.partial(bias_act, impl="ref")
