"""rootedgan's own checkpoint format: one ``.safetensors`` file, no pickle anywhere.

Tensors are named ``G.<key>``, ``D.<key>``, ``G_ema.<key>`` (NVIDIA key names). The safetensors string
metadata holds ``format = "rootedgan-native"``, ``format_version = "1"``, ``init_kwargs`` (JSON: the
constructor kwargs of each stored network, by name) and ``meta`` (JSON: provenance such as the network it
was finetuned from, the loss and its settings, kimg -- whatever the caller passes).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
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
SUFFIX = ".safetensors"


def records_to_bytes(
    records: Mapping[str, NetworkRecord | None], meta: Mapping[str, Any] | None = None
) -> bytes:
    """Serialise network records (and JSON metadata) to safetensors bytes."""
    tensors: dict[str, torch.Tensor] = {}
    init_kwargs: dict[str, Any] = {}
    for name in NETWORK_NAMES:
        rec = records.get(name)
        if rec is None:
            continue
        init_kwargs[name] = jsonable(rec.init_kwargs)
        for key, value in rec.state_dict.items():
            # A private copy per tensor: safetensors refuses tensors that share memory.
            tensors[f"{name}.{key}"] = value.detach().to("cpu", copy=True).contiguous()
    metadata = {
        "format": FORMAT_TAG,
        "format_version": FORMAT_VERSION,
        "init_kwargs": json.dumps(init_kwargs),
        "meta": json.dumps(jsonable(dict(meta or {}))),
    }
    return st_save(tensors, metadata=metadata)


def save_records(
    path: str | os.PathLike[str],
    records: Mapping[str, NetworkRecord | None],
    meta: Mapping[str, Any] | None = None,
) -> Path:
    """Write records as a native checkpoint, atomically (temp file + fsync + rename)."""
    if records.get("G") is None and records.get("G_ema") is None:
        raise CheckpointError("a checkpoint needs a generator: pass G and/or G_ema")
    data = records_to_bytes(records, meta)
    return atomic_write(path, lambda f: write_chunks(f, data))


def save_network(
    path: str | os.PathLike[str],
    G: torch.nn.Module | None = None,
    D: torch.nn.Module | None = None,
    G_ema: torch.nn.Module | None = None,
    meta: Mapping[str, Any] | None = None,
) -> Path:
    """Save networks (and JSON-able ``meta``: provenance, loss settings, kimg, ...) to one ``.safetensors``.

    The write is atomic: a temp file in the same folder is written, fsynced and renamed over ``path``,
    so an interrupted save never leaves a partial checkpoint (an existing file stays intact).
    At least one of ``G`` / ``G_ema`` is required. Returns the written path.
    """
    if G is None and G_ema is None:
        raise CheckpointError("save_network needs a generator: pass G and/or G_ema")
    records = {
        "G": None if G is None else module_record(G, GENERATOR),
        "D": None if D is None else module_record(D, DISCRIMINATOR),
        "G_ema": None if G_ema is None else module_record(G_ema, GENERATOR),
    }
    return save_records(path, records, meta)


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


def read_native(path: str | os.PathLike[str]) -> tuple[dict[str, NetworkRecord | None], dict[str, Any]]:
    """Read a native checkpoint into records and its stored ``meta`` (nothing built yet)."""
    source = str(path)
    try:
        with safe_open(source, framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            if metadata.get("format") != FORMAT_TAG:
                raise CheckpointError(
                    f"{source} is a safetensors file but not a rootedgan checkpoint "
                    f"(its metadata has format={metadata.get('format')!r}, expected {FORMAT_TAG!r}); "
                    f"tensors found: {', '.join(list(f.keys())[:8])}"
                )
            tensors = {key: f.get_tensor(key) for key in f.keys()}  # safe_open has no __iter__
    except CheckpointError:
        raise
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(
            f"{source} is truncated or corrupt (safetensors: {err}). Copy or write it again."
        ) from err
    version = metadata.get("format_version", "")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{source} is rootedgan checkpoint format version {version!r}; this rootedgan reads version "
            f"{FORMAT_VERSION} (upgrade rootedgan to read newer files)"
        )
    init_kwargs = json_field(metadata, "init_kwargs", source)
    meta = json_field(metadata, "meta", source)
    states: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        name, _, sub = key.partition(".")
        if name not in NETWORK_NAMES or not sub:
            raise CheckpointError(f"{source}: unexpected tensor name `{key}` (expected G., D. or G_ema.)")
        states.setdefault(name, {})[sub] = value
    records: dict[str, NetworkRecord | None] = {}
    for name in NETWORK_NAMES:
        if name not in init_kwargs:
            if name in states:
                raise CheckpointError(f"{source}: tensors of {name} are stored without its init_kwargs")
            records[name] = None
            continue
        kind = DISCRIMINATOR if name == "D" else GENERATOR
        records[name] = NetworkRecord(kind, dict(init_kwargs[name]), states.get(name, {}))
    if records["G"] is None and records["G_ema"] is None:
        raise CheckpointError(f"{source} holds no generator (G or G_ema)")
    return records, meta if isinstance(meta, dict) else {"meta": meta}
