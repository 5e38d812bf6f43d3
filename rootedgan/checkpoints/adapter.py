"""Orthogonal-finetuning adapter files (the format and the base lookup; the OFT math is
:mod:`rootedgan.training.adapter`): a native ``.safetensors`` file with ``kind = "adapter"``, the JSON
metadata ``orthogonal``, ``base`` (``source`` as given, ``local_path``, ``size``, ``sha256``), ``layers``,
``base_init_kwargs``, ``meta``, and the ``G.``/``G_ema.`` tensors of the parametrized generators.

Security: the recorded ``source`` and ``local_path`` are never opened or fetched as such. The base is what
the user names (``base=``), else a file in the adapter's folder named like them, or an http(s) source
already in the download cache; its size and sha256 must match (README, "Orthogonal finetuning").
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from rootedgan.checkpoints import download
from rootedgan.checkpoints.native import json_field, read_file
from rootedgan.checkpoints.sources import ADAPTER, resolve_source
from rootedgan.errors import CheckpointError

ADAPTER_NETWORKS = ("G", "G_ema")


def base_reference(source: str | os.PathLike[str]) -> dict[str, Any]:
    """What an adapter records about its base: ``source`` as given, ``local_path``, ``size``, ``sha256``."""
    path = resolve_source(source, progress=False).resolve()
    return {
        "source": str(source),
        "local_path": str(path),
        "size": path.stat().st_size,
        "sha256": download.sha256_of(path),
    }


def read_adapter(path: str | os.PathLike[str]) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    """``(tensors by network, info)``; info has ``orthogonal``, ``base``, ``layers``, ``base_init_kwargs``,
    ``meta``."""
    metadata, tensors = read_file(path, ADAPTER_NETWORKS, "adapter")
    if metadata.get("kind") != ADAPTER:
        raise CheckpointError(f"{path} is not an orthogonal-finetuning adapter")
    info: dict[str, Any] = {}
    for key in ("orthogonal", "base", "layers", "base_init_kwargs", "meta"):
        info[key] = json_field(metadata, key, str(path))
        if key != "meta" and not isinstance(info[key], dict):
            raise CheckpointError(f"{path}: the `{key}` metadata is not a JSON object")
    if not tensors:
        raise CheckpointError(f"{path}: the adapter holds no tensors")
    return tensors, info


_SHA256_RX = re.compile(r"[0-9a-fA-F]{64}")


def _file_name(text: str) -> str:
    """The last component of a recorded path or URL (either slash), or '' when there is none usable."""
    if download.is_url(text):
        return download.url_file_name(text)
    name = text.replace("\\", "/").rstrip("/").rpartition("/")[2]
    return "" if name in ("", ".", "..") or "\0" in name else name


def _candidates(adapter: Path, base: Mapping[str, Any]) -> list[Path]:
    """Where a base may be looked for unnamed (module docstring); never the recorded path or URL itself."""
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
        sha = download.sha256_of(path)
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
