"""Shared helpers of the checkpoint readers: records, bounded metadata, safe unpickling, building, writing.

A *record* is what every reader produces before any module exists: the kind, our constructor kwargs and a
flat state dict with NVIDIA's key names. :func:`build_network` checks it before allocating anything.
"""

from __future__ import annotations

import contextlib
import math
import os
import pickle
import re
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._device import _device_constructors  # torch's factories that take device= (cached)

from rootedgan import networks
from rootedgan.errors import CheckpointError, UnsafeCheckpointError, one_line
from rootedgan.fileio import atomic_open

NETWORK_NAMES = ("G", "D", "G_ema")
GENERATOR = "Generator"
DISCRIMINATOR = "Discriminator"
CLASSES = {GENERATOR: networks.Generator, DISCRIMINATOR: networks.Discriminator}
#: Mapped latents averaged for a generator stored without ``w_avg`` (rosinality's ``mean_latent``).
W_AVG_SAMPLES = 10000


@dataclass
class NetworkRecord:
    """One network before it is built: our class name, its constructor kwargs and its state dict."""

    kind: str
    init_kwargs: dict[str, Any]
    state_dict: dict[str, torch.Tensor] = field(repr=False)


# ----------------------------------------------------------------------------------------------------------
# Metadata: bounded, then plain Python values.

# A pickle can share one object many times through its memo, so a ~500-byte file can describe a structure
# with 2**40 nodes once expanded: every value is counted each time it is reached, and depth is bounded too.
MAX_META_DEPTH = 32
MAX_META_ITEMS = 100_000


def check_metadata(obj: Any, what: str = "the checkpoint's metadata") -> None:
    """Refuse metadata nested deeper than ``MAX_META_DEPTH`` or holding more than ``MAX_META_ITEMS`` values
    (walked iteratively, shared objects counted each time, as :func:`plain` or ``json.dumps`` would expand
    them), with one line naming ``what``."""
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
        if size and depth >= MAX_META_DEPTH:
            raise CheckpointError(
                f"{what}: nested more than {MAX_META_DEPTH} levels deep (or self-referencing); refused"
            )
        count += size
        if count > MAX_META_ITEMS:
            raise CheckpointError(
                f"{what}: more than {MAX_META_ITEMS} values once shared references are expanded; refused"
            )
        children = [*node.keys(), *node.values()] if isinstance(node, Mapping) else node
        stack.extend((child, depth + 1) for child in children)


def plain(obj: Any) -> Any:
    """Dict subclasses as dicts, numpy scalars as Python numbers, sets as sorted lists, recursively (tuples
    stay tuples: constructors may take them). Metadata over the :func:`check_metadata` limits is refused."""
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


# ----------------------------------------------------------------------------------------------------------
# Restricted unpickling, shared by the NVIDIA and TensorFlow readers (README, "Security").


class EasyDict(dict):
    """Stand-in for ``dnnlib.util.EasyDict`` (a dict with attribute access): unpickled as a dict."""


def latin1_encode(text: Any, encoding: Any = "utf-8") -> bytes:
    """Checked ``_codecs.encode``: how protocol-2 pickles store byte strings (latin-1 text only)."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafeCheckpointError("refused a _codecs.encode call that is not latin-1 bytes; not loaded")
    return text.encode("latin-1")


class NumpyDType:
    """Checked stand-in for ``numpy.dtype``: a numeric dtype named by a string, plus its byte order."""

    __slots__ = ("base", "order")

    def __init__(self, spec: Any, align: Any = False, copy: Any = False) -> None:
        if not isinstance(spec, str) or len(spec) > 8:
            raise UnsafeCheckpointError(
                f"refused numpy.dtype({spec!r}) in the pickle; the file was not loaded"
            )
        try:
            base = np.dtype(spec)
        except TypeError as err:
            raise CheckpointError(f"invalid numpy dtype {spec!r} in the pickle (corrupt file?)") from err
        if base.kind not in "biuf" or base.hasobject or base.fields is not None or base.subdtype is not None:
            raise UnsafeCheckpointError(
                f"refused numpy dtype {spec!r} in the pickle; the file was not loaded"
            )
        self.base = base
        self.order = "="

    def __setstate__(self, state: Any) -> None:
        # numpy writes (version, byte order, subarray, names, fields, elsize, alignment, flags[, metadata]).
        if not isinstance(state, tuple) or len(state) < 5 or state[1] not in ("<", ">", "|", "="):
            raise CheckpointError("a numpy dtype in the pickle has a malformed state (corrupt file?)")
        if any(part is not None for part in state[2:5]):
            raise UnsafeCheckpointError(
                "refused a structured numpy dtype in the pickle; the file was not loaded"
            )
        self.order = state[1]

    def resolve(self) -> np.dtype:
        return self.base.newbyteorder(self.order) if self.order in "<>" else self.base


def numpy_scalar(dtype: Any, data: Any = None) -> np.generic:
    """Checked ``numpy.core.multiarray.scalar``: a number rebuilt from its raw bytes (TensorFlow returned 0-d
    variables such as ``noise_strength`` as numpy scalars)."""
    if not isinstance(dtype, NumpyDType):
        raise UnsafeCheckpointError("refused a numpy scalar of an unexpected type; the file was not loaded")
    resolved = dtype.resolve()
    if not isinstance(data, bytes) or len(data) != resolved.itemsize:
        raise CheckpointError("a numpy scalar in the pickle has the wrong number of bytes (corrupt file?)")
    return np.frombuffer(data, dtype=resolved)[0]


#: Globals both restricted unpicklers resolve, to stand-ins that only store values.
SHARED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy", "dtype"): NumpyDType,
    ("numpy.core.multiarray", "scalar"): numpy_scalar,
    ("numpy._core.multiarray", "scalar"): numpy_scalar,
    ("dnnlib.util", "EasyDict"): EasyDict,
    ("dnnlib", "EasyDict"): EasyDict,
    ("collections", "OrderedDict"): OrderedDict,
    ("_codecs", "encode"): latin1_encode,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals in ``allowed`` (stand-ins that store values) and no persistent ids (network
    pickles have none); anything else is refused, naming ``allow_list``."""

    allowed: Mapping[tuple[str, str], Any] = SHARED_GLOBALS
    allow_list = "tensor and container types"

    def find_class(self, module: str, name: str) -> Any:
        target = self.allowed.get((module, name))
        if target is None:
            raise UnsafeCheckpointError(
                f"the pickle references the global `{module}.{name}`, which is not on the allow-list of "
                f"{self.allow_list} (unpickling it could run arbitrary code); the file was not loaded"
            )
        return target

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafeCheckpointError(
            "the pickle uses persistent ids, which network pickles never contain; the file was not loaded"
        )


def first_line(err: BaseException) -> str:
    """The first sentence of an exception's message (torch's messages go on for paragraphs)."""
    lines = str(err).strip().splitlines()
    return (lines[0] if lines else type(err).__name__).split(". ")[0].rstrip(".")[:300]


def refused_global(err: BaseException) -> str | None:
    """What a ``torch.load(weights_only=True)`` refusal names (``the global `x.y```), or None when ``err`` is
    not such a refusal."""
    msg = str(err)
    if not isinstance(err, pickle.UnpicklingError) or not re.search(
        "weights_only|Unsupported|Weights only", msg
    ):
        return None
    found = re.search(r"GLOBAL ([\w.]+)", msg)
    return f"the global `{found.group(1)}`" if found else "code outside torch's weights-only allow-list"


def load_pickle(path: str | os.PathLike[str], unpickler: type[pickle.Unpickler], what: str) -> Any:
    """Unpickle ``path`` with a restricted ``unpickler``; every failure is a one-line CheckpointError."""
    try:
        with open(path, "rb") as f:
            return unpickler(f).load()
    except UnsafeCheckpointError as err:
        raise UnsafeCheckpointError(f"refused to load {path}: {err}") from None
    except CheckpointError as err:
        raise type(err)(f"{path}: {err}") from None
    except (EOFError, pickle.UnpicklingError) as err:
        raise CheckpointError(
            f"{path} is truncated or corrupt (the pickle ends early or is malformed: {first_line(err)}). "
            "Download or copy it again."
        ) from err
    except Exception as err:  # anything else a malformed file can trigger: never a raw stack trace
        raise CheckpointError(
            f"{path} is corrupt or not {what} ({type(err).__name__}: {first_line(err)}). "
            "Download or copy it again."
        ) from err


# ----------------------------------------------------------------------------------------------------------
# Constructor arguments: bounded before anything is planned or built.

# A few hundred bytes of metadata must not make us allocate gigabytes. Names are looked up in nested dicts.
MAX_DIM = 16384  # z_dim, w_dim, channel widths, feature counts
_INT_BOUNDS: dict[str, tuple[int, int]] = {
    "z_dim": (1, MAX_DIM),
    "w_dim": (1, MAX_DIM),
    "c_dim": (0, 1 << 16),
    "img_resolution": (4, 8192),
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


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _leaves(kwargs: Mapping[str, Any]) -> Iterator[tuple[Any, Any]]:
    """``(key, value)`` of every value that is not a dict, list or tuple, however deeply nested."""
    stack: list[Any] = [kwargs]
    while stack:
        node = stack.pop()
        for key, value in node.items() if isinstance(node, Mapping) else enumerate(node):
            if isinstance(value, Mapping | list | tuple):
                stack.append(value)
            else:
                yield key, value


def _check_value(label: str, key: Any, value: Any) -> None:
    """A finite, moderate value; an integer within its ``_INT_BOUNDS`` where the key is named there."""
    if (isinstance(value, float) and not math.isfinite(value)) or (_is_int(value) and abs(value) > _MAX_INT):
        raise CheckpointError(f"{label}: the constructor argument {key} is {value}; refused")
    bounds = _INT_BOUNDS.get(key) if isinstance(key, str) else None
    if bounds is None or (value is None and key in _MAY_BE_NONE):
        return
    if not _is_int(value):
        raise CheckpointError(f"{label}: the constructor argument {key} must be an integer, got {value!r}")
    if not bounds[0] <= value <= bounds[1]:
        raise CheckpointError(
            f"{label}: the constructor argument {key} = {value} is outside the sane range "
            f"[{bounds[0]}, {bounds[1]}]; refused (a corrupt or hostile file?)"
        )


def check_init_kwargs(kind: str, kwargs: Any, where: str = "") -> None:
    """Refuse constructor kwargs that are missing, of the wrong type or absurd, with one line: the required
    sizes, :data:`_INT_BOUNDS`, finite numbers, moderate integers, and a ``channel_base`` that gives every
    layer a channel. Nothing is built."""
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
    for key, value in _leaves(kwargs):
        _check_value(label, key, value)
        if isinstance(key, str):
            found.setdefault(key, value)
    res, base = found.get("img_resolution"), found.get("channel_base", 32768)
    if _is_int(res) and res & (res - 1):
        raise CheckpointError(f"{label}: img_resolution = {res} is not a power of two")
    if _is_int(res) and _is_int(base) and base < res:
        raise CheckpointError(
            f"{label}: channel_base = {base} is smaller than img_resolution = {res}, which leaves layers "
            "without channels"
        )


# ----------------------------------------------------------------------------------------------------------
# Planning (meta device) and building.


_TRUE_DIVIDE = {
    torch.Tensor.__truediv__,
    torch.Tensor.div,
    torch.Tensor.true_divide,
    torch.div,
    torch.true_divide,
}


class _MetaDevice(TorchFunctionMode):
    """Plans a network without allocating it: tensors made from a size go to the ``meta`` device and stay
    there when moved; tensors made from data (small by construction) stay real. ``randn``/``rand`` and
    dividing a meta tensor by a number are answered here: torch's meta kernels for them first import ~1 s of
    modules (sympy among them)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        meta = bool(args) and isinstance(args[0], torch.Tensor) and args[0].is_meta
        if func in (torch.tensor, torch.as_tensor, torch.asarray):
            pass
        elif func in (torch.randn, torch.rand):
            size = kwargs.get("size", args[0] if len(args) == 1 and not isinstance(args[0], int) else args)
            return torch.empty(size, dtype=kwargs.get("dtype"), device="meta")
        elif func in _device_constructors():
            kwargs["device"] = "meta"
        elif func is torch.Tensor.to and meta:
            kwargs.pop("device", None)
            args = (args[0], *(a for a in args[1:] if not isinstance(a, torch.device | str | int)))
        elif func in _TRUE_DIVIDE and meta and len(args) == 2 and not kwargs and _is_number(args[1]):
            dtype = (torch.ones((), dtype=args[0].dtype) / args[1]).dtype  # torch's own promotion
            return torch.empty(args[0].shape, dtype=dtype, device="meta")
        return func(*args, **kwargs)


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


# What a constructor raises for arguments it cannot build from.
_BUILD_ERRORS = (TypeError, ValueError, KeyError, AssertionError, RuntimeError, ArithmeticError, IndexError)


def construct(record: NetworkRecord, label: str, meta: bool = False) -> torch.nn.Module:
    """Our module for ``record.init_kwargs`` (no state loaded), planned on the ``meta`` device if ``meta``;
    a constructor that refuses its arguments is a one-line CheckpointError naming ``label``."""
    cls = CLASSES.get(record.kind)
    if cls is None:
        raise CheckpointError(
            f"unknown network kind {record.kind!r} (expected {GENERATOR!r} or {DISCRIMINATOR!r})"
        )
    try:
        with _MetaDevice() if meta else contextlib.nullcontext():
            return cls(**record.init_kwargs)
    except _BUILD_ERRORS as err:
        raise CheckpointError(
            f"cannot build {label} from its constructor arguments {_short(record.init_kwargs)}: "
            f"{one_line(err)}"
        ) from None


def check_record(
    record: NetworkRecord, source: str = "", name: str = "", allow_missing: Sequence[str] = ()
) -> str:
    """Check ``record`` before anything is allocated: sane kwargs (:func:`check_init_kwargs`), then the
    network planned on the ``meta`` device must have exactly the stored tensors' names and shapes (keys in
    ``allow_missing`` may be absent). Returns the label errors name the network by."""
    where = f" in {source}" if source else ""
    check_init_kwargs(record.kind, record.init_kwargs, f" {name}{where}" if name else where)
    label = f"{name} ({record.kind}){where}" if name else f"{record.kind}{where}"
    planned = construct(record, label, meta=True).state_dict()
    found = dict(record.state_dict)
    found.update({key: planned[key] for key in allow_missing if key in planned and key not in found})
    problem = _describe_mismatch(planned, found)
    if problem:
        raise CheckpointError(
            f"the tensors of {label} do not fit our {record.kind} built from {_short(record.init_kwargs)}: "
            f"{problem}. The file may come from a different network architecture."
        )
    return label


def build_network(
    record: NetworkRecord, device: str | torch.device = "cpu", source: str = "", name: str = ""
) -> torch.nn.Module:
    """Our module from a record checked by :func:`check_record`, state loaded strictly, in eval mode on
    ``device`` (``requires_grad`` as constructed)."""
    module = construct(record, check_record(record, source, name))
    expected = module.state_dict()
    module.load_state_dict({k: v.to(expected[k].dtype) for k, v in record.state_dict.items()}, strict=True)
    return module.to(device).eval()


@torch.no_grad()
def estimate_w_avg(G: torch.nn.Module, num: int = W_AVG_SAMPLES, seed: int = 0) -> torch.Tensor:
    """Mean of ``num`` mapped latents, for checkpoints without ``w_avg`` (rosinality's ``mean_latent``)."""
    device = next(G.parameters()).device
    z = torch.randn([num, G.z_dim], generator=torch.Generator().manual_seed(seed)).to(device)
    c = torch.zeros([num, getattr(G, "c_dim", 0)], device=device)
    return G.mapping(z, c, truncation_psi=1)[:, 0].mean(dim=0)


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
            state = {**rec.state_dict, "mapping.w_avg": torch.zeros([rec.init_kwargs["w_dim"]])}
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
    state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in module.state_dict().items()}
    return NetworkRecord(kind or type(module).__name__, plain(dict(init_kwargs)), state)


# ----------------------------------------------------------------------------------------------------------
# Writing.


def write_chunks(f: BinaryIO, data: bytes | memoryview, chunk_size: int = 1 << 24) -> None:
    """Write ``data`` to ``f`` in chunks (a seam for tests that simulate a failure mid-write)."""
    view = memoryview(data)
    for start in range(0, len(view), chunk_size):
        f.write(view[start : start + chunk_size])


def atomic_write(path: str | os.PathLike[str], writer: Callable[[BinaryIO], None]) -> Path:
    """Write a file atomically (:func:`rootedgan.fileio.atomic_open`: ``writer`` fills a fsynced temp file
    that then replaces ``path``); OS errors become a :class:`CheckpointError` naming the path."""
    path = Path(path).expanduser()
    try:
        with atomic_open(path, "wb") as f:
            writer(f)
    except OSError as err:
        raise CheckpointError(
            f"cannot write {path}: {err.strerror or err}. Check that the folder {path.parent} exists, is a "
            "folder, is writable and has free space."
        ) from err
    return path
