"""Shared helpers for the checkpoint readers: network records, building our modules, atomic writes.

A *record* is what every reader produces before any module exists: the network kind (``"Generator"``
or ``"Discriminator"``), the constructor kwargs of our (NVIDIA-compatible) class, and a flat state
dict with NVIDIA's key names. :func:`build_network` turns a record into a module, loading the state
dict strictly so that a reader that drops, renames or reshapes a tensor fails loudly.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from rootedgan.errors import CheckpointError
from rootedgan.fileio import atomic_open

NETWORK_NAMES = ("G", "D", "G_ema")
GENERATOR = "Generator"
DISCRIMINATOR = "Discriminator"

# The default 1-D resampling kernel of StyleGAN2; every block/layer stores outer(k, k) / sum as a buffer.
DEFAULT_RESAMPLE_KERNEL = (1.0, 3.0, 3.0, 1.0)


@dataclass
class NetworkRecord:
    """One network before it is built: our class name, its constructor kwargs and its state dict."""

    kind: str
    init_kwargs: dict[str, Any]
    state_dict: dict[str, torch.Tensor] = field(repr=False)


def default_resample_filter() -> torch.Tensor:
    """The ``resample_filter`` buffer every StyleGAN2 block and resampling layer holds (4x4, sums to 1)."""
    k = torch.tensor(DEFAULT_RESAMPLE_KERNEL, dtype=torch.float32)
    f = torch.outer(k, k)
    return f / f.sum()


def plain(obj: Any) -> Any:
    """Recursively turn dict subclasses into dicts, numpy scalars into Python numbers, sets into lists.

    Used for init kwargs and other metadata read from files, so they are ordinary, JSON-friendly values.
    Tuples stay tuples (constructors may take them); :func:`jsonable` turns them into lists.
    """
    if isinstance(obj, Mapping):
        return {str(k) if not isinstance(k, str) else k: plain(v) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return tuple(plain(v) for v in obj)
    if isinstance(obj, list):
        return [plain(v) for v in obj]
    if isinstance(obj, set | frozenset):
        return sorted((plain(v) for v in obj), key=repr)
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def jsonable(obj: Any) -> Any:
    """Like :func:`plain`, with tuples as lists and anything else non-JSON as its ``repr``."""
    obj = plain(obj)
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if obj is None or isinstance(obj, bool | int | str):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else repr(obj)
    if isinstance(obj, torch.dtype):
        return str(obj)
    return repr(obj)


def network_class(kind: str) -> type[torch.nn.Module]:
    """Our ``Generator`` or ``Discriminator`` class (imported lazily: readers work without it)."""
    try:
        from rootedgan import networks
    except ImportError as err:  # pragma: no cover - only while the package is incomplete
        raise CheckpointError(f"cannot build networks: rootedgan.networks is not importable ({err})") from err
    if kind == GENERATOR:
        return networks.Generator
    if kind == DISCRIMINATOR:
        return networks.Discriminator
    raise CheckpointError(f"unknown network kind {kind!r} (expected {GENERATOR!r} or {DISCRIMINATOR!r})")


def _describe_mismatch(
    expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor], limit: int = 8
) -> str:
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    wrong_shape = [
        f"{k} {tuple(found[k].shape)} (expected {tuple(expected[k].shape)})"
        for k in expected
        if k in found and tuple(found[k].shape) != tuple(expected[k].shape)
    ]
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)):
        if items:
            more = f" ... and {len(items) - limit} more" if len(items) > limit else ""
            parts.append(f"{label}: {', '.join(items[:limit])}{more}")
    return "; ".join(parts)


def build_network(
    record: NetworkRecord, device: str | torch.device = "cpu", source: str = "", name: str = ""
) -> torch.nn.Module:
    """Construct our module from ``record.init_kwargs`` and load ``record.state_dict`` strictly.

    The module is returned in eval mode on ``device``; ``requires_grad`` is left as constructed.
    """
    cls = network_class(record.kind)
    where = f" in {source}" if source else ""
    label = f"{name} ({record.kind})" if name else record.kind
    try:
        module = cls(**record.init_kwargs)
    except (TypeError, ValueError, KeyError, AssertionError) as err:
        raise CheckpointError(
            f"cannot build {label}{where} from its constructor arguments {record.init_kwargs}: {err}"
        ) from err
    expected = module.state_dict()
    problem = _describe_mismatch(expected, record.state_dict)
    if problem:
        raise CheckpointError(
            f"the tensors of {label}{where} do not fit our {record.kind} built from "
            f"{record.init_kwargs}: {problem}. The file may come from a different network architecture."
        )
    state = {k: v.to(expected[k].dtype) for k, v in record.state_dict.items()}
    module.load_state_dict(state, strict=True)
    return module.to(device).eval()


@torch.no_grad()
def estimate_w_avg(G: torch.nn.Module, num: int = 10000, seed: int = 0) -> torch.Tensor:
    """Mean of ``num`` mapped latents, for checkpoints without ``w_avg`` (rosinality's ``mean_latent``)."""
    device = next(G.parameters()).device
    z = torch.randn([num, G.z_dim], generator=torch.Generator().manual_seed(seed)).to(device)
    c = torch.zeros([num, getattr(G, "c_dim", 0)], device=device)
    ws = G.mapping(z, c, truncation_psi=1)
    return ws[:, 0].mean(dim=0)


def build_all(
    records: Mapping[str, NetworkRecord | None], device: str | torch.device = "cpu", source: str = ""
) -> dict[str, torch.nn.Module | None]:
    """Build every record (None stays None); a generator stored without ``mapping.w_avg`` gets an estimate."""
    nets: dict[str, torch.nn.Module | None] = {}
    for name, rec in records.items():
        if rec is None:
            nets[name] = None
        elif rec.kind == GENERATOR and "mapping.w_avg" not in rec.state_dict:
            state = dict(rec.state_dict)
            state["mapping.w_avg"] = torch.zeros([rec.init_kwargs["w_dim"]])
            net = build_network(NetworkRecord(rec.kind, rec.init_kwargs, state), "cpu", source, name)
            net.mapping.w_avg.copy_(estimate_w_avg(net))
            nets[name] = net.to(device)
        else:
            nets[name] = build_network(rec, device, source=source, name=name)
    return nets


def load_result(
    records: Mapping[str, NetworkRecord | None],
    extra_meta: Mapping[str, Any],
    fmt: str,
    source: str,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """What every loader returns: the built networks plus ``meta`` (``extra_meta`` from the file, then
    ``format``, ``source`` and each network's ``init_kwargs``)."""
    nets = build_all(records, device, source=source)
    meta = {
        **extra_meta,
        "format": fmt,
        "source": source,
        "init_kwargs": {name: jsonable(rec.init_kwargs) for name, rec in records.items() if rec is not None},
    }
    return {**nets, "meta": meta}


def module_record(module: torch.nn.Module, kind: str | None = None) -> NetworkRecord:
    """The record of a built module (its ``init_kwargs`` and a detached CPU copy of its state dict)."""
    init_kwargs = getattr(module, "init_kwargs", None)
    if not isinstance(init_kwargs, Mapping):
        raise CheckpointError(
            f"{type(module).__name__} has no `init_kwargs`: only rootedgan networks can be saved"
        )
    if kind is None:
        kind = type(module).__name__
    state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in module.state_dict().items()}
    return NetworkRecord(kind=kind, init_kwargs=plain(dict(init_kwargs)), state_dict=state)


def write_chunks(f: BinaryIO, data: bytes | memoryview, chunk_size: int = 1 << 24) -> None:
    """Write ``data`` to ``f`` in chunks (a seam for tests that simulate a failure mid-write)."""
    view = memoryview(data)
    for start in range(0, len(view), chunk_size):
        f.write(view[start : start + chunk_size])


def atomic_write(path: str | os.PathLike[str], writer: Callable[[BinaryIO], None]) -> Path:
    """Write a file atomically: ``writer`` fills a temp file in the same folder, then it replaces ``path``.

    The temp file is fsynced before the rename; on any error it is removed and ``path`` is untouched.
    Missing parent folders are created. OS errors become a :class:`CheckpointError` naming the path.
    """
    path = Path(path).expanduser()
    parent = path.parent if str(path.parent) else Path(".")
    try:
        with atomic_open(path, "wb") as f:
            writer(f)
    except OSError as err:
        reason = err.strerror or str(err)
        raise CheckpointError(
            f"cannot write {path}: {reason}. Check that the folder {parent} exists, is a folder, "
            "is writable and has free space."
        ) from err
    return path
