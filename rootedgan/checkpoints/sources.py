"""Where a checkpoint's bytes come from (:func:`resolve_source`) and what they are (:func:`detect_format`):
a leaf of :mod:`rootedgan.checkpoints` that the loader and the adapter files both use."""

from __future__ import annotations

import json
import os
from pathlib import Path

from rootedgan.checkpoints import download as _download
from rootedgan.checkpoints.native import FORMAT_TAG
from rootedgan.errors import CheckpointError

# torch's legacy (pre-zip) serialisation starts with a pickled magic number (protocol 2, LONG1).
_TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"
_SAFETENSORS_MAX_HEADER = 100 * 1024 * 1024
#: The format of an orthogonal-finetuning adapter: a native safetensors file whose metadata has
#: ``kind = "adapter"`` (:mod:`rootedgan.checkpoints.adapter`).
ADAPTER = "adapter"


def detect_format(path: str | os.PathLike[str]) -> str | None:
    """``'nvidia-pkl'``, ``'torch-zip'``, ``'torch-legacy'``, ``'safetensors'``, ``'adapter'`` or None,
    from the content. A safetensors file is an adapter when its header's ``__metadata__`` has ``format =
    rootedgan-native`` and ``kind = adapter``; the header is read here, once."""
    with open(path, "rb") as f:
        head = f.read(16)
        size = os.fstat(f.fileno()).st_size
        if head.startswith(_TORCH_LEGACY_MAGIC):
            return "torch-legacy"
        if head.startswith(b"PK\x03\x04"):
            return "torch-zip"
        if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
            return "nvidia-pkl"
        header_len = int.from_bytes(head[:8], "little")
        if head[8:9] != b"{" or not 2 <= header_len <= min(_SAFETENSORS_MAX_HEADER, size - 8):
            return None
        f.seek(8)
        header = f.read(header_len)
    try:
        metadata = json.loads(header).get("__metadata__") or {}
    except (ValueError, RecursionError, AttributeError):  # malformed: the safetensors reader reports it
        return "safetensors"
    is_adapter = isinstance(metadata, dict) and metadata.get("format") == FORMAT_TAG
    return ADAPTER if is_adapter and metadata.get("kind") == ADAPTER else "safetensors"


def resolve_source(path_or_url: str | os.PathLike[str], progress: bool = True) -> Path:
    """A local regular file for a path, URL or NVIDIA shortcut name (downloading into the cache if needed);
    folders, FIFOs, devices and sockets are refused in one line (reading them could block forever)."""
    path = Path(path_or_url).expanduser()
    named = isinstance(path_or_url, str) and not path.exists() and path_or_url in _download.NVIDIA_NETWORKS
    if named or _download.is_url(path_or_url):
        return _download.fetch(str(path_or_url), progress=progress)
    if not path.exists():
        names = ", ".join(sorted(_download.NVIDIA_NETWORKS))
        raise CheckpointError(
            f"{path} does not exist. Give a checkpoint file (.pkl, .pt or .safetensors), an http(s):// "
            f"URL, or a known network name ({names})."
        )
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder; give the checkpoint file inside it")
    if not path.is_file():  # a FIFO, device or socket: reading it could block forever or never end
        raise CheckpointError(
            f"{path} is not a regular file (a FIFO, device or socket); give a checkpoint file"
        )
    return path
