"""Orthogonal-finetuning adapter files: the small trained parameters plus a reference to the base checkpoint.

An adapter is a native ``.safetensors`` file (see :mod:`rootedgan.checkpoints.native`) whose string metadata
has ``format = "rootedgan-native"``, ``format_version = "1"`` and ``kind = "adapter"``, plus JSON fields:

* ``orthogonal``: the :class:`rootedgan.training.orthogonal.OrthogonalConfig` it was trained with;
* ``base``: the base checkpoint as given (``source``: path, URL or shortcut), its resolved ``local_path``
  when saved, its ``size`` in bytes and ``sha256``;
* ``layers``: the rotated layers of each stored network; ``base_init_kwargs``: their constructor kwargs;
* ``meta``: provenance (loss, kimg, settings), as in native checkpoints.

Tensors are ``G.<key>`` / ``G_ema.<key>`` with the keys of the parametrized generator's ``state_dict``
(``synthesis.b8.conv0.parametrizations.weight.0.q``, ...), plus any ``train_extra`` parameters and
``mapping.w_avg``. The discriminator is trained in full and is not part of an adapter.

:func:`rootedgan.checkpoints.loader.load_adapter` (what ``load_network`` calls for such a file) finds the
base -- ``base=`` if given (a path, URL or shortcut: what the user names is used), else only a file in the
adapter's own folder whose name is the recorded ``source``'s or ``local_path``'s file name, or an http(s)
source already in the download cache -- and refuses a file whose size or sha256 differ. The recorded
``source`` and ``local_path`` are never opened or fetched as such: a file must not make rootedgan read an
arbitrary path or reach the network. Then it rotates the base generators like the training run did, loads
the adapter tensors and returns merged plain networks.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from rootedgan.checkpoints.native import FORMAT_TAG, FORMAT_VERSION
from rootedgan.checkpoints.records import atomic_write, jsonable, write_chunks
from rootedgan.checkpoints.sources import detect_format, resolve_source
from rootedgan.errors import CheckpointError

KIND = "adapter"
FORMAT = "adapter"  # meta["format"] of what load_network returns for an adapter
ADAPTER_NETWORKS = ("G", "G_ema")


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file's content."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def base_reference(source: str | os.PathLike[str]) -> dict[str, Any]:
    """What an adapter records about its base: ``source`` as given, ``local_path``, ``size``, ``sha256``."""

    path = resolve_source(source, progress=False).resolve()
    return {
        "source": str(source),
        "local_path": str(path),
        "size": path.stat().st_size,
        "sha256": sha256_file(path),
    }


def save_adapter(
    path: str | os.PathLike[str],
    nets: Mapping[str, torch.nn.Module],
    cfg: Any,
    base: Mapping[str, Any],
    meta: Mapping[str, Any] | None = None,
) -> Path:
    """Write the adapter of orthogonally parametrized generators ``nets`` (``G`` and/or ``G_ema``),
    atomically; ``base`` is :func:`base_reference` of the checkpoint they were loaded from."""
    from safetensors.torch import save as st_save

    from rootedgan.training.orthogonal import OrthogonalConfig, adapter_state, rotations

    cfg = OrthogonalConfig.from_any(cfg)
    tensors: dict[str, torch.Tensor] = {}
    layers: dict[str, list[str]] = {}
    init_kwargs: dict[str, Any] = {}
    for name, net in nets.items():
        if name not in ADAPTER_NETWORKS or net is None:
            continue
        if not rotations(net):
            raise CheckpointError(f"save_adapter: {name} carries no orthogonal rotations")
        layers[name] = list(rotations(net))
        init_kwargs[name] = jsonable(getattr(net, "init_kwargs", {}))
        for key, value in adapter_state(net, cfg).items():
            tensors[f"{name}.{key}"] = value
    if not tensors:
        raise CheckpointError("save_adapter needs G and/or G_ema")
    metadata = {
        "format": FORMAT_TAG,
        "format_version": FORMAT_VERSION,
        "kind": KIND,
        "orthogonal": json.dumps(cfg.to_dict()),
        "base": json.dumps(jsonable(dict(base))),
        "layers": json.dumps(layers),
        "base_init_kwargs": json.dumps(init_kwargs),
        "meta": json.dumps(jsonable(dict(meta or {}))),
    }
    data = st_save(tensors, metadata=metadata)
    return atomic_write(path, lambda f: write_chunks(f, data))


def _metadata(path: str | os.PathLike[str]) -> dict[str, str] | None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return dict(f.metadata() or {})
    except Exception:  # not readable as safetensors: the regular readers report it
        return None


def is_adapter(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is an adapter file (by content: safetensors metadata ``kind = adapter``)."""

    try:
        if detect_format(path) != "safetensors":
            return False
    except OSError:
        return False
    metadata = _metadata(path)
    return bool(metadata) and metadata.get("format") == FORMAT_TAG and metadata.get("kind") == KIND


def read_adapter(path: str | os.PathLike[str]) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    """``(tensors by network, info)``; info has ``orthogonal``, ``base``, ``layers``, ``base_init_kwargs``,
    ``meta``."""
    from safetensors import SafetensorError, safe_open

    from rootedgan.checkpoints.native import json_field

    source = str(path)
    try:
        with safe_open(source, framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            flat = {key: f.get_tensor(key) for key in f.keys()}  # safe_open has no __iter__
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{source} is truncated or corrupt (safetensors: {err})") from err
    if metadata.get("kind") != KIND:
        raise CheckpointError(f"{source} is not an orthogonal-finetuning adapter")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{source} is adapter format version {metadata.get('format_version')!r}; this rootedgan reads "
            f"version {FORMAT_VERSION}"
        )
    info: dict[str, Any] = {}
    for key in ("orthogonal", "base", "layers", "base_init_kwargs", "meta"):
        info[key] = json_field(metadata, key, source)
        if key != "meta" and not isinstance(info[key], dict):
            raise CheckpointError(f"{source}: the `{key}` metadata is not a JSON object")
    tensors: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in flat.items():
        name, _, sub = key.partition(".")
        if name not in ADAPTER_NETWORKS or not sub:
            raise CheckpointError(f"{source}: unexpected tensor name `{key}` (expected G. or G_ema.)")
        tensors.setdefault(name, {})[sub] = value
    if not tensors:
        raise CheckpointError(f"{source}: the adapter holds no tensors")
    return tensors, info


_SHA256_RX = re.compile(r"[0-9a-fA-F]{64}")


def _file_name(text: str) -> str:
    """The last component of a recorded path or URL (either slash), or '' when there is none usable."""
    from rootedgan.checkpoints import download

    if download.is_url(text):
        return download.url_file_name(text)
    name = text.replace("\\", "/").rstrip("/").rpartition("/")[2]
    return "" if name in ("", ".", "..") or "\0" in name else name


def _candidates(adapter: Path, base: Mapping[str, Any]) -> list[Path]:
    """Where a base may be looked for without the user naming it: files in the adapter's own folder named
    like the recorded source / local path, and the download-cache entry of a recorded http(s) URL or
    shortcut name. Never the recorded path or URL itself."""
    from rootedgan.checkpoints import download

    source = str(base.get("source") or "")
    names = [_file_name(source), _file_name(str(base.get("local_path") or ""))]
    known = download.NVIDIA_NETWORKS.get(source)
    url = known.url if known is not None else source
    if known is not None:
        names.append(download.url_file_name(url))
    out = [adapter.parent / name for name in names if name]
    if re.match(r"^https?://", url, re.IGNORECASE):
        out.append(download.cache_path(url))  # only if already downloaded: nothing is fetched
    return list(dict.fromkeys(out))


def _check_base(path: Path, want_size: Any, want_sha: str | None) -> str | None:
    """'' when ``path`` is the base (size, then sha256 checked); None when there is no such file; else
    why it is not (for the error message)."""
    try:
        if not path.is_file():
            return None if not path.exists() else "not a regular file"
        size = path.stat().st_size
    except OSError as err:
        return str(err.strerror or err)
    if isinstance(want_size, int) and size != want_size:
        return f"size {size} bytes, expected {want_size}"
    if want_sha is not None:
        sha = sha256_file(path)
        if sha != want_sha.lower():
            return f"sha256 {sha[:16]}..., expected {want_sha[:16]}..."
    return ""


def find_base(adapter: str | os.PathLike[str], base: Mapping[str, Any], override: Any = None) -> Path:
    """The local base checkpoint file of an adapter, checked by size and sha256 (module docstring)."""

    adapter = Path(adapter)
    want_size = base.get("size")
    want_sha = base.get("sha256")
    if not (isinstance(want_sha, str) and _SHA256_RX.fullmatch(want_sha)):
        want_sha = None
    if override is not None:  # the user's choice: a path, URL or shortcut is fine
        path = resolve_source(override, progress=False)
        problem = _check_base(path, want_size, want_sha)
        if problem:
            raise CheckpointError(f"{path} is not the base checkpoint of the adapter {adapter} ({problem})")
        return path
    if want_sha is None:
        raise CheckpointError(
            f"{adapter} records no sha256 of its base checkpoint, so no file can be checked against it: "
            "pass the base explicitly: load_network(adapter, base=PATH) or --base PATH"
        )
    tried = []
    for candidate in _candidates(adapter, base):
        problem = _check_base(candidate, want_size, want_sha)
        if problem == "":
            return candidate
        if problem:
            tried.append(f"{candidate} ({problem})")
    tried_text = f"; tried {'; '.join(tried)}" if tried else ""
    raise CheckpointError(
        f"{adapter} is an orthogonal-finetuning adapter on the base checkpoint {base.get('source')!r} "
        f"(sha256 {want_sha[:16]}..., {want_size} bytes), which is not in the adapter's folder "
        f"{adapter.parent}{tried_text}. rootedgan does not open paths or URLs recorded in a file: pass the "
        "base explicitly: load_network(adapter, base=PATH) or --base PATH (a path, URL or network name), "
        "or copy it next to the adapter."
    )
