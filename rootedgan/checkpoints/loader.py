"""The loader behind :mod:`rootedgan.checkpoints` (which re-exports it and documents ``load_network``):
format detection by content, one reader per format, building, and conversion between formats."""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from rootedgan.checkpoints import native, nvidia, rosinality, tf_legacy
from rootedgan.checkpoints.native import save_records
from rootedgan.checkpoints.records import NETWORK_NAMES, NetworkRecord, build_all, jsonable, module_record
from rootedgan.checkpoints.sources import ADAPTER, detect_format, resolve_source
from rootedgan.errors import CheckpointError, UnsafeCheckpointError
from rootedgan.runs import newest_snapshot

Records = tuple[str, dict[str, NetworkRecord | None], dict[str, Any]]
# The keys of a Lightning training checkpoint (trainer.save_checkpoint) next to its state_dict.
_LIGHTNING_KEYS = ("pytorch-lightning_version", "global_step", "loops", "optimizer_states")


def _read_pickle(path: Path) -> Records:
    records, extra = nvidia.read_nvidia_pickle(path)  # TensorFlow-era pickles too
    return (tf_legacy.FORMAT if "tensorflow" in extra else nvidia.FORMAT), records, extra


def _read_torch(path: Path) -> Records:
    try:
        ckpt = rosinality.torch_load(path)
    except UnsafeCheckpointError:
        if _names_lightning(path):
            raise CheckpointError(lightning_checkpoint_message(path)) from None
        raise
    if isinstance(ckpt, dict) and "state_dict" in ckpt and any(k in ckpt for k in _LIGHTNING_KEYS):
        raise CheckpointError(lightning_checkpoint_message(path))
    if not rosinality.is_rosinality(ckpt):
        found = sorted(map(str, ckpt)) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(
            f"{path} is a torch.save file but not a rosinality StyleGAN2 checkpoint: expected the keys "
            f"g, d, g_ema (state dicts with style.*, input.input, convs.*), found {found}"
        )
    return (rosinality.FORMAT, *rosinality.read_rosinality(ckpt, str(path)))


def _refuse_adapter(path: Path) -> Records:
    raise CheckpointError(
        f"{path} is an orthogonal-finetuning adapter (rotations only), not a full checkpoint: load_network "
        "applies it to its base checkpoint"
    )


#: Format (:func:`detect_format`) -> reader of its records.
_READERS: dict[str, Callable[[Path], Records]] = {
    "nvidia-pkl": _read_pickle,
    "torch-zip": _read_torch,
    "torch-legacy": _read_torch,
    "safetensors": lambda path: (native.FORMAT, *native.read_native(path)),
    ADAPTER: _refuse_adapter,
}
#: Formats that a higher layer loads whole (:func:`register_loader`): the orthogonal-finetuning adapter.
_LOADERS: dict[str, Callable[..., dict[str, Any]]] = {}


def register_loader(fmt: str, load: Callable[..., dict[str, Any]]) -> None:
    """Let ``load(path, base=, device=, source=)`` load the ``fmt`` files for :func:`load_network`
    (:mod:`rootedgan.training.adapter` registers the adapter loader, which needs the OFT math)."""
    _LOADERS[fmt] = load


def _detect(path: Path) -> str | None:
    if path.exists() and not path.is_file():
        raise CheckpointError(f"{path} is not a regular file (a folder, FIFO, device or socket)")
    try:
        return detect_format(path)
    except OSError as err:
        raise CheckpointError(f"cannot read {path}: {err.strerror or err}") from err


def read_records(path: str | os.PathLike[str]) -> Records:
    """Read any supported checkpoint into (format, records, extra meta) without building networks; every
    failure is a :class:`CheckpointError` naming the file."""
    path = Path(path)
    return _read_records(path, _detect(path))


def _read_records(path: Path, fmt: str | None) -> Records:
    reader = _READERS.get(fmt)
    if reader is None:
        if path.stat().st_size == 0:
            raise CheckpointError(
                f"{path} is empty (0 bytes): an interrupted download or copy? Fetch it again."
            )
        raise CheckpointError(
            f"{path} has an unknown format: it is not an NVIDIA network pickle, a torch.save (rosinality) "
            "checkpoint or a rootedgan .safetensors file (it may also be truncated or corrupt)"
        )
    try:
        return reader(path)
    except CheckpointError:
        raise
    except Exception as err:  # a malformed file that got past the format checks: never a raw stack trace
        raise CheckpointError(
            f"{path} is corrupt or malformed ({type(err).__name__}: {str(err).strip()[:300]})"
        ) from err


# ----------------------------------------------------------------------------------------------------------
# Lightning training checkpoints (checkpoints/last.ckpt) are not network files: say which file to use.


def _names_lightning(path: Path, limit: int = 64 << 20) -> bool:
    """Whether a torch zip archive's pickle names Lightning's version key (read as bytes, nothing loaded)."""
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if info.filename.endswith("data.pkl") and info.file_size <= limit:
                    return b"pytorch-lightning_version" in archive.read(info)
    except (OSError, zipfile.BadZipFile, RuntimeError, ValueError):
        return False
    return False


def lightning_checkpoint_message(path: str | os.PathLike[str]) -> str:
    """One line: ``path`` is a Lightning checkpoint (for resuming), and which network file to use instead."""
    path = Path(path)
    run = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    text = (
        f"{path} is a Lightning training checkpoint (for resuming a run with `rootedgan finetune "
        "--ckpt_path`), not a network file"
    )
    newest = newest_snapshot(run)
    if newest is not None:
        return f"{text}: use the run's newest network snapshot instead, {newest}"
    return (
        f"{text}, and {run} holds no network-snapshot-*.safetensors yet (a run writes one every snap_kimg "
        "and at its end): give a network-snapshot-*.safetensors file of the run"
    )


def load_network(
    path_or_url: str | os.PathLike[str],
    device: str | torch.device = "cpu",
    base: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Load a StyleGAN2 checkpoint (a path, http(s)/file URL or NVIDIA shortcut name) as ``dict(G=..., D=...,
    G_ema=..., meta=...)`` (:mod:`rootedgan.checkpoints`); networks are in eval mode on ``device``, gradients
    left enabled. An orthogonal-finetuning adapter comes back applied to its base checkpoint (``base``, or
    found as :mod:`rootedgan.checkpoints.adapter` says) as merged G and G_ema (``meta["format"] ==
    "adapter"``)."""
    path = resolve_source(path_or_url)
    fmt = _detect(path)
    if fmt in _LOADERS:
        return _LOADERS[fmt](path, base=base, device=device, source=str(path_or_url))
    if base is not None:
        raise CheckpointError(f"base= is only for orthogonal-finetuning adapters; {path} is a full one")
    fmt, records, extra = _read_records(path, fmt)
    nets = build_all(records, device, source=str(path))
    meta = {
        **extra,
        "format": fmt,
        "source": str(path_or_url),
        "init_kwargs": {name: jsonable(rec.init_kwargs) for name, rec in records.items() if rec is not None},
    }
    if str(path_or_url) != str(path):
        meta["local_path"] = str(path)
    return {**nets, "meta": meta}


def output_format(dst: str | os.PathLike[str], fmt: str | None = None) -> str:
    """The output format for ``dst``: ``fmt`` if given, else from the suffix (.safetensors / .pt)."""
    suffix = Path(dst).suffix.lower()
    if (fmt is None and suffix == ".pkl") or fmt in ("pkl", "nvidia", "nvidia-pkl"):
        raise CheckpointError(
            "writing NVIDIA .pkl files is not offered: an NVIDIA network pickle has to embed NVIDIA's "
            "source code, which is under a non-commercial licence. Write .safetensors (rootedgan) or "
            ".pt (rosinality) instead; rootedgan and most tools load both."
        )
    if fmt is None:
        fmt = {".safetensors": "native", ".pt": "rosinality"}.get(suffix)
    if fmt is None:
        raise CheckpointError(
            f"cannot tell the output format from the name {Path(dst).name!r}: use a .safetensors (rootedgan) "
            "or .pt (rosinality) file name, or pass the format explicitly (--format native|rosinality)"
        )
    if fmt not in ("native", "rosinality"):
        raise CheckpointError(f"unknown output format {fmt!r}: choose 'native' or 'rosinality'")
    return fmt


def convert_network(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    fmt: str | None = None,
    merge: bool = False,
    base: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Convert a checkpoint to ``fmt`` (``'native'`` .safetensors or ``'rosinality'`` .pt; None: from
    ``dst``'s suffix), building the networks on the way so that a broken conversion fails here. An adapter
    needs ``merge=True`` (its rotations folded into plain weights). Returns ``dict(path, format,
    source_format, networks, notes)``."""
    fmt = output_format(dst, fmt)
    loaded = load_network(src, base=base)
    if loaded["meta"]["format"] == ADAPTER and not merge:
        base_source = loaded["meta"]["adapter"]["base"].get("source")
        raise CheckpointError(
            f"{src} is an orthogonal-finetuning adapter (rotations on top of {base_source}): add --merge to "
            "write the merged plain weights"
        )
    src_meta = loaded["meta"]
    notes: list[str] = list(src_meta.get("notes") or [])
    records = {
        name: None if loaded.get(name) is None else module_record(loaded[name]) for name in NETWORK_NAMES
    }
    if fmt == "native":
        meta = {
            k: v for k, v in src_meta.items() if k not in ("format", "source", "init_kwargs", "local_path")
        }
        meta["converted_from"] = {"format": src_meta["format"], "source": src_meta["source"]}
        path = save_records(dst, records, meta)
    else:
        notes += rosinality.save_rosinality(dst, records, src_meta)
        path = Path(dst)
    networks = [name for name in NETWORK_NAMES if records[name] is not None]
    return dict(path=path, format=fmt, source_format=src_meta["format"], networks=networks, notes=notes)
