"""Choosing between the CUDA kernel and the pure-PyTorch reference for one call: ``impl`` or, when None,
``$STYLEGAN_OPS_IMPL`` (``auto`` default, ``cuda``, ``ref``); CPU tensors always take the reference."""

from __future__ import annotations

import os

import torch

IMPL_ENV_VAR = "STYLEGAN_OPS_IMPL"
VALID_IMPLS = ("auto", "cuda", "ref")


class ImplSettingError(ValueError):
    """An unknown implementation name (``impl=`` or ``STYLEGAN_OPS_IMPL``); the CLI prints it in one line."""


def requested_impl(impl: str | None = None) -> str:
    """The implementation asked for: ``impl`` if given, else the environment variable, else ``auto``."""
    name = impl if impl is not None else os.environ.get(IMPL_ENV_VAR, "auto")
    name = name.strip().lower()
    if name not in VALID_IMPLS:
        source = "impl argument" if impl is not None else f"environment variable {IMPL_ENV_VAR}"
        raise ImplSettingError(
            f"{source} is {name!r}; expected one of {', '.join(VALID_IMPLS)} (or unset {IMPL_ENV_VAR})"
        )
    return name


def resolve_impl(op: str, impl: str | None, x: torch.Tensor) -> str:
    """``'cuda'`` or ``'ref'`` for running ``op`` on ``x``: ``auto`` uses the kernel for CUDA tensors when it
    builds (else one warning and the reference), ``cuda`` raises if it cannot be built."""
    name = requested_impl(impl)
    if name == "ref" or x.device.type != "cuda":
        return "ref"
    from stylegan_ops import build  # lazily: the build machinery is only ever needed on a GPU

    plugin = build.get_plugin(op, required=(name == "cuda"))
    return "cuda" if plugin is not None else "ref"
