"""A safe reader for TensorFlow-era StyleGAN2 pickles (NVIDIA's ``stylegan2`` and ``stylegan2-ada`` releases):
a pickled ``(G, D, Gs)`` of ``dnnlib.tflib.network.Network`` states (``version``, ``static_kwargs``,
``components``, ``variables``, and ``build_module_src``, which is never run). Only ``Network`` and numpy's
array, dtype and scalar rebuilders are allowed, as value-only stand-ins; the variables are mapped as NVIDIA's
``legacy.py`` maps them (README, "Checkpoints and the safe loader")."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from rootedgan.checkpoints.records import (
    DISCRIMINATOR,
    GENERATOR,
    SHARED_GLOBALS,
    NetworkRecord,
    NumpyDType,
    RestrictedUnpickler,
    check_init_kwargs,
    check_metadata,
    construct,
    first_line,
    jsonable,
    load_pickle,
    plain,
)
from rootedgan.errors import CheckpointError, UnsafeCheckpointError

FORMAT = "nvidia-tf-pkl"

# What NVIDIA's converter (stylegan2-ada-pytorch legacy.py) reads; older Network pickles (StyleGAN1's
# version 2 and 3) are refused by it and by us.
MIN_VERSION = 4
MAX_NETWORKS = 64  # Network objects reachable from one top-level network (G has 3)
MAX_DEPTH = 4  # nesting of components
MAX_VARIABLES = 100_000
MAX_ARRAY_DIMS = 8

SUPPORTED = (
    "rootedgan reads the TensorFlow StyleGAN2 pickles NVIDIA's stylegan2-ada-pytorch legacy.py converts: "
    "(G, D, Gs) networks of the stylegan2 (configs E and F) and stylegan2-ada TensorFlow code"
)


class TFNetwork:
    """Stand-in for ``dnnlib.tflib.network.Network``: only its pickled state dict, as plain data."""

    __slots__ = ("state",)

    def __new__(cls, *args: Any, **kwargs: Any) -> TFNetwork:
        if args or kwargs:  # NEWOBJ of a Network passes no arguments
            raise CheckpointError(
                "a TensorFlow Network in the pickle is built with arguments (corrupt file?)"
            )
        obj = super().__new__(cls)
        obj.state = None
        return obj

    def __setstate__(self, state: Any) -> None:
        if self.state is not None:
            raise CheckpointError("a TensorFlow Network in the pickle is filled twice (corrupt file?)")
        if not isinstance(state, Mapping):
            raise CheckpointError("a TensorFlow Network in the pickle has no state dict (corrupt file?)")
        self.state = dict(state)

    def get(self, key: str, default: Any = None) -> Any:
        return default if self.state is None else self.state.get(key, default)

    @property
    def name(self) -> str:
        name = self.get("name")
        return name if isinstance(name, str) else "?"

    def __repr__(self) -> str:
        return f"TFNetwork({self.name!r})"


class _NDArrayClass:
    """Stands for the class ``numpy.ndarray`` (only ever passed to ``_reconstruct``)."""


class ArrayStub:
    """What ``numpy.core.multiarray._reconstruct`` returns here; ``BUILD`` fills ``array`` from raw bytes."""

    __slots__ = ("array",)

    def __init__(self) -> None:
        self.array: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        if self.array is not None:
            raise CheckpointError("a numpy array in the pickle is filled twice (corrupt file?)")
        if isinstance(state, tuple) and len(state) == 5:
            state = state[1:]  # drop numpy's pickle version
        if not isinstance(state, tuple) or len(state) != 4:
            raise CheckpointError("a numpy array in the pickle has a malformed state (corrupt file?)")
        shape, dtype, is_fortran, raw = state
        if not isinstance(dtype, NumpyDType):
            raise UnsafeCheckpointError(
                "refused a numpy array of a non-numeric dtype; the file was not loaded"
            )
        if (
            not isinstance(shape, tuple)
            or len(shape) > MAX_ARRAY_DIMS
            or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)
        ):
            raise CheckpointError(
                f"a numpy array in the pickle has an invalid shape {shape!r} (corrupt file?)"
            )
        if not isinstance(raw, bytes | bytearray):
            raise CheckpointError("a numpy array in the pickle holds no raw bytes (corrupt file?)")
        resolved = dtype.resolve()
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if count * resolved.itemsize != len(raw):
            raise CheckpointError(
                f"a numpy array in the pickle of shape {shape} {resolved} holds {len(raw)} bytes, expected "
                f"{count * resolved.itemsize} (corrupt file?)"
            )
        flat = np.frombuffer(raw, dtype=resolved, count=count)
        self.array = flat.reshape(shape, order="F" if is_fortran else "C")

    def __repr__(self) -> str:
        return (
            "ArrayStub()" if self.array is None else f"ArrayStub({self.array.dtype}{list(self.array.shape)})"
        )


def _reconstruct(subtype: Any, shape: Any = (0,), dtype_code: Any = b"b") -> ArrayStub:
    """Replaces ``numpy.core.multiarray._reconstruct``: an empty array stand-in for ``BUILD`` to fill."""
    if subtype is not _NDArrayClass:
        raise UnsafeCheckpointError("refused a numpy array of a subclass; the file was not loaded")
    return ArrayStub()


ALLOWED: dict[tuple[str, str], Any] = {
    **SHARED_GLOBALS,
    ("dnnlib.tflib.network", "Network"): TFNetwork,
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): _NDArrayClass,
}


class TFUnpickler(RestrictedUnpickler):
    """Resolves only :data:`ALLOWED`."""

    allowed = ALLOWED
    allow_list = "a TensorFlow network pickle"


def unpickle_tf(path: str | os.PathLike[str]) -> Any:
    """Unpickle a TensorFlow-era pickle with :class:`TFUnpickler`; errors become one-line CheckpointErrors."""
    return load_pickle(path, TFUnpickler, "a TensorFlow network pickle")


# ----------------------------------------------------------------------------------------------------------
# From Network state to variables and kwargs.


def _check_network(net: Any, what: str) -> TFNetwork:
    if not isinstance(net, TFNetwork) or net.state is None:
        raise CheckpointError(f"{what} is not a TensorFlow network (corrupt file?)")
    version = net.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise CheckpointError(
            f"{what} is a dnnlib.tflib network without a version (not a state TensorFlow's pickling wrote; "
            f"corrupt file?). {SUPPORTED}"
        )
    if version < MIN_VERSION:
        raise CheckpointError(
            f"{what} is a TensorFlow network pickle of version {version!r}, older than StyleGAN2's "
            f"(version {MIN_VERSION}): a StyleGAN1 network? {SUPPORTED}"
        )
    return net


def _variables_of(node: TFNetwork, prefix: str, what: str) -> dict[str, np.ndarray]:
    """One network's own variables, named ``prefix + name``, as numpy arrays."""
    variables = node.get("variables", [])
    if not isinstance(variables, list | tuple):
        raise CheckpointError(f"{what}: the variables or components of {node.name} are malformed")
    out = {}
    for item in variables:
        if not (isinstance(item, tuple | list) and len(item) == 2 and isinstance(item[0], str)):
            raise CheckpointError(f"{what}: a variable of {node.name} is not a (name, array) pair")
        name, value = item
        if isinstance(value, np.generic):  # a 0-d variable, as TensorFlow returned it
            out[prefix + name] = np.asarray(value)
        elif isinstance(value, ArrayStub) and value.array is not None:
            out[prefix + name] = value.array
        else:
            raise CheckpointError(f"{what}: the variable {prefix}{name} is not a numpy array")
    return out


def collect_variables(net: TFNetwork, what: str) -> dict[str, np.ndarray]:
    """All variables of ``net`` and its components, named ``component/.../variable`` (as NVIDIA's converter
    names them), as numpy arrays."""
    out: dict[str, np.ndarray] = {}
    stack: list[tuple[str, Any, int]] = [("", net, 0)]
    networks = 0
    while stack:
        prefix, node, depth = stack.pop()
        networks += 1
        if networks > MAX_NETWORKS or depth > MAX_DEPTH:
            raise CheckpointError(f"{what} nests too many sub-networks (corrupt file?)")
        node = _check_network(node, f"{what} ({prefix or 'top level'})")
        components = node.get("components", {}) or {}
        if not isinstance(components, Mapping):
            raise CheckpointError(f"{what}: the variables or components of {node.name} are malformed")
        out.update(_variables_of(node, prefix, what))
        if len(out) > MAX_VARIABLES:
            raise CheckpointError(f"{what} holds more than {MAX_VARIABLES} variables (corrupt file?)")
        for comp_name, comp in components.items():
            if not isinstance(comp_name, str):
                raise CheckpointError(f"{what}: a component of {node.name} has no name (corrupt file?)")
            stack.append((f"{prefix}{comp_name}/", comp, depth + 1))
    return out


class _Settings:
    """A network's TensorFlow ``static_kwargs``, read the way NVIDIA's converter reads them: each setting
    with its default (``None`` replaced by ``none``), and any setting it does not know refused."""

    def __init__(self, raw: Any, what: str) -> None:
        check_metadata(raw, f"{what}: static_kwargs")
        if not isinstance(raw, Mapping):
            raise CheckpointError(f"{what}: static_kwargs is not a dict (corrupt file?)")
        self.raw, self.what, self.read = plain(dict(raw)), what, set()

    def __call__(self, name: str, default: Any = None, none: Any = None) -> Any:
        self.read.add(name)
        value = self.raw.get(name, default)
        return none if value is None else value

    def integer(self, name: str, default: int) -> int:
        value = self(name, default)
        if not isinstance(value, int) or isinstance(value, bool):
            raise CheckpointError(f"{self.what}: the TensorFlow setting {name} = {value!r} is not an integer")
        return value

    def refuse_unknown(self, *ignored: str) -> None:
        self.read.update(ignored)
        name = min(set(self.raw) - self.read, default=None)
        if name is not None:
            raise CheckpointError(
                f"{self.what} was built with the TensorFlow setting {name} = {self.raw[name]!r}, which "
                f"NVIDIA's converter does not support either. {SUPPORTED}"
            )


def generator_kwargs(net: TFNetwork, what: str = "G") -> dict[str, Any]:
    """Our ``Generator`` constructor arguments for a TensorFlow ``G_main`` network (as NVIDIA converts)."""
    s = _Settings(net.get("static_kwargs", {}), what)
    kwargs = {
        "z_dim": s("latent_size", 512),
        "c_dim": s("label_size", 0),
        "w_dim": s("dlatent_size", 512),
        "img_resolution": s("resolution", 1024),
        "img_channels": s("num_channels", 3),
        "mapping_kwargs": {
            "num_layers": s("mapping_layers", 8),
            "embed_features": s("label_fmaps"),
            "layer_features": s("mapping_fmaps"),
            "activation": s("mapping_nonlinearity", "lrelu"),
            "lr_multiplier": s("mapping_lrmul", 0.01),
            "w_avg_beta": s("w_avg_beta", 0.995, none=1),
        },
        "synthesis_kwargs": {
            "channel_base": s.integer("fmap_base", 16384) * 2,
            "channel_max": s("fmap_max", 512),
            "num_fp16_res": s("num_fp16_res", 0),
            "conv_clamp": s("conv_clamp"),
            "architecture": s("architecture", "skip"),
            "resample_filter": s("resample_kernel", [1, 3, 3, 1]),
            "use_noise": s("use_noise", True),
            "activation": s("nonlinearity", "lrelu"),
        },
    }
    s.refuse_unknown("truncation_psi", "truncation_cutoff", "style_mixing_prob", "structure")
    return kwargs


def discriminator_kwargs(net: TFNetwork, what: str = "D") -> dict[str, Any]:
    """Our ``Discriminator`` constructor arguments for a TensorFlow ``D`` network (as NVIDIA converts)."""
    s = _Settings(net.get("static_kwargs", {}), what)
    act = s("nonlinearity", "lrelu")
    cmap = s("mapping_fmaps")
    kwargs = {
        "c_dim": s("label_size", 0),
        "img_resolution": s("resolution", 1024),
        "img_channels": s("num_channels", 3),
        "architecture": s("architecture", "resnet"),
        "channel_base": s.integer("fmap_base", 16384) * 2,
        "channel_max": s("fmap_max", 512),
        "num_fp16_res": s("num_fp16_res", 0),
        "conv_clamp": s("conv_clamp"),
        "cmap_dim": cmap,
        "block_kwargs": {
            "activation": act,
            "resample_filter": s("resample_kernel", [1, 3, 3, 1]),
            "freeze_layers": s("freeze_layers", 0),
        },
        "mapping_kwargs": {
            "num_layers": s("mapping_layers", 0),
            "embed_features": cmap,
            "layer_features": cmap,
            "activation": act,
            "lr_multiplier": s("mapping_lrmul", 0.1),
        },
        "epilogue_kwargs": {
            "mbstd_group_size": s("mbstd_group_size"),
            "mbstd_num_channels": s("mbstd_num_features", 1),
            "activation": act,
        },
    }
    s.refuse_unknown("structure")
    return kwargs


# ----------------------------------------------------------------------------------------------------------
# Variables -> our state dict.


class _Variables:
    """TensorFlow variables by name; a missing one is a one-line error naming it."""

    def __init__(self, arrays: dict[str, np.ndarray], what: str) -> None:
        self.arrays, self.what = arrays, what

    def __getitem__(self, name: str) -> np.ndarray:
        value = self.arrays.get(name)
        if value is None:
            scope = name.rsplit("/", 2)[0]
            near = sorted(k for k in self.arrays if k.startswith(scope.split("/")[0] + "/"))[:6]
            hint = f" (it has e.g. {', '.join(near)})" if near else ""
            raise CheckpointError(
                f"{self.what} has no variable {name}, which our {self.what.split()[0]} needs{hint}: a "
                f"network configuration NVIDIA's converter does not support either? {SUPPORTED}"
            )
        return value

    def dense(self, scope: str, param: str) -> np.ndarray:
        """``scope/param`` of a dense layer: a weight from TensorFlow's ``[in, out]`` to ``[out, in]``."""
        value = self[f"{scope}/{param}"]
        return value.T if param.endswith("weight") else value

    def conv(self, scope: str, param: str, up: bool = False) -> np.ndarray:
        """``scope/param`` of a convolution: a weight from TensorFlow's ``[kh, kw, in, out]`` to ``[out, in,
        kh, kw]``, flipped for an up-sampling conv (which TensorFlow ran as a transposed convolution)."""
        value = self[f"{scope}/{param}"]
        if param != "weight":
            return value
        return (value[::-1, ::-1] if up else value).transpose(3, 2, 0, 1)


Rule = tuple[str, Callable[[re.Match, _Variables], np.ndarray | None]]


def _synthesis_value(m: re.Match, tf: _Variables) -> np.ndarray:
    """A synthesis layer's tensor: ``m`` = (resolution, conv0|conv1|torgb, parameter)."""
    res, layer, param = m[1], m[2], m[3]
    scope = {"conv0": "Conv0_up", "conv1": "Conv" if res == "4" else "Conv1", "torgb": "ToRGB"}[layer]
    base = f"synthesis/{res}x{res}/{scope}"
    if param == "affine.weight":
        return tf.dense(base, "mod_weight")
    if param == "affine.bias":
        return tf[f"{base}/mod_bias"] + 1  # TensorFlow adds the 1 after the bias; ours is in the bias
    if param == "noise_const":
        index = 0 if res == "4" else 2 * (int(res).bit_length() - 1) - (5 if layer == "conv0" else 4)
        return tf[f"synthesis/noise{index}"][0, 0]
    return tf.conv(base, param, up=layer == "conv0")  # weight, bias, noise_strength


# Our state dict key (a full match) -> its value from the TensorFlow variables; None keeps the constructed
# buffer (the resampling filters).
_GENERATOR_RULES: list[Rule] = [
    (r".*resample_filter", lambda m, tf: None),
    (r"mapping\.w_avg", lambda m, tf: tf["dlatent_avg"]),
    (r"mapping\.embed\.(weight|bias)", lambda m, tf: tf.dense("mapping/LabelEmbed", m[1])),
    (r"mapping\.fc(\d+)\.(weight|bias)", lambda m, tf: tf.dense(f"mapping/Dense{m[1]}", m[2])),
    (r"synthesis\.b4\.const", lambda m, tf: tf["synthesis/4x4/Const/const"][0]),
    (
        r"synthesis\.b(\d+)\.skip\.weight",
        lambda m, tf: tf.conv(f"synthesis/{m[1]}x{m[1]}/Skip", "weight", up=True),
    ),
    (r"synthesis\.b(\d+)\.(conv0|conv1|torgb)\.(.+)", _synthesis_value),
]
_D_SCOPES = {"fromrgb": "FromRGB", "conv0": "Conv0", "conv1": "Conv1_down", "skip": "Skip"}
_DISCRIMINATOR_RULES: list[Rule] = [
    (r".*resample_filter", lambda m, tf: None),
    (r"mapping\.embed\.(weight|bias)", lambda m, tf: tf.dense("LabelEmbed", m[1])),
    (r"mapping\.fc(\d+)\.(weight|bias)", lambda m, tf: tf.dense(f"Mapping{m[1]}", m[2])),
    (r"b4\.fc\.(weight|bias)", lambda m, tf: tf.dense("4x4/Dense0", m[1])),
    (r"b4\.out\.(weight|bias)", lambda m, tf: tf.dense("Output", m[1])),
    (r"b4\.conv\.(weight|bias)", lambda m, tf: tf.conv("4x4/Conv", m[1])),
    (
        r"b(\d+)\.(fromrgb|conv0|conv1|skip)\.(weight|bias)",
        lambda m, tf: tf.conv(f"{m[1]}x{m[1]}/{_D_SCOPES[m[2]]}", m[3]),
    ),
]


def _value(key: str, tf: _Variables, rules: list[Rule], what: str) -> np.ndarray | None:
    for pattern, value_of in rules:
        if m := re.fullmatch(pattern, key):
            return value_of(m, tf)
    raise CheckpointError(f"no TensorFlow variable is known for our {what}'s {key}")


def _record(kind: str, kwargs: dict[str, Any], tf: _Variables, rules: list[Rule], what: str) -> NetworkRecord:
    """Plan our network (no allocation) and fill its state dict from the variables, checking every shape."""
    check_init_kwargs(kind, kwargs, f" {what}")
    planned = construct(NetworkRecord(kind, kwargs, {}), what, meta=True).state_dict()
    state: dict[str, torch.Tensor] = {}
    for key, expected in planned.items():
        value = _value(key, tf, rules, kind.lower())
        if value is None:
            if expected.is_meta:
                raise CheckpointError(f"{what}: no value for {key}")
            state[key] = expected.detach().clone()
            continue
        array = np.array(value, dtype=np.float32, order="C")  # a writable, native float32 copy
        if tuple(array.shape) != tuple(expected.shape):
            raise CheckpointError(
                f"{what}: the TensorFlow variable for {key} has shape {list(array.shape)}, our network built "
                f"from its settings needs {list(expected.shape)}: a network configuration NVIDIA's "
                f"converter does not support either? {SUPPORTED}"
            )
        state[key] = torch.from_numpy(array)
    return NetworkRecord(kind=kind, init_kwargs=kwargs, state_dict=state)


def generator_record(net: TFNetwork, what: str = "G") -> NetworkRecord:
    """Our generator's record for a TensorFlow generator network."""
    arrays = collect_variables(net, what)
    if any(re.fullmatch(r"synthesis/ToRGB_lod\d+/.*", name) for name in arrays):
        raise CheckpointError(
            f"{what} is a progressive-growing generator (ToRGB_lod layers: StyleGAN2 configs A-D or "
            f"StyleGAN1), which NVIDIA's converter does not support either. {SUPPORTED}"
        )
    kwargs = generator_kwargs(net, what)
    tf = _Variables(arrays, f"{what} (TensorFlow generator)")
    return _record(GENERATOR, kwargs, tf, _GENERATOR_RULES, what)


def discriminator_record(net: TFNetwork, what: str = "D") -> NetworkRecord:
    """Our discriminator's record for a TensorFlow discriminator network."""
    arrays = collect_variables(net, what)
    kwargs = discriminator_kwargs(net, what)
    for name, value in list(arrays.items()):  # NVIDIA's converter: per-lod FromRGB -> 'orig' architecture
        m = re.fullmatch(r"FromRGB_lod(\d+)/(.*)", name)
        if m:
            res = kwargs["img_resolution"] // 2 ** int(m[1])
            arrays[f"{res}x{res}/FromRGB/{m[2]}"] = value
            kwargs["architecture"] = "orig"
    tf = _Variables(arrays, f"{what} (TensorFlow discriminator)")
    return _record(DISCRIMINATOR, kwargs, tf, _DISCRIMINATOR_RULES, what)


def _describe(net: TFNetwork) -> dict[str, Any]:
    comps = net.get("components", {}) or {}
    return {
        "name": net.name,
        "version": net.get("version"),
        "build_func_name": net.get("build_func_name"),
        "static_kwargs": jsonable(net.get("static_kwargs", {})),
        "components": {
            str(k): v.get("build_func_name") if isinstance(v, TFNetwork) else None for k, v in comps.items()
        },
    }


def is_tf_networks(data: Any) -> bool:
    """Whether an unpickled object is NVIDIA's TensorFlow ``(G, D, Gs)`` tuple."""
    return isinstance(data, tuple) and len(data) == 3 and all(isinstance(n, TFNetwork) for n in data)


def read_tf_pickle(path: str | os.PathLike[str]) -> tuple[dict[str, NetworkRecord | None], dict[str, Any]]:
    """Read a TensorFlow-era StyleGAN2 pickle into records for ``G``, ``D``, ``G_ema`` and extra metadata."""
    data = unpickle_tf(path)
    if not is_tf_networks(data):
        found = f"a tuple of {len(data)} items" if isinstance(data, tuple) else f"a {type(data).__name__}"
        raise CheckpointError(
            f"{path} is a TensorFlow-era pickle but holds {found}, not NVIDIA's (G, D, Gs) networks"
        )
    G, D, Gs = data
    try:
        records = {
            "G": generator_record(G, f"{path}: G"),
            "D": discriminator_record(D, f"{path}: D"),
            "G_ema": generator_record(Gs, f"{path}: Gs"),
        }
        tensorflow = {"G": _describe(G), "D": _describe(D), "Gs": _describe(Gs)}
    except CheckpointError:
        raise
    except Exception as err:  # a malformed tree (wrong types where arrays/dicts belong)
        raise CheckpointError(
            f"{path} is corrupt: its TensorFlow network structure is malformed ({type(err).__name__}: "
            f"{first_line(err)})"
        ) from err
    note = "converted from a TensorFlow StyleGAN2 pickle as NVIDIA's legacy.py converts it (Gs -> G_ema)"
    extra = {"tensorflow": tensorflow, "notes": [note]}
    check_metadata(extra, f"{path}: the TensorFlow networks' settings")
    return records, extra
