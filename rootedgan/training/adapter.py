"""Orthogonal-finetuning adapter files, the OFT side: :func:`save_adapter` writes the rotations,
:func:`load_adapter` rotates the base checkpoint like training did and returns merged plain networks. The
file format (reading, finding and checking the base) is :mod:`rootedgan.checkpoints.adapter`; importing
this module registers :func:`load_adapter` with ``load_network`` (``import rootedgan`` does)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as st_save

from rootedgan.checkpoints.adapter import ADAPTER_NETWORKS, base_reference, find_base, read_adapter
from rootedgan.checkpoints.loader import load_network, register_loader
from rootedgan.checkpoints.native import FORMAT_TAG, FORMAT_VERSION
from rootedgan.checkpoints.records import atomic_write, jsonable, write_chunks
from rootedgan.checkpoints.sources import ADAPTER, detect_format
from rootedgan.errors import CheckpointError, UserError
from rootedgan.training.orthogonal import OrthogonalConfig, adapter_state, apply_orthogonal, merge_, rotations

__all__ = ["base_reference", "load_adapter", "save_adapter"]  # base_reference: what save_adapter's base is


def save_adapter(
    path: str | os.PathLike[str],
    nets: Mapping[str, torch.nn.Module],
    cfg: Any,
    base: Mapping[str, Any],
    meta: Mapping[str, Any] | None = None,
) -> Path:
    """Write the adapter of orthogonally parametrized generators ``nets`` (``G`` and/or ``G_ema``),
    atomically; ``base`` is :func:`base_reference` of the checkpoint they were loaded from."""
    cfg = OrthogonalConfig.from_any(cfg)
    tensors: dict[str, torch.Tensor] = {}
    layers, init_kwargs = {}, {}  # per network: rotated layer names, constructor arguments
    for name, net in nets.items():
        if name not in ADAPTER_NETWORKS or net is None:
            continue
        layers[name] = list(rotations(net))
        if not layers[name]:
            raise CheckpointError(f"save_adapter: {name} carries no orthogonal rotations")
        init_kwargs[name] = jsonable(getattr(net, "init_kwargs", {}))
        tensors.update({f"{name}.{key}": value for key, value in adapter_state(net, cfg).items()})
    if not tensors:
        raise CheckpointError("save_adapter needs G and/or G_ema")
    metadata = {
        "format": FORMAT_TAG,
        "format_version": FORMAT_VERSION,
        "kind": ADAPTER,
        "orthogonal": json.dumps(cfg.to_dict()),
        "base": json.dumps(jsonable(dict(base))),
        "layers": json.dumps(layers),
        "base_init_kwargs": json.dumps(init_kwargs),
        "meta": json.dumps(jsonable(dict(meta or {}))),
    }
    data = st_save(tensors, metadata=metadata)
    return atomic_write(path, lambda f: write_chunks(f, data))


def load_adapter(
    path: str | os.PathLike[str],
    base: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    source: str | None = None,
) -> dict[str, Any]:
    """Load an adapter on its base: ``dict(G=..., D=None, G_ema=..., meta=...)``, merged plain networks."""
    path = Path(path)
    tensors, info = read_adapter(path)
    base_path = find_base(path, info["base"], base)
    if detect_format(base_path) == ADAPTER:
        raise CheckpointError(
            f"{base_path}: the base of an adapter must be a full checkpoint, not an adapter"
        )
    nets = load_network(base_path, device="cpu")
    try:
        cfg = OrthogonalConfig.from_any(info["orthogonal"])
    except UserError as err:
        raise CheckpointError(f"{path}: its orthogonal settings are invalid ({err})") from err
    out: dict[str, Any] = {"G": None, "D": None, "G_ema": None}
    for name, state in tensors.items():
        net = nets.get(name)
        if net is None:
            raise CheckpointError(f"{path} holds {name} rotations but the base {base_path} has no {name}")
        layers = apply_orthogonal(net, cfg)
        if layers != info["layers"].get(name, layers):
            raise CheckpointError(
                f"{path}: the base {base_path} gives rotated layers {layers}, the adapter was trained on "
                f"{info['layers'][name]}: a different architecture"
            )
        expected = net.state_dict()
        needed = {k for k in expected if ".parametrizations.weight." in k and not k.endswith(".original")}
        problems = [f"unexpected {k}" for k in state if k not in expected]
        problems += [f"missing {k}" for k in sorted(needed - set(state))]
        problems += [
            f"wrong shape {k} {tuple(v.shape)} (expected {tuple(expected[k].shape)})"
            for k, v in state.items()
            if k in expected and v.shape != expected[k].shape
        ]
        if problems:
            raise CheckpointError(
                f"{path}: the {name} tensors do not fit the base: {'; '.join(problems[:8])}"
            )
        net.load_state_dict(state, strict=False)  # the rest is the base, checked above
        out[name] = merge_(net).to(device).eval()
    meta = {
        **{k: v for k, v in (info.get("meta") or {}).items() if k not in ("format", "source")},
        "format": ADAPTER,
        "source": source or str(path),
        "adapter": {"base": info["base"], "base_path": str(base_path), "orthogonal": cfg.to_dict()},
        "layers": info["layers"],
        "init_kwargs": {k: v for k, v in nets["meta"]["init_kwargs"].items() if k in tensors},
        "notes": [
            "an adapter holds G/G_ema rotations only; D (trained in full) is in the run's "
            "network-snapshot-*.safetensors"
        ],
    }
    return {**out, "meta": meta}


register_loader(ADAPTER, load_adapter)
