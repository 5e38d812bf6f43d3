"""A safe reader for NVIDIA stylegan2-ada-pytorch network pickles (``network-snapshot-*.pkl``).

NVIDIA's loader executes the Python source embedded in the pickle; ours never does: a restricted unpickler
resolves only an allow-list of globals (tensor rebuilders, containers, numpy scalars) and keeps each
persistent object's ``meta`` (class name, constructor arguments, ``state``) as plain data. Format facts:
``docs/DESIGN.md``. TensorFlow-era pickles go to :mod:`rootedgan.checkpoints.tf_legacy`.
"""

from __future__ import annotations

import inspect
import io
import mmap
import os
import warnings
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from rootedgan.checkpoints import tf_legacy
from rootedgan.checkpoints.records import (
    CLASSES,
    DISCRIMINATOR,
    GENERATOR,
    NETWORK_NAMES,
    SHARED_GLOBALS,
    NetworkRecord,
    RestrictedUnpickler,
    check_metadata,
    first_line,
    jsonable,
    load_pickle,
    plain,
    refused_global,
)
from rootedgan.errors import CheckpointError, UnsafeCheckpointError

FORMAT = "nvidia-pkl"

# Module prefixes a `class_name` may carry (NVIDIA writes the bare class name; we accept qualified ones).
_STYLEGAN2_MODULES = ("", "training.networks", "training.networks_stylegan2")
_STYLEGAN3_MARKERS = ("networks_stylegan3", "filtered_lrelu")
_STYLEGAN3_CLASSES = ("SynthesisInput",)


class PersistentObject:
    """Stand-in for an object NVIDIA pickled through ``torch_utils.persistence``: just its ``meta``."""

    def __init__(self, meta: Any) -> None:
        if not isinstance(meta, Mapping):
            raise CheckpointError("a persistent object in the pickle has no metadata dict (corrupt file?)")
        self.meta = dict(meta)

    @property
    def class_name(self) -> str:
        return str(self.meta.get("class_name", ""))

    @property
    def state(self) -> dict[str, Any]:
        state = self.meta.get("state")
        return dict(state) if isinstance(state, Mapping) else {}

    def __setstate__(self, state: Any) -> None:
        raise CheckpointError("a persistent object in the pickle carries extra state (corrupt file?)")

    def __repr__(self) -> str:
        return f"PersistentObject({self.class_name!r})"


def _is_storage(obj: Any) -> bool:
    return isinstance(obj, torch.UntypedStorage | torch.TypedStorage)


def _int_tuple(obj: Any, what: str) -> tuple[int, ...]:
    if isinstance(obj, torch.Size):
        obj = tuple(obj)
    if not isinstance(obj, tuple | list) or not all(isinstance(v, int) and v >= 0 for v in obj):
        raise CheckpointError(f"a tensor in the pickle has an invalid {what} {obj!r} (corrupt file?)")
    return tuple(obj)


def _rebuild_tensor_v2(
    storage: Any, storage_offset: Any, size: Any, stride: Any, requires_grad: Any = False, *hooks: Any
) -> torch.Tensor:
    """Checked ``torch._utils._rebuild_tensor_v2``: a storage plus integer geometry; hooks are dropped."""
    if not _is_storage(storage):
        raise CheckpointError("a tensor in the pickle is not backed by a storage (corrupt file?)")
    if not isinstance(storage_offset, int) or storage_offset < 0:
        raise CheckpointError("a tensor in the pickle has an invalid storage offset (corrupt file?)")
    size, stride = _int_tuple(size, "size"), _int_tuple(stride, "stride")
    if len(size) != len(stride):
        raise CheckpointError("a tensor in the pickle has mismatched size and stride (corrupt file?)")
    return torch._utils._rebuild_tensor_v2(
        storage, storage_offset, size, stride, bool(requires_grad), OrderedDict()
    )


def _rebuild_parameter(data: Any, *ignored: Any) -> torch.Tensor:
    """Checked ``torch._utils._rebuild_parameter`` (and ``_with_state``): a plain tensor."""
    if not isinstance(data, torch.Tensor):
        raise CheckpointError("a parameter in the pickle holds no tensor (corrupt file?)")
    return data.detach()


def _load_from_bytes(data: Any) -> Any:
    """Replaces ``torch.storage._load_from_bytes``: a nested ``torch.save`` archive, loaded weights-only."""
    if not isinstance(data, bytes | bytearray):
        raise CheckpointError("a tensor storage in the pickle is not a byte string (corrupt file?)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TypedStorage deprecation notices from legacy archives
            storage = torch.load(io.BytesIO(bytes(data)), weights_only=True, map_location="cpu")
    except Exception as err:  # UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ...
        what = refused_global(err)
        if what is not None:
            raise UnsafeCheckpointError(
                f"a tensor storage archive inside the pickle references {what}, which is not on the "
                "allow-list of tensor types (unpickling it could run arbitrary code); the file was not loaded"
            ) from err
        raise CheckpointError(f"a tensor storage inside the pickle is corrupt ({first_line(err)})") from err
    if not _is_storage(storage):
        raise CheckpointError(
            f"a tensor storage inside the pickle holds a {type(storage).__name__}, not a storage"
        )
    return storage


_ALLOWED: dict[tuple[str, str], Any] = {
    **SHARED_GLOBALS,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): PersistentObject,  # keeps meta, runs nothing
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_from_bytes,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("__builtin__", "set"): set,
}


class TensorFlowPickle(CheckpointError):
    """Raised while unpickling when the file turns out to be TensorFlow-era (read by ``tf_legacy``)."""


class SafeUnpickler(RestrictedUnpickler):
    """Resolves :data:`_ALLOWED` and torch's dtypes and ``Size``; a TensorFlow class means a TensorFlow-era
    pickle."""

    allowed = _ALLOWED

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and (isinstance(getattr(torch, name, None), torch.dtype) or name == "Size"):
            return getattr(torch, name)
        if module.startswith("dnnlib.tflib"):
            raise TensorFlowPickle("a TensorFlow-era pickle: read by rootedgan.checkpoints.tf_legacy")
        return super().find_class(module, name)


def _file_contains(path: Path, needle: bytes) -> bool:
    """Whether ``needle`` occurs in the file (memory-mapped, for error messages only)."""
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return data.find(needle) >= 0
    except (OSError, ValueError):  # ValueError: an empty file
        return False


def unpickle(path: str | os.PathLike[str]) -> Any:
    """Unpickle ``path`` with :class:`SafeUnpickler`; errors become :class:`CheckpointError`."""
    try:
        return load_pickle(path, SafeUnpickler, "a network pickle")
    except UnsafeCheckpointError as err:
        if _file_contains(Path(path), b"dnnlib.tflib"):  # a global refused before the first TensorFlow one
            raise TensorFlowPickle(f"{path} is a TensorFlow-era pickle") from err
        raise


# ----------------------------------------------------------------------------------------------------------
# From the persistent-object tree to records.

# A StyleGAN2 network has a few hundred submodules at most a handful of levels deep. A pickle can share one
# object under many names, so the tree is walked with a budget: each visit counts, however shared.
MAX_MODULES = 10_000
MAX_MODULE_DEPTH = 32


def _iter_objects(obj: PersistentObject, prefix: str = ""):
    """``(prefix, object)`` for ``obj`` and its persistent submodules, depth first, within the budget."""
    stack: list[tuple[str, PersistentObject, int]] = [(prefix, obj, 0)]
    visited = 0
    while stack:
        name, node, depth = stack.pop()
        visited += 1
        if visited > MAX_MODULES:
            raise CheckpointError(
                f"the network holds more than {MAX_MODULES} submodules (shared references counted each "
                "time); refused"
            )
        if depth > MAX_MODULE_DEPTH:
            raise CheckpointError(
                f"the network's submodules are nested more than {MAX_MODULE_DEPTH} levels deep "
                "(or refer to themselves); refused"
            )
        yield name, node
        children = node.state.get("_modules") or {}
        if not isinstance(children, Mapping):
            raise CheckpointError(f"{node.class_name}._modules is not a dict (corrupt file?)")
        for child_name, child in reversed(list(children.items())):
            if child is None:
                continue
            if not isinstance(child, PersistentObject):
                raise CheckpointError(
                    f"submodule {name}{child_name} of {node.class_name} is not a persistent network object"
                )
            stack.append((f"{name}{child_name}.", child, depth + 1))


def _check_stylegan3(obj: PersistentObject, source: str) -> None:
    for _, sub in _iter_objects(obj):
        module, _, name = sub.class_name.rpartition(".")
        src = sub.meta.get("module_src")
        src_markers = isinstance(src, str) and any(m in src for m in _STYLEGAN3_MARKERS)
        if name in _STYLEGAN3_CLASSES or "networks_stylegan3" in module or src_markers:
            raise CheckpointError(
                f"{source} holds a StyleGAN3 network ({sub.class_name}); StyleGAN3 is not supported yet. "
                "Use a StyleGAN2 / StyleGAN2-ADA pickle (stylegan2-ada-pytorch, or the stylegan3 "
                "repository's stylegan2-*.pkl files)."
            )


def flatten_state(obj: PersistentObject, prefix: str = "") -> dict[str, torch.Tensor]:
    """The state dict of a persistent module tree: parameters, persistent buffers, children recursively."""
    out: dict[str, torch.Tensor] = {}
    for path, node in _iter_objects(obj, prefix):
        state = node.state
        non_persistent = state.get("_non_persistent_buffers_set") or set()
        for group in ("_parameters", "_buffers"):
            tensors = state.get(group) or {}
            if not isinstance(tensors, Mapping):
                raise CheckpointError(f"{node.class_name}.{group} is not a dict (corrupt file?)")
            for name, value in tensors.items():
                if value is None or (group == "_buffers" and name in non_persistent):
                    continue
                if not isinstance(value, torch.Tensor):
                    raise CheckpointError(
                        f"{path}{name} of {node.class_name} is not a tensor (corrupt file?)"
                    )
                out[path + name] = value.detach()
    return out


def init_kwargs_of(obj: PersistentObject, kind: str | None = None) -> dict[str, Any]:
    """Constructor kwargs of a persistent object: ``_init_kwargs`` plus ``_init_args`` bound by name (our
    constructors take NVIDIA's parameters in NVIDIA's order)."""
    state = obj.state
    args = state.get("_init_args") or ()
    raw_kwargs = state.get("_init_kwargs") or {}
    what = f"the constructor arguments of {obj.class_name or 'a network'}"
    check_metadata(args, what)
    check_metadata(raw_kwargs, what)
    if not isinstance(args, list | tuple) or not isinstance(raw_kwargs, Mapping):
        raise CheckpointError(f"{what} are malformed (corrupt file?)")
    kwargs = plain(dict(raw_kwargs))
    names = list(inspect.signature(CLASSES[kind]).parameters) if kind in CLASSES else []
    if len(args) > len(names):
        raise CheckpointError(
            f"{obj.class_name} was constructed with {len(args)} positional arguments, "
            "which this loader cannot map to keyword arguments"
        )
    for arg_name, value in zip(names, args, strict=False):
        kwargs.setdefault(arg_name, plain(value))
    return kwargs


def record_of(obj: Any, slot: str, source: str) -> NetworkRecord | None:
    """The record of one network slot (``G``, ``D``, ``G_ema``) of the pickle, or None when empty."""
    if obj is None:
        return None
    if not isinstance(obj, PersistentObject):
        raise CheckpointError(f"{source}: `{slot}` is a {type(obj).__name__}, not a network")
    _check_stylegan3(obj, source)
    module, _, name = obj.class_name.rpartition(".")
    if module not in _STYLEGAN2_MODULES or name not in CLASSES:
        raise CheckpointError(
            f"{source}: `{slot}` is a {obj.class_name or 'nameless object'}; only StyleGAN2 "
            "Generator/Discriminator networks (stylegan2-ada-pytorch) are supported"
        )
    expected = DISCRIMINATOR if slot == "D" else GENERATOR
    if name != expected:
        raise CheckpointError(f"{source}: `{slot}` is a {name}, expected a {expected}")
    return NetworkRecord(kind=name, init_kwargs=init_kwargs_of(obj, name), state_dict=flatten_state(obj))


def _aux_meta(obj: Any, what: str) -> Any:
    """A JSON-friendly description of ``augment_pipe`` / ``training_set_kwargs`` (nothing is built)."""
    if obj is None:
        return None
    check_metadata(obj, what)
    if isinstance(obj, PersistentObject):
        return {"class_name": obj.class_name, "init_kwargs": jsonable(init_kwargs_of(obj))}
    return jsonable(obj)


def read_nvidia_pickle(path: str | os.PathLike[str]) -> tuple[dict[str, NetworkRecord | None], dict]:
    """Read an NVIDIA network pickle into records for ``G``, ``D``, ``G_ema`` and extra metadata (with a
    ``tensorflow`` entry for a TensorFlow-era pickle, read by :mod:`rootedgan.checkpoints.tf_legacy`)."""
    source = str(path)
    try:
        data = unpickle(path)
    except TensorFlowPickle:
        return tf_legacy.read_tf_pickle(path)
    if isinstance(data, PersistentObject):  # a lone pickled network
        data = {"G_ema" if data.class_name.rpartition(".")[2] == GENERATOR else "D": data}
    if not isinstance(data, Mapping):
        raise CheckpointError(
            f"{source} is a pickle of a {type(data).__name__}, not an NVIDIA network pickle "
            "(a dict with G, D, G_ema)"
        )
    try:
        records = {slot: record_of(data.get(slot), slot, source) for slot in NETWORK_NAMES}
    except CheckpointError as err:
        if source in str(err):
            raise
        raise type(err)(f"{source}: {err}") from None
    except Exception as err:  # a malformed tree (wrong types where dicts/tensors belong)
        raise CheckpointError(
            f"{source} is corrupt: its network structure is malformed ({type(err).__name__}: {err})"
        ) from err
    if records["G"] is None and records["G_ema"] is None:
        raise CheckpointError(
            f"{source} holds no generator: expected the keys G and/or G_ema, found {sorted(map(str, data))}"
        )
    extra = {
        key: _aux_meta(data.get(key), f"{source}: {key}") for key in ("augment_pipe", "training_set_kwargs")
    }
    return records, extra
