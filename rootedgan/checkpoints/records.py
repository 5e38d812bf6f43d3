"""Shared helpers for the checkpoint readers: network records, building our modules, atomic writes.

A *record* is what every reader produces before any module exists: the network kind (``"Generator"``
or ``"Discriminator"``), the constructor kwargs of our (NVIDIA-compatible) class, and a flat state
dict with NVIDIA's key names. :func:`build_network` turns a record into a module, loading the state
dict strictly so that a reader that drops, renames or reshapes a tensor fails loudly.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torch.overrides import TorchFunctionMode

from rootedgan import networks
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


# Limits on the metadata a checkpoint may carry (constructor kwargs, training_set_kwargs, args, ...). A pickle
# can share one object many times through its memo, so a ~500-byte file can describe a structure that has
# 2**40 nodes once expanded; every value is counted each time it is reached, and depth is bounded too.
MAX_META_DEPTH = 32
MAX_META_ITEMS = 100_000


def check_metadata(
    obj: Any,
    what: str = "the checkpoint's metadata",
    max_depth: int = MAX_META_DEPTH,
    max_items: int = MAX_META_ITEMS,
) -> None:
    """Refuse metadata nested deeper than ``max_depth`` levels or holding more than ``max_items`` values.

    Walks iteratively (no recursion, no copies); a shared or self-referencing object counts every time it
    is reached, which is what :func:`plain` / :func:`jsonable` / ``json.dumps`` would expand it to.
    Raises a one-line :class:`CheckpointError` naming ``what``.
    """
    stack: list[tuple[Any, int]] = [(obj, 0)]
    count = 1
    while stack:
        node, depth = stack.pop()
        if isinstance(node, Mapping):
            size = 2 * len(node)
        elif isinstance(node, list | tuple | set | frozenset):
            size = len(node)
        else:
            continue
        if not size:
            continue
        if depth >= max_depth:
            raise CheckpointError(
                f"{what}: nested more than {max_depth} levels deep (or self-referencing); refused"
            )
        count += size
        if count > max_items:
            raise CheckpointError(
                f"{what}: more than {max_items} values once shared references are expanded; refused"
            )
        children = [*node.keys(), *node.values()] if isinstance(node, Mapping) else node
        stack.extend((child, depth + 1) for child in children)


def plain(obj: Any) -> Any:
    """Recursively turn dict subclasses into dicts, numpy scalars into Python numbers, sets into lists.

    Used for init kwargs and other metadata read from files, so they are ordinary, JSON-friendly values.
    Tuples stay tuples (constructors may take them); :func:`jsonable` turns them into lists. Metadata over
    the :func:`check_metadata` limits is refused (never expanded).
    """
    check_metadata(obj)
    return _plain(obj)


def _plain(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k) if not isinstance(k, str) else k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return tuple(_plain(v) for v in obj)
    if isinstance(obj, list):
        return [_plain(v) for v in obj]
    if isinstance(obj, set | frozenset):
        return sorted((_plain(v) for v in obj), key=repr)
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def jsonable(obj: Any) -> Any:
    """Like :func:`plain`, with tuples as lists and anything else non-JSON as its ``repr``."""
    return _jsonable(plain(obj))


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if obj is None or isinstance(obj, bool | int | str):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else repr(obj)
    if isinstance(obj, torch.dtype):
        return str(obj)
    return repr(obj)


def network_class(kind: str) -> type[torch.nn.Module]:
    """Our ``Generator`` or ``Discriminator`` class."""
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


# Sane bounds of constructor arguments, checked before anything is built (a few hundred bytes of metadata
# must not make us allocate gigabytes). Names are looked up in the kwargs and their nested dicts.
MAX_DIM = 16384  # z_dim, w_dim, channel widths, feature counts
MAX_RESOLUTION = 8192
_INT_BOUNDS: dict[str, tuple[int, int]] = {
    "z_dim": (1, MAX_DIM),
    "w_dim": (1, MAX_DIM),
    "c_dim": (0, 1 << 16),
    "img_resolution": (4, MAX_RESOLUTION),
    "img_channels": (1, 64),
    "channel_base": (1, 1 << 30),
    "channel_max": (1, MAX_DIM),
    "num_fp16_res": (0, 32),
    "num_layers": (0, 64),  # 0: NVIDIA's converted TensorFlow discriminators (no label mapping layers)
    "layer_features": (1, MAX_DIM),
    "embed_features": (0, MAX_DIM),
    "cmap_dim": (0, MAX_DIM),
    "mbstd_group_size": (0, 1 << 16),
    "mbstd_num_channels": (0, 64),
    "freeze_layers": (0, 64),
    "num_ws": (1, 1024),
}
_MAY_BE_NONE = {"c_dim", "layer_features", "embed_features", "cmap_dim", "mbstd_group_size", "num_ws"}
_REQUIRED = {
    GENERATOR: ("z_dim", "w_dim", "img_resolution", "img_channels"),
    DISCRIMINATOR: ("img_resolution", "img_channels"),
}
_MAX_INT = 1 << 31


def _short(obj: Any, limit: int = 300) -> str:
    text = repr(obj)
    return text if len(text) <= limit else text[:limit] + "...}"


def check_init_kwargs(kind: str, kwargs: Any, where: str = "") -> None:
    """Refuse constructor kwargs that are missing, of the wrong type or absurd, with one line.

    Checks the required sizes, the bounds in ``_INT_BOUNDS`` (looked up in nested dicts too), that every
    number is finite and every integer moderate, and that ``channel_base`` gives every layer at least one
    channel. Nothing is built.
    """
    label = f"{kind}{where}"
    if not isinstance(kwargs, Mapping):
        raise CheckpointError(
            f"the constructor arguments of {label} are a {type(kwargs).__name__}, not a dict"
        )
    check_metadata(kwargs, f"the constructor arguments of {label}")
    for key in _REQUIRED.get(kind, ()):
        if kwargs.get(key) is None:
            raise CheckpointError(f"the constructor arguments of {label} have no {key}")
    found: dict[str, Any] = {}
    stack: list[Any] = [kwargs]
    while stack:
        node = stack.pop()
        items = node.items() if isinstance(node, Mapping) else enumerate(node)
        for key, value in items:
            if isinstance(value, Mapping | list | tuple):
                stack.append(value)
                continue
            if isinstance(value, float) and not math.isfinite(value):
                raise CheckpointError(f"{label}: the constructor argument {key} is {value}; refused")
            if isinstance(value, int) and not isinstance(value, bool) and abs(value) > _MAX_INT:
                raise CheckpointError(f"{label}: the constructor argument {key} is {value}; refused")
            if isinstance(key, str) and key in _INT_BOUNDS:
                found.setdefault(key, value)
                lo, hi = _INT_BOUNDS[key]
                if value is None and key in _MAY_BE_NONE:
                    continue
                if not isinstance(value, int) or isinstance(value, bool):
                    raise CheckpointError(
                        f"{label}: the constructor argument {key} must be an integer, got {value!r}"
                    )
                if not lo <= value <= hi:
                    raise CheckpointError(
                        f"{label}: the constructor argument {key} = {value} is outside the sane range "
                        f"[{lo}, {hi}]; refused (a corrupt or hostile file?)"
                    )
    res = found.get("img_resolution")
    if isinstance(res, int) and res & (res - 1):
        raise CheckpointError(f"{label}: img_resolution = {res} is not a power of two")
    base = found.get("channel_base", 32768)
    if isinstance(res, int) and isinstance(base, int) and base < res:
        raise CheckpointError(
            f"{label}: channel_base = {base} is smaller than img_resolution = {res}, which leaves layers "
            "without channels"
        )


@functools.lru_cache(maxsize=1)
def _device_constructors() -> set:
    """torch's tensor factory functions (those that take ``device=``)."""
    try:
        from torch.utils._device import _device_constructors as constructors  # what torch.device(...) uses

        return constructors()
    except ImportError:  # pragma: no cover - a torch without the private helper
        names = ("empty", "zeros", "ones", "full", "rand", "randn", "randint", "randperm", "arange", "eye",
                 "tensor", "as_tensor", "linspace", "logspace", "empty_strided", "scalar_tensor")  # fmt: skip
        return {getattr(torch, n) for n in names if hasattr(torch, n)}


_TRUE_DIVIDE = {
    torch.Tensor.__truediv__,
    torch.Tensor.div,
    torch.Tensor.true_divide,
    torch.div,
    torch.true_divide,
}


class _MetaDevice(TorchFunctionMode):
    """Plans a network without allocating it: tensors made from a size (``randn([o, i])``, ``zeros``, ...)
    are on the ``meta`` device (shapes only), moving a meta tensor keeps it there, and tensors made from
    data (``as_tensor(kernel)``: small by construction) stay real. ``randn``/``rand`` and dividing a meta
    tensor by a number are answered directly: torch's meta kernels for them are written in Python and their
    first use imports ~1 s of modules (sympy among them)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func in (torch.tensor, torch.as_tensor, torch.asarray):
            pass
        elif func in (torch.randn, torch.rand):  # their meta versions are Python too: only the shape matters
            size = kwargs.get("size", args[0] if len(args) == 1 and not isinstance(args[0], int) else args)
            return torch.empty(size, dtype=kwargs.get("dtype"), device="meta")
        elif func in _device_constructors():
            kwargs["device"] = "meta"
        elif func is torch.Tensor.to and args and isinstance(args[0], torch.Tensor) and args[0].is_meta:
            kwargs.pop("device", None)
            args = (args[0], *(a for a in args[1:] if not isinstance(a, torch.device | str | int)))
        elif (
            func in _TRUE_DIVIDE
            and len(args) == 2
            and not kwargs
            and isinstance(args[0], torch.Tensor)
            and args[0].is_meta
            and isinstance(args[1], int | float)
            and not isinstance(args[1], bool)
        ):
            dtype = (torch.ones((), dtype=args[0].dtype) / args[1]).dtype  # torch's own promotion
            return torch.empty(args[0].shape, dtype=dtype, device="meta")
        return func(*args, **kwargs)


def _mismatch(record: NetworkRecord, label: str, where: str, problem: str) -> CheckpointError:
    return CheckpointError(
        f"the tensors of {label}{where} do not fit our {record.kind} built from "
        f"{_short(record.init_kwargs)}: {problem}. The file may come from a different network architecture."
    )


def _construct(record: NetworkRecord, label: str, where: str, meta: bool = False) -> torch.nn.Module:
    cls = network_class(record.kind)
    try:
        if meta:
            with _MetaDevice():
                return cls(**record.init_kwargs)
        return cls(**record.init_kwargs)
    except (
        TypeError,
        ValueError,
        KeyError,
        AssertionError,
        RuntimeError,
        ArithmeticError,
        IndexError,
    ) as err:
        reason = " ".join(str(err).split())[:300] or type(err).__name__
        raise CheckpointError(
            f"cannot build {label}{where} from its constructor arguments "
            f"{_short(record.init_kwargs)}: {reason}"
        ) from None


def check_record(
    record: NetworkRecord, source: str = "", name: str = "", allow_missing: Sequence[str] = ()
) -> None:
    """Check ``record`` before anything is allocated: sane kwargs (:func:`check_init_kwargs`), then the
    network planned on the ``meta`` device must have exactly the stored tensors' names and shapes (keys
    in ``allow_missing`` may be absent). So a network is only ever built as large as the file's tensors."""
    where = f" in {source}" if source else ""
    label = f"{name} ({record.kind})" if name else record.kind
    check_init_kwargs(record.kind, record.init_kwargs, f" {name}{where}" if name else where)
    planned = _construct(record, label, where, meta=True).state_dict()
    found = dict(record.state_dict)
    for key in allow_missing:
        if key in planned and key not in found:
            found[key] = planned[key]
    problem = _describe_mismatch(planned, found)
    if problem:
        raise _mismatch(record, label, where, problem)


def build_network(
    record: NetworkRecord, device: str | torch.device = "cpu", source: str = "", name: str = ""
) -> torch.nn.Module:
    """Construct our module from ``record.init_kwargs`` and load ``record.state_dict`` strictly.

    The kwargs and the tensors' shapes are checked first (:func:`check_record`), so nothing is allocated
    for a record whose tensors do not fit. The module is returned in eval mode on ``device``;
    ``requires_grad`` is left as constructed.
    """
    check_record(record, source, name)
    where = f" in {source}" if source else ""
    label = f"{name} ({record.kind})" if name else record.kind
    module = _construct(record, label, where)
    expected = module.state_dict()
    problem = _describe_mismatch(expected, record.state_dict)
    if problem:
        raise _mismatch(record, label, where, problem)
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
            check_record(rec, source, name, allow_missing=("mapping.w_avg",))
            state = dict(rec.state_dict)
            state["mapping.w_avg"] = torch.zeros([rec.init_kwargs["w_dim"]])
            net = build_network(NetworkRecord(rec.kind, rec.init_kwargs, state), "cpu", source, name)
            net.mapping.w_avg.copy_(estimate_w_avg(net))
            nets[name] = net.to(device)
        else:
            nets[name] = build_network(rec, device, source=source, name=name)
    return nets


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
