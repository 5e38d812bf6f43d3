"""Orthogonal-finetuning adapter files: the small trained parameters plus a reference to the base checkpoint.

An adapter is a native ``.safetensors`` file (see :mod:`rootedgan.checkpoints.native`) whose string metadata
has ``format = "rootedgan-native"``, ``format_version = "1"`` and ``kind = "adapter"``, plus JSON fields:

* ``orthogonal``: the :class:`rootedgan.orthogonal.OrthogonalConfig` it was trained with;
* ``base``: the base checkpoint as given (``source``: path, URL or shortcut), its resolved ``local_path``
  when saved, its ``size`` in bytes and ``sha256``;
* ``layers``: the rotated layers of each stored network; ``base_init_kwargs``: their constructor kwargs;
* ``meta``: provenance (loss, kimg, settings), as in native checkpoints.

Tensors are ``G.<key>`` / ``G_ema.<key>`` with the keys of the parametrized generator's ``state_dict``
(``synthesis.b8.conv0.parametrizations.weight.0.q``, ...), plus any ``train_extra`` parameters and
``mapping.w_avg``. The discriminator is trained in full and is not part of an adapter.

:func:`load_adapter` (what ``load_network`` calls for such a file) finds the base -- ``base=`` if given,
else ``source`` relative to the adapter's folder, then ``source`` as given (path, URL or shortcut), then
the recorded ``local_path`` -- refuses a file whose size or sha256 differ, rotates the base generators
like the training run did, loads the adapter tensors and returns merged plain networks.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from rootedgan.checkpoints._build import atomic_write, jsonable, write_chunks
from rootedgan.checkpoints.native import FORMAT_TAG, FORMAT_VERSION
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
    from rootedgan.checkpoints import resolve_source

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

    from rootedgan.orthogonal import OrthogonalConfig, adapter_state, rotations

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
    from rootedgan.checkpoints import detect_format

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

    source = str(path)
    try:
        with safe_open(source, framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            flat = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
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
        try:
            info[key] = json.loads(metadata.get(key) or "{}")
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{source}: the `{key}` metadata is not valid JSON ({err})") from err
    tensors: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in flat.items():
        name, _, sub = key.partition(".")
        if name not in ADAPTER_NETWORKS or not sub:
            raise CheckpointError(f"{source}: unexpected tensor name `{key}` (expected G. or G_ema.)")
        tensors.setdefault(name, {})[sub] = value
    if not tensors:
        raise CheckpointError(f"{source}: the adapter holds no tensors")
    return tensors, info


def _candidates(adapter: Path, base: Mapping[str, Any]) -> list[str]:
    given = str(base.get("source") or "")
    out = []
    if given and not Path(given).expanduser().is_absolute() and "://" not in given:
        out.append(str(adapter.parent / given))
    if given:
        out.append(given)
    if base.get("local_path"):
        out.append(str(base["local_path"]))
    return list(dict.fromkeys(out))


def find_base(adapter: str | os.PathLike[str], base: Mapping[str, Any], override: Any = None) -> Path:
    """The local base checkpoint file of an adapter, checked by size and sha256 (module docstring)."""
    from rootedgan.checkpoints import resolve_source

    want_size, want_sha = base.get("size"), base.get("sha256")
    candidates = [str(override)] if override is not None else _candidates(Path(adapter), base)
    tried = []
    for candidate in candidates:
        try:
            path = resolve_source(candidate, progress=False)
        except CheckpointError as err:
            if override is not None:
                raise
            tried.append(f"{candidate} (not found)")
            del err
            continue
        size = path.stat().st_size
        if want_size is not None and size != want_size:
            tried.append(f"{path} (size {size} bytes, expected {want_size})")
            continue
        sha = sha256_file(path)
        if want_sha is not None and sha != want_sha:
            tried.append(f"{path} (sha256 {sha[:16]}..., expected {str(want_sha)[:16]}...)")
            continue
        return path
    raise CheckpointError(
        f"{adapter} is an orthogonal-finetuning adapter on top of the base checkpoint "
        f"{base.get('source')!r} (sha256 {want_sha}, {want_size} bytes), which was not found: tried "
        f"{'; '.join(tried) or 'nothing'}. Pass the right base file: load_network(adapter, base=PATH)."
    )


def load_adapter(
    path: str | os.PathLike[str],
    base: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    source: str | None = None,
) -> dict[str, Any]:
    """Load an adapter on its base: ``dict(G=..., D=None, G_ema=..., meta=...)``, merged plain networks."""
    from rootedgan.checkpoints import load_network
    from rootedgan.errors import UserError
    from rootedgan.orthogonal import OrthogonalConfig, apply_orthogonal, merge_

    path = Path(path)
    tensors, info = read_adapter(path)
    base_path = find_base(path, info["base"], base)
    if is_adapter(base_path):
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
        "format": FORMAT,
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
