"""Helpers shared by the benchmarks: the machine's description and atomic JSON output."""

from __future__ import annotations

import importlib
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else what :mod:`platform` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def machine_info() -> dict[str, Any]:
    """torch/CUDA versions, CPU, GPU (None without one), platform and the current time."""
    info: dict[str, Any] = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": usable_cores(),
        "torch_threads": torch.get_num_threads(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        info["gpu"] = torch.cuda.get_device_name()
        info["capability"] = f"{major}.{minor}"
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    else:
        info["gpu"] = None
    return info


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` to ``path`` atomically (a ``.tmp`` file renamed over it) and say so."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)
    print(f"\nwrote {path}")


def set_ops_hooks(
    filter_impl: str | None = None, kernel: str = "auto", bias_act_keep_input: bool = False
) -> None:
    """Set stylegan_ops' benchmark hooks (private module attributes, not settings); the defaults reset them.

    ``filter_impl`` runs plain filtering (upfirdn2d with up = down = 1, ``impl=None``) on that implementation
    (``'ref'``: a cuDNN depthwise convolution on a GPU); ``kernel='gather'`` runs upfirdn2d's CUDA kernel as
    the one-thread-per-output gather everywhere instead of the shared-memory tiles (``'auto'``);
    ``bias_act_keep_input`` makes the CUDA bias_act keep its input for the backward pass, as before it kept
    its output (memory and speed of that change)."""
    # import_module: the package exports a function named upfirdn2d, which hides the module of that name
    importlib.import_module("stylegan_ops.upfirdn2d")._FILTER_IMPL = filter_impl
    importlib.import_module("stylegan_ops._upfirdn2d_cuda")._TILED = {"auto": -1, "gather": 0}[kernel]
    importlib.import_module("stylegan_ops._bias_act_cuda")._KEEP_OUTPUT = not bias_act_keep_input
