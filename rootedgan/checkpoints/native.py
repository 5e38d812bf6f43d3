"""rootedgan's own checkpoint format, one ``.safetensors`` file: tensors ``G.<key>``, ``D.<key>``,
``G_ema.<key>`` (NVIDIA key names), string metadata ``format = "rootedgan-native"``, ``format_version``,
``init_kwargs`` (JSON, by network) and ``meta`` (JSON provenance). Adapter files share the container."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as st_save

from rootedgan.checkpoints.records import (
    DISCRIMINATOR,
    GENERATOR,
    NETWORK_NAMES,
    NetworkRecord,
    atomic_write,
    check_metadata,
    jsonable,
    module_record,
    write_chunks,
)
from rootedgan.errors import CheckpointError

FORMAT = "native"
FORMAT_TAG = "rootedgan-native"
FORMAT_VERSION = "1"


def save_records(
    path: str | os.PathLike[str],
    records: Mapping[str, NetworkRecord | None],
    meta: Mapping[str, Any] | None = None,
) -> Path:
    """Write records (and JSON-able ``meta``) as a native checkpoint, atomically."""
    if records.get("G") is None and records.get("G_ema") is None:
        raise CheckpointError("a checkpoint needs a generator: pass G and/or G_ema")
    tensors: dict[str, torch.Tensor] = {}
    init_kwargs: dict[str, Any] = {}
    for name in NETWORK_NAMES:
        rec = records.get(name)
        if rec is not None:
            init_kwargs[name] = jsonable(rec.init_kwargs)
            for key, value in rec.state_dict.items():
                # A private copy per tensor: safetensors refuses tensors that share memory.
                tensors[f"{name}.{key}"] = value.detach().to("cpu", copy=True).contiguous()
    return write_file(path, tensors, init_kwargs=init_kwargs, meta=jsonable(dict(meta or {})))


def write_file(path: str | os.PathLike[str], tensors: Mapping[str, torch.Tensor], **fields: Any) -> Path:
    """Write ``tensors`` and the JSON metadata ``fields`` (plus the format tags) as a rootedgan
    ``.safetensors`` file, atomically."""
    metadata = {"format": FORMAT_TAG, "format_version": FORMAT_VERSION}
    metadata.update({key: json.dumps(value) for key, value in fields.items()})
    data = st_save(dict(tensors), metadata=metadata)
    return atomic_write(path, lambda f: write_chunks(f, data))


def save_network(
    path: str | os.PathLike[str],
    G: torch.nn.Module | None = None,
    D: torch.nn.Module | None = None,
    G_ema: torch.nn.Module | None = None,
    meta: Mapping[str, Any] | None = None,
) -> Path:
    """Save networks (at least ``G`` or ``G_ema``) and JSON-able ``meta`` (provenance, loss settings, kimg)
    to one ``.safetensors``, atomically: an interrupted save never leaves a partial checkpoint."""
    if G is None and G_ema is None:
        raise CheckpointError("save_network needs a generator: pass G and/or G_ema")
    nets = {"G": (G, GENERATOR), "D": (D, DISCRIMINATOR), "G_ema": (G_ema, GENERATOR)}
    return save_records(
        path, {k: None if m is None else module_record(m, kind) for k, (m, kind) in nets.items()}, meta
    )


def json_field(metadata: Mapping[str, str], key: str, source: str) -> Any:
    """The JSON value of string metadata ``key`` (``{}`` when absent), within the metadata limits."""
    try:
        value = json.loads(metadata.get(key) or "{}")
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{source}: the `{key}` metadata is not valid JSON ({err})") from None
    except RecursionError:
        raise CheckpointError(f"{source}: the `{key}` metadata is nested too deeply; refused") from None
    check_metadata(value, f"{source}: the `{key}` metadata")
    return value


def read_file(
    path: str | os.PathLike[str], names: Sequence[str], what: str = "checkpoint"
) -> tuple[dict[str, str], dict[str, dict[str, torch.Tensor]]]:
    """The string metadata of a rootedgan ``.safetensors`` file and its tensors by network (``G.<key>`` ->
    ``{"G": {key: tensor}}``, each name in ``names``); a foreign, corrupt or newer file is refused."""
    source = str(path)
    try:
        with safe_open(source, framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            if metadata.get("format") != FORMAT_TAG:
                raise CheckpointError(
                    f"{source} is a safetensors file but not a rootedgan checkpoint "
                    f"(its metadata has format={metadata.get('format')!r}, expected {FORMAT_TAG!r}); "
                    f"tensors found: {', '.join(list(f.keys())[:8])}"
                )
            flat = {key: f.get_tensor(key) for key in f.keys()}  # safe_open has no __iter__
    except CheckpointError:
        raise
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(
            f"{source} is truncated or corrupt (safetensors: {err}). Copy or write it again."
        ) from err
    version = metadata.get("format_version", "")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{source} is rootedgan {what} format version {version!r}; this rootedgan reads version "
            f"{FORMAT_VERSION} (upgrade rootedgan to read newer files)"
        )
    tensors: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in flat.items():
        name, _, sub = key.partition(".")
        if name not in names or not sub:
            expected = ", ".join(f"{n}." for n in names)
            raise CheckpointError(f"{source}: unexpected tensor name `{key}` (expected {expected})")
        tensors.setdefault(name, {})[sub] = value
    return metadata, tensors


def read_native(path: str | os.PathLike[str]) -> tuple[dict[str, NetworkRecord | None], dict[str, Any]]:
    """Read a native checkpoint into records and its stored ``meta`` (nothing built yet)."""
    metadata, states = read_file(path, NETWORK_NAMES)
    init_kwargs = json_field(metadata, "init_kwargs", str(path))
    meta = json_field(metadata, "meta", str(path))
    records: dict[str, NetworkRecord | None] = dict.fromkeys(NETWORK_NAMES)
    for name in NETWORK_NAMES:
        if name in init_kwargs:
            kind = DISCRIMINATOR if name == "D" else GENERATOR
            records[name] = NetworkRecord(kind, dict(init_kwargs[name]), states.get(name, {}))
        elif name in states:
            raise CheckpointError(f"{path}: tensors of {name} are stored without its init_kwargs")
    if records["G"] is None and records["G_ema"] is None:
        raise CheckpointError(f"{path} holds no generator (G or G_ema)")
    return records, meta if isinstance(meta, dict) else {"meta": meta}
