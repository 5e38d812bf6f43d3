"""A safe reader for NVIDIA stylegan2-ada-pytorch network pickles (``network-snapshot-*.pkl``).

NVIDIA's own loader rebuilds each network by executing the Python source embedded in the pickle. We
never do: a restricted :class:`pickle.Unpickler` resolves only an allow-list of globals (tensor
rebuilders, containers, numpy scalars), and the persistent-object hook returns the object's ``meta``
dict (class name, constructor arguments, ``state``) in a marker instead of running anything. From that
tree we collect a flat state dict per network and load it into our own ``Generator``/``Discriminator``.

Format facts are in ``docs/DESIGN.md`` ("The network pickle format"). TensorFlow-era pickles (``(G, D, Gs)``
of ``dnnlib.tflib`` networks) are handed to :mod:`rootedgan.checkpoints.tf_legacy`.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import warnings
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rootedgan.checkpoints import tf_legacy
from rootedgan.checkpoints.records import (
    DISCRIMINATOR,
    GENERATOR,
    NETWORK_NAMES,
    NetworkRecord,
    check_metadata,
    jsonable,
    plain,
)
from rootedgan.errors import CheckpointError, UnsafeCheckpointError

FORMAT = "nvidia-pkl"

TF_ROUTE = (
    "it is a TensorFlow-era StyleGAN/StyleGAN2 pickle (a tuple (G, D, Gs) of dnnlib.tflib networks), "
    "which cannot be read without TensorFlow. Convert it to a PyTorch pickle first with NVIDIA's "
    "stylegan2-ada-pytorch `legacy.py` (e.g. `python legacy.py --source=OLD.pkl --dest=NEW.pkl`, "
    "or load it with `legacy.load_network_pkl` and save the result), then load the new file"
)

# Positional parameter names of NVIDIA's (and our) constructors, to bind `_init_args`.
_POSITIONAL = {
    GENERATOR: (
        "z_dim", "c_dim", "w_dim", "img_resolution", "img_channels", "mapping_kwargs", "synthesis_kwargs",
    ),
    DISCRIMINATOR: (
        "c_dim", "img_resolution", "img_channels", "architecture", "channel_base", "channel_max",
        "num_fp16_res", "conv_clamp", "cmap_dim", "block_kwargs", "mapping_kwargs", "epilogue_kwargs",
    ),
}  # fmt: skip

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

    @property
    def module_src(self) -> str:
        src = self.meta.get("module_src", "")
        return src if isinstance(src, str) else ""

    def __setstate__(self, state: Any) -> None:
        raise CheckpointError("a persistent object in the pickle carries extra state (corrupt file?)")

    def __repr__(self) -> str:
        return f"PersistentObject({self.class_name!r})"


class _EasyDict(dict):
    """Stand-in for ``dnnlib.util.EasyDict`` (a dict with attribute access): unpickled as a dict."""


def _reconstruct_persistent_obj(meta: Any) -> PersistentObject:
    """Replaces ``torch_utils.persistence._reconstruct_persistent_obj``: keeps ``meta``, runs nothing."""
    return PersistentObject(meta)


def _is_storage(obj: Any) -> bool:
    return isinstance(obj, torch.UntypedStorage | torch.TypedStorage)


def _int_tuple(obj: Any, what: str) -> tuple[int, ...]:
    if isinstance(obj, torch.Size):
        obj = tuple(obj)
    if not isinstance(obj, tuple | list) or not all(isinstance(v, int) and v >= 0 for v in obj):
        raise CheckpointError(f"a tensor in the pickle has an invalid {what} {obj!r} (corrupt file?)")
    return tuple(obj)


def _rebuild_tensor_v2(
    storage: Any,
    storage_offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any = False,
    backward_hooks: Any = None,
    metadata: Any = None,
) -> torch.Tensor:
    """Checked ``torch._utils._rebuild_tensor_v2``: a storage plus integer geometry, no hooks."""
    if not _is_storage(storage):
        raise CheckpointError("a tensor in the pickle is not backed by a storage (corrupt file?)")
    if not isinstance(storage_offset, int) or storage_offset < 0:
        raise CheckpointError("a tensor in the pickle has an invalid storage offset (corrupt file?)")
    size_t = _int_tuple(size, "size")
    stride_t = _int_tuple(stride, "stride")
    if len(size_t) != len(stride_t):
        raise CheckpointError("a tensor in the pickle has mismatched size and stride (corrupt file?)")
    tensor = torch._utils._rebuild_tensor_v2(
        storage, storage_offset, size_t, stride_t, bool(requires_grad), OrderedDict()
    )
    return tensor


def _rebuild_parameter(
    data: Any, requires_grad: Any, backward_hooks: Any = None, *state: Any
) -> torch.Tensor:
    """Checked ``torch._utils._rebuild_parameter`` (and ``_with_state``): returns a plain tensor."""
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
    except pickle.UnpicklingError as err:
        msg = str(err)
        if "weights_only" in msg or "Unsupported" in msg or "Weights only" in msg:
            found = re.search(r"GLOBAL ([\w.]+)", msg)
            what = (
                f"the global `{found.group(1)}`" if found else "code outside torch's weights-only allow-list"
            )
            raise UnsafeCheckpointError(
                f"a tensor storage archive inside the pickle references {what}, which is not on the "
                "allow-list of tensor types (unpickling it could run arbitrary code); the file was not loaded"
            ) from err
        raise CheckpointError(f"a tensor storage inside the pickle is corrupt ({_first_line(err)})") from err
    except CheckpointError:
        raise
    except Exception as err:  # RuntimeError, EOFError, zipfile.BadZipFile, ...
        raise CheckpointError(f"a tensor storage inside the pickle is corrupt ({_first_line(err)})") from err
    if not _is_storage(storage):
        raise CheckpointError(
            f"a tensor storage inside the pickle holds a {type(storage).__name__}, not a storage"
        )
    return storage


def _numpy_dtype(spec: Any, align: Any = False, copy: Any = False) -> np.dtype:
    """Checked ``numpy.dtype``: only numeric/bool dtypes named by a string."""
    if not isinstance(spec, str):
        raise UnsafeCheckpointError(f"refused numpy.dtype({spec!r}) in the pickle; the file was not loaded")
    try:
        dtype = np.dtype(spec)
    except TypeError as err:
        raise CheckpointError(f"invalid numpy dtype {spec!r} in the pickle (corrupt file?)") from err
    if dtype.kind not in "biufc" or dtype.hasobject:
        raise UnsafeCheckpointError(f"refused numpy dtype {spec!r} in the pickle; the file was not loaded")
    return dtype


def _numpy_scalar(dtype: Any, data: Any = None) -> np.generic:
    """Checked ``numpy.core.multiarray.scalar``: rebuilt from raw bytes of a numeric dtype only."""
    if not isinstance(dtype, np.dtype) or dtype.hasobject or dtype.kind not in "biufc":
        raise UnsafeCheckpointError("refused a numpy scalar of a non-numeric dtype; the file was not loaded")
    if not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise CheckpointError("a numpy scalar in the pickle has the wrong number of bytes (corrupt file?)")
    return np.frombuffer(data, dtype=dtype)[0]


def _latin1_encode(text: Any, encoding: Any = "utf-8") -> bytes:
    """Checked ``_codecs.encode``: how protocol-2 pickles store byte strings (latin-1 text only)."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafeCheckpointError("refused a _codecs.encode call that is not latin-1 bytes; not loaded")
    return text.encode("latin-1")


def _torch_global(name: str) -> Any:
    value = getattr(torch, name, None)
    if isinstance(value, torch.dtype) or value is torch.Size:
        return value
    return None


_ALLOWED: dict[tuple[str, str], Any] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_from_bytes,
    ("collections", "OrderedDict"): OrderedDict,
    ("numpy", "dtype"): _numpy_dtype,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("dnnlib.util", "EasyDict"): _EasyDict,
    ("dnnlib", "EasyDict"): _EasyDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("__builtin__", "set"): set,
    ("_codecs", "encode"): _latin1_encode,
}


class TensorFlowPickle(CheckpointError):
    """Raised while unpickling when the file turns out to be TensorFlow-era (read by ``tf_legacy``)."""


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that resolves only allow-listed globals and never executes embedded code."""

    def find_class(self, module: str, name: str) -> Any:
        target = _ALLOWED.get((module, name))
        if target is not None:
            return target
        if module == "torch":
            value = _torch_global(name)
            if value is not None:
                return value
        if module.startswith("dnnlib.tflib"):
            raise TensorFlowPickle("a TensorFlow-era pickle: read by rootedgan.checkpoints.tf_legacy")
        raise UnsafeCheckpointError(
            f"the pickle references the global `{module}.{name}`, which is not on the allow-list of "
            "tensor and container types (unpickling it could run arbitrary code); the file was not loaded"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafeCheckpointError(
            "the pickle uses persistent ids, which NVIDIA network pickles never contain; "
            "the file was not loaded"
        )


def _first_line(err: BaseException) -> str:
    """The first sentence of an exception's message (torch's messages go on for paragraphs)."""
    text = str(err).strip().splitlines()
    line = text[0] if text else type(err).__name__
    return line.split(". ")[0].rstrip(".")


def _file_contains(path: Path, needle: bytes, chunk: int = 1 << 22) -> bool:
    """Whether ``needle`` occurs in the file (streamed, for error messages only)."""
    tail = b""
    try:
        with open(path, "rb") as f:
            while block := f.read(chunk):
                if needle in tail + block:
                    return True
                tail = block[-len(needle) :]
    except OSError:
        return False
    return False


def unpickle(path: str | os.PathLike[str]) -> Any:
    """Unpickle ``path`` with :class:`SafeUnpickler`; errors become :class:`CheckpointError`."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return SafeUnpickler(f).load()
    except TensorFlowPickle:
        raise
    except UnsafeCheckpointError as err:
        if _file_contains(path, b"dnnlib.tflib"):  # a global refused before the first TensorFlow one
            raise TensorFlowPickle(f"{path} is a TensorFlow-era pickle") from err
        raise UnsafeCheckpointError(f"refused to load {path}: {err}") from None
    except CheckpointError as err:
        raise type(err)(f"{path}: {err}") from None
    except (EOFError, pickle.UnpicklingError) as err:
        raise CheckpointError(
            f"{path} is truncated or corrupt (the pickle ends early or is malformed: {_first_line(err)}). "
            "Download or copy it again."
        ) from err
    except Exception as err:  # anything else a malformed file can trigger: never a raw stack trace
        raise CheckpointError(
            f"{path} is corrupt or not a network pickle ({type(err).__name__}: {_first_line(err)}). "
            "Download or copy it again."
        ) from err


# ----------------------------------------------------------------------------------------------------------
# From the persistent-object tree to records.


def _split_class_name(class_name: str) -> tuple[str, str]:
    module, _, name = class_name.rpartition(".")
    return module, name


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
        module, name = _split_class_name(sub.class_name)
        if (
            name in _STYLEGAN3_CLASSES
            or "networks_stylegan3" in module
            or any(m in sub.module_src for m in _STYLEGAN3_MARKERS)
        ):
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
    """Constructor kwargs of a persistent object: ``_init_kwargs`` plus ``_init_args`` bound by name."""
    state = obj.state
    args = state.get("_init_args") or ()
    raw_kwargs = state.get("_init_kwargs") or {}
    what = f"the constructor arguments of {obj.class_name or 'a network'}"
    check_metadata(args, what)
    check_metadata(raw_kwargs, what)
    if not isinstance(args, list | tuple) or not isinstance(raw_kwargs, Mapping):
        raise CheckpointError(f"{what} are malformed (corrupt file?)")
    kwargs = plain(dict(raw_kwargs))
    if args:
        names = _POSITIONAL.get(kind or "")
        if names is None or len(args) > len(names):
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
    module, name = _split_class_name(obj.class_name)
    if module not in _STYLEGAN2_MODULES or name not in (GENERATOR, DISCRIMINATOR):
        raise CheckpointError(
            f"{source}: `{slot}` is a {obj.class_name or 'nameless object'}; only StyleGAN2 "
            "Generator/Discriminator networks (stylegan2-ada-pytorch) are supported"
        )
    return NetworkRecord(kind=name, init_kwargs=init_kwargs_of(obj, name), state_dict=flatten_state(obj))


def _aux_meta(obj: Any, what: str = "metadata") -> Any:
    """A JSON-friendly description of ``augment_pipe`` / ``training_set_kwargs`` (nothing is built)."""
    if obj is None:
        return None
    check_metadata(obj, what)
    if isinstance(obj, PersistentObject):
        return {"class_name": obj.class_name, "init_kwargs": jsonable(init_kwargs_of(obj))}
    return jsonable(obj)


def read_nvidia_pickle(path: str | os.PathLike[str]) -> tuple[dict[str, NetworkRecord | None], dict]:
    """Read an NVIDIA network pickle into records for ``G``, ``D``, ``G_ema`` and extra metadata.

    A TensorFlow-era pickle (``(G, D, Gs)`` of ``dnnlib.tflib`` networks) is read by
    :mod:`rootedgan.checkpoints.tf_legacy` and converted as NVIDIA's ``legacy.py`` converts it; its extra
    metadata then has a ``tensorflow`` entry.
    """
    source = str(path)
    try:
        data = unpickle(path)
    except TensorFlowPickle:
        return tf_legacy.read_tf_pickle(path)
    if isinstance(data, PersistentObject):  # a lone pickled network
        kind = _split_class_name(data.class_name)[1]
        data = {"G_ema" if kind == GENERATOR else "D": data}
    if isinstance(data, tuple):
        raise CheckpointError(f"refused to load {source}: {TF_ROUTE}")
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
    for slot, rec in records.items():
        expected = DISCRIMINATOR if slot == "D" else GENERATOR
        if rec is not None and rec.kind != expected:
            raise CheckpointError(f"{source}: `{slot}` is a {rec.kind}, expected a {expected}")
    extra = {
        "augment_pipe": _aux_meta(data.get("augment_pipe"), f"{source}: augment_pipe"),
        "training_set_kwargs": _aux_meta(data.get("training_set_kwargs"), f"{source}: training_set_kwargs"),
    }
    return records, extra
