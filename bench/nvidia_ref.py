"""NVIDIA's own StyleGAN2 training code next to ours: a timed GPU run of NVIDIA's ``train.py`` and a CPU
replica of NVIDIA's training-loop inner loop, both on NVIDIA's unmodified networks and loss.

    python bench/nvidia_ref.py setup         [--ref .ref/stylegan3]
    python bench/nvidia_ref.py gpu-train     [--ref .ref/stylegan3] [--batch 32] [--seconds 60] [--res 256]
                                             [--max-wall 240] [--workdir DIR] [--out PATH.json] [--dry-run]
    python bench/nvidia_ref.py cpu-step      [--ref .ref/stylegan3] [--steps 16] [--warmup 4] [--threads 1]
                                             [--out PATH.json]
    python bench/nvidia_ref.py compile-check [--ref .ref/stylegan3] [--arch 9.0] [--jobs 1]

Licence and location
--------------------
NVIDIA's StyleGAN repositories (stylegan3, stylegan2-ada-pytorch) may be used for non-commercial work
only, so their code must never enter this repository: it lives only in the git-ignored folder ``.ref/``
(``.ref/stylegan3`` for running, ``.ref/stylegan2-ada-pytorch`` for reading). This file is ours: it
imports NVIDIA's modules from ``--ref`` at run time and copies none of their code. ``.ref`` is made
from a checkout of each repository, keeping only what training needs (about 1 MB)::

    mkdir -p .ref/stylegan3
    git --git-dir=<stylegan3 clone>/.git archive HEAD dnnlib torch_utils training metrics train.py \\
        legacy.py LICENSE.txt | tar -x -C .ref/stylegan3
    git --git-dir=<stylegan3 clone>/.git rev-parse HEAD > .ref/stylegan3/COMMIT

Tested with stylegan3 at c233a919a6faee6e36a316ddd4eddababad1adf9 (2023-04-26, its last commit). The
folder is ignored by git, so a device run must carry it (``carry: [".ref"]``).

Subcommands
-----------
``setup``
    Applies the patches below to ``--ref`` (idempotent) and prints what it did. Every other
    subcommand applies them too.

``gpu-train`` (needs one CUDA GPU)
    Writes a synthetic data set in ``--workdir`` (default ``$TMPDIR/rootedgan-nvidia-ref``):
    ``--images`` (512) smooth random colour fields of ``--res`` x ``--res`` RGB PNGs in a stored
    (uncompressed) zip laid out as NVIDIA's ``dataset_tool.py`` writes it (``00000/img00000000.png``, no
    ``dataset.json``, so no labels). It then runs NVIDIA's ``train.py`` in a subprocess, in its own
    process group, with ``PYTHONUNBUFFERED=1``::

        python train.py --outdir=WORKDIR/runs --cfg=stylegan2 --data=ZIP --gpus=1 --batch=32 --gamma=1
            --cbase=16384 --cmax=512 --map-depth=8 --glr=0.0025 --dlr=0.0025 --mbstd-group=8 --aug=noaug
            --metrics=none --tick=1 --snap=100000 --kimg=1000 --workers=3 --seed=0

    This is our ``paper256`` preset of ``bench/train.py``: 256 px, 8 mapping layers, channel_base 16384,
    channel_max 512, 4 fp16 resolutions and conv_clamp 256 (the defaults of stylegan3's
    ``networks_stylegan2`` for G and D), resnet D and skip G (their defaults), R1 gamma 1 every 16 steps
    (``D_reg_interval`` default), path length weight 2 every 4 steps on half the batch (``--cfg=stylegan2``),
    style mixing 0.9, lr 0.0025, Adam betas (0, 0.99), D minibatch-std group 8. Differences that do not
    change the cost of a step: G_ema half-life ``batch * 10 / 32`` kimg (10 at batch 32; paper256 uses
    20) with NVIDIA's ramp-up 0.05. ``--cfg=stylegan2`` also sets ``fused_modconv_default =
    'inference_only'`` (grouped conv only outside training, as stylegan2-ada does) and
    ``pl_no_weight_grad = True``, which is a no-op on PyTorch >= 1.11 because NVIDIA's
    ``conv2d_gradfix`` custom op switches itself off there (plain ``torch.nn.functional.conv2d`` with
    PyTorch's own double backward; no warning is printed in stylegan3, unlike stylegan2-ada's
    "conv2d_gradfix not supported ... Falling back").

    Its stdout and stderr are streamed to ``WORKDIR/nvidia-train.log`` and echoed. The run is stopped
    (SIGTERM to the whole process group, SIGKILL 15 s later) ``--seconds`` after NVIDIA prints its first
    tick line (tick 0 is the first step alone, with the CUDA warm-up, then the maintenance of the first
    snapshot), or at ``--max-wall`` seconds from the start (default 240; this includes NVIDIA's compile of
    its bias_act and upfirdn2d plugins, cached in ``WORKDIR/torch_extensions`` for later runs). With
    ``--tick=1`` and batch 32 every tick after tick 0 is 32 steps: two whole R1 cycles and eight path-length
    cycles, so each tick holds a long run's share of regularization steps. NVIDIA's ``sec/kimg`` excludes
    the maintenance (snapshots, logging) between ticks.

    The JSON (``--out``, written atomically after every tick, so a killed run keeps what it measured):
    every tick (kimg, time, sec/tick, sec/kimg, maintenance, cpumem, gpumem, reserved), the median
    ``sec/kimg`` of ticks >= 1 and ``img/s = 1000 / that``, the median and max ``gpumem`` (GiB of
    ``torch.cuda.max_memory_allocated``, reset by NVIDIA every tick), the per-phase CUDA-event times NVIDIA
    writes to ``stats.jsonl`` (``Timing/Gmain`` etc.: the last occurrence of each phase in each tick, ms),
    the plugin build lines ("Setting up PyTorch plugin ... Done./Failed!") and warnings, NVIDIA's commit,
    the patches, the command, torch/CUDA versions and the GPU's name. Then compare with ours on the same GPU::

        python bench/train.py --device cuda --preset paper256 --batch 32 --nvidia-flags \\
            --nvidia-sec-per-kimg <sec_per_kimg_median> --nvidia-gpumem-gb <gpumem_gib_median>

    ``--dry-run`` needs no GPU: it applies the patches, writes the data set, prints the command, imports
    each of NVIDIA's modules in a subprocess (``click`` and ``psutil``, which only ``train.py`` and
    ``training_loop.py`` need, are reported as missing dependencies, not failures, when absent) and, when
    both are importable, runs NVIDIA's own ``train.py ... --dry-run`` (parses the options and opens the
    data set).

``cpu-step``
    A faithful CPU replica of the inner loop of NVIDIA's ``training/training_loop.py`` on NVIDIA's own
    ``training.networks_stylegan2.Generator/Discriminator`` and ``training.loss.StyleGAN2Loss``, with our
    ``smoke`` preset (``bench.train.preset_config('smoke', None)``: 32x32, channel_base 1024, channel_max
    64, 2 mapping layers, z = w = 64, batch 8, no fp16, conv_clamp 256, resnet D, skip G, mbstd group 4,
    R1 gamma 1 every 4 steps, path length weight 2 every 2 steps on half the batch, style mixing 0.9, lr
    0.002, betas (0, 0.99)). The loss gets what ``--cfg=stylegan2`` sets: ``pl_no_weight_grad=True``,
    ``pl_decay=0.01``, no blur (``blur_init_sigma=0``), no augmentation. Per step, as NVIDIA: fetch a batch
    (uint8 -> ``x / 127.5 - 1``; from four pre-made random batches, as ``bench/train.py`` does, so no
    decoding), draw ``4 * batch`` latents, then the phases Gmain, Greg (every ``pl_interval``), Dmain, Dreg
    (every ``r1_interval``), each: ``opt.zero_grad(set_to_none=True)``, ``module.requires_grad_(True)``,
    ``loss.accumulate_gradients(phase, ..., gain=interval, cur_nimg)``, ``requires_grad_(False)``, the
    gradients flattened, ``misc.nan_to_num(..., nan=0, posinf=1e5, neginf=-1e5)`` and split back,
    ``opt.step()``; one Adam per network with NVIDIA's lazy-regularization rescale (lr * c, betas ** c,
    c = I / (I + 1), eps 1e-8); then G_ema ``p.lerp(p_ema, beta)`` with ``beta = 0.5 ** (batch /
    ema_nimg)`` and the buffers copied. NVIDIA's flags are set (``conv2d_gradfix.enabled = True``,
    ``grid_sample_gradfix.enabled = True``, cudnn.benchmark, TF32 off: no effect on a CPU). On CPU tensors
    NVIDIA's ``bias_act`` and ``upfirdn2d`` take their reference implementation by themselves (their
    CUDA path needs ``x.device.type == 'cuda'``); the JSON records that the plugins were never loaded.

    Timed with ``time.perf_counter`` (the CPU is synchronous): every phase (Gmain, Greg, Dmain, Dreg), the
    data fetch and the EMA, over ``--steps`` steps rounded up to whole R1/path-length cycles after
    ``--warmup`` steps. Prints a table, writes JSON (ms per step, img/s, per-phase mean ms, count and
    share, ``Dmain+Dreg`` per R1 step to set against our fused ``Dmain+Dreg`` phase, every step's time).
    ``nvidia_cpu_step_times(ref, steps, warmup, threads)`` does the same from Python (it puts ``ref`` on
    ``sys.path`` and sets torch's thread count, so call it in a fresh process, e.g. through
    ``run_cpu_step_subprocess``, which runs this script and returns the dict).

``compile-check`` (no GPU needed)
    Compiles NVIDIA's ``bias_act`` and ``upfirdn2d`` plugins the way their ``custom_ops.get_plugin``
    does (``torch.utils.cpp_extension.load`` with NVIDIA's ``extra_cuda_cflags``), for
    ``TORCH_CUDA_ARCH_LIST=--arch`` (their ``custom_ops`` clears the variable, so on the GPU torch picks
    the device's own arch). On a CPU-only torch wheel it adds ``-DC10_USING_CUSTOM_GENERATED_MACROS`` (the
    wheel lacks the generated ``c10/cuda/impl/cuda_cmake_macros.h``), the link is expected to fail (no
    ``libc10_cuda``/``libtorch_cuda``) and only the objects are judged. Headers of cuBLAS/cuSPARSE/cuSOLVER
    that ``ATen/cuda/CUDAContext.h`` includes are taken from the CUDA toolkit, else from pip's
    ``nvidia/*/include`` folders, else from typedef-only stubs (then the ``.cpp`` check is a syntax check
    against torch's headers only; the JSON says which).

Patches to NVIDIA's code (applied in place to the copy in ``--ref``, idempotent, each marked with a
``rootedgan-patch`` comment; ``setup`` lists them)
-----------------------------------------------------------------------------------------------------
1. ``torch_utils/ops/conv2d_gradfix.py`` and ``torch_utils/ops/grid_sample_gradfix.py``:
   ``from pkg_resources import parse_version`` fails: setuptools >= 81 no longer ships ``pkg_resources``
   (torch wheels require setuptools, e.g. >= 77 for 2.13, and pip installs a current one; 84 here).
   Every network module imports ``conv2d_gradfix``, so nothing would import. The patch imports
   ``parse`` from ``packaging.version`` (or torch's vendored copy), the library
   ``pkg_resources.parse_version`` wrapped: the same comparison, the same result (PyTorch >= 1.11:
   custom op off).
2. ``torch_utils/misc.py``: ``InfiniteSampler.__init__`` calls ``super().__init__(dataset)``; PyTorch 2.10
   removed the unused ``data_source`` argument of ``torch.utils.data.Sampler.__init__`` (pytorch#163134),
   so ``object.__init__`` raises ``TypeError`` before the first step (found by running NVIDIA's
   ``train.py`` here up to its first CUDA call). The patch calls ``super().__init__()``, which every
   PyTorch version accepts; the sampler never used the argument.
3. ``dnnlib/util.py``: ``from distutils.util import strtobool`` fails where ``distutils`` is absent
   (removed from the standard library in Python 3.12; only setuptools' shim provides it). The patch
   keeps the import where it works and otherwise defines an equivalent ``strtobool`` (used only by
   ``ask_yes_no``).

Not patched, and why:

* NumPy 2: stylegan3's training path uses none of the removed aliases (``np.float``, ``np.bool8``, ...).
* ``torch.load``'s ``weights_only`` default (2.6): training never calls ``torch.load`` (pickles go
  through ``pickle``; only ``--resume`` would load one, and we do not resume).
* ``conv2d_gradfix``/``grid_sample_gradfix``: on PyTorch >= 1.11 stylegan3 disables the conv custom op
  (plain conv2d) and uses the 1.12 ``grid_sampler_2d_backward`` signature; grid sampling runs only with
  augmentation, which ``--aug=noaug`` turns off.
* ``torch.backends.cuda.matmul.allow_tf32 = False``: still accepted by new PyTorch (possibly with a
  deprecation warning in favour of ``fp32_precision``).
* Plugin build under CUDA 13 / sm_90: ``compile-check`` compiles both ``.cu`` files (nvcc 13.0,
  sm_90, C++17 and C++20) and both ``.cpp`` bindings against torch's headers here. stylegan3 has no
  fallback when a plugin fails to build: training stops with the compiler's error. Two environment
  settings (not code changes) for NVIDIA's subprocess guard against what a toolkit assembled from pip
  wheels (nvcc, cudart, crt; as on this machine) breaks:

  - ``CUDA_HOME``: when ``nvcc`` on PATH is a wrapper script (``/usr/local/bin/nvcc`` here execs
    ``/usr/local/cuda-13.0/bin/nvcc``), torch takes ``/usr/local`` for the toolkit and the bindings
    fail on ``cuda_runtime_api.h`` (and ``-lcudart``). ``gpu-train`` sets ``CUDA_HOME`` to the real
    root (the realpath of nvcc's toolkit, else ``/usr/local/cuda``) unless CUDA_HOME/CUDA_PATH is set.
  - ``CPLUS_INCLUDE_PATH``: ``ATen/cuda/CUDAContext.h`` (included by the bindings) needs
    ``cusparse.h``, ``cublas_v2.h``, ``cublasLt.h``, ``cusolverDn.h``; when the toolkit lacks them,
    ``gpu-train`` adds the folders of pip's ``site-packages/nvidia/cu13/include`` (or
    ``nvidia/*/include``; torch's CUDA wheels depend on those packages) that hold them; this variable is
    searched after the toolkit's own include folder. Headers found nowhere are replaced by typedef-only
    stubs (``WORKDIR/stub-include``): the bindings include ``CUDAContext.h`` but call none of these
    libraries, so the handle/status typedefs suffice and nothing of them is linked (the JSON lists them).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from queue import Empty, Queue
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_REF = REPO / ".ref" / "stylegan3"
DEFAULT_GPU_OUT = REPO / "bench" / "results" / "nvidia_ref_gpu_train.json"
DEFAULT_CPU_OUT = REPO / "bench" / "results" / "nvidia_ref_cpu_step.json"
PATCH_MARK = "rootedgan-patch"
PHASES = ("data", "Gmain", "Greg", "Dmain", "Dreg", "ema")
# Third-party modules that NVIDIA's train.py / training_loop.py import and the GPU machine has; a CPU
# checkout may lack them, which the dry run reports without failing.
GPU_ONLY_DEPS = ("click", "psutil")
# Headers that torch's ATen/cuda/CUDAContext.h (included by NVIDIA's .cpp bindings) pulls in.
CUDA_LIB_HEADERS = ("cusparse.h", "cublas_v2.h", "cublasLt.h", "cusolverDn.h", "cusolver_common.h")


# -- patches to the copy of NVIDIA's code in --ref ------------------------------------------------------


@dataclass(frozen=True)
class Patch:
    """Replace the line ``old`` in ``path`` (relative to the ref folder) by ``new``."""

    path: str
    old: str
    new: str
    why: str


_PARSE_VERSION = f"""try:  # {PATCH_MARK}: pkg_resources left setuptools (>= 81); same parse_version
    from packaging.version import parse as parse_version
except ImportError:  # {PATCH_MARK}
    from torch._vendor.packaging.version import parse as parse_version
"""
_STRTOBOOL = f"""try:  # {PATCH_MARK}: distutils left the standard library in Python 3.12
    from distutils.util import strtobool
except ImportError:  # {PATCH_MARK}
    def strtobool(val):
        val = val.lower()
        if val in ('y', 'yes', 't', 'true', 'on', '1'):
            return 1
        if val in ('n', 'no', 'f', 'false', 'off', '0'):
            return 0
        raise ValueError(f'invalid truth value {{val!r}}')
"""
PATCHES: tuple[Patch, ...] = (
    Patch(
        "torch_utils/ops/conv2d_gradfix.py",
        "from pkg_resources import parse_version\n",
        _PARSE_VERSION,
        "pkg_resources is gone from setuptools >= 81: every network module imports conv2d_gradfix",
    ),
    Patch(
        "torch_utils/ops/grid_sample_gradfix.py",
        "from pkg_resources import parse_version\n",
        _PARSE_VERSION,
        "pkg_resources is gone from setuptools >= 81 (imported by training.augment and training_loop)",
    ),
    Patch(
        "torch_utils/misc.py",
        "        super().__init__(dataset)\n",
        f"        super().__init__()  # {PATCH_MARK}: Sampler.__init__ lost data_source (torch 2.10)\n",
        "torch >= 2.10 removed Sampler.__init__'s unused data_source: InfiniteSampler raised TypeError",
    ),
    Patch(
        "torch_utils/custom_ops.py",
        "            torch.utils.cpp_extension.load(name=module_name, build_directory=cached_build_dir,\n",
        "            module = torch.utils.cpp_extension.load(name=module_name, "
        f"build_directory=cached_build_dir,  # {PATCH_MARK}\n",
        "torch's cpp_extension.load() returns the module and no longer puts its folder on sys.path "
        "(seen on torch 2.11: ModuleNotFoundError: No module named 'bias_act_plugin')",
    ),
    Patch(
        "torch_utils/custom_ops.py",
        "            torch.utils.cpp_extension.load(name=module_name, verbose=verbose_build, "
        "sources=sources, **build_kwargs)\n",
        "            module = torch.utils.cpp_extension.load(name=module_name, verbose=verbose_build, "
        f"sources=sources, **build_kwargs)  # {PATCH_MARK}\n",
        "the same, for the uncached branch",
    ),
    Patch(
        "torch_utils/custom_ops.py",
        "        module = importlib.import_module(module_name)\n",
        f"        pass  # {PATCH_MARK}: the module is what cpp_extension.load() returned\n",
        "the same: importing it by name fails, the returned module is used",
    ),
    Patch(
        "dnnlib/util.py",
        "from distutils.util import strtobool\n",
        _STRTOBOOL,
        "distutils is not in Python >= 3.12's standard library (dnnlib is imported by everything)",
    ),
)


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def apply_patches(ref: Path) -> list[dict[str, str]]:
    """Apply :data:`PATCHES` to the NVIDIA checkout ``ref`` (idempotent); one status dict per patch."""
    done = []
    for patch in PATCHES:
        path = ref / patch.path
        entry = {"path": patch.path, "why": patch.why}
        if not path.is_file():
            entry["status"] = "file missing"
        else:
            text = path.read_text()
            if patch.new in text:
                entry["status"] = "already applied"
            elif patch.old in text:
                _atomic_write_text(path, text.replace(patch.old, patch.new, 1))
                entry["status"] = "applied"
            else:
                entry["status"] = "not applicable (line not found)"
        done.append(entry)
    return done


def nvidia_commit(ref: Path) -> str | None:
    """The commit of the NVIDIA checkout: ``ref/COMMIT`` (written at export) or ``git rev-parse``."""
    marker = ref / "COMMIT"
    if marker.is_file():
        return marker.read_text().strip() or None
    try:
        out = subprocess.run(
            ["git", "-C", str(ref), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _check_ref(ref: Path) -> Path:
    ref = ref.resolve()
    if not (ref / "train.py").is_file() or not (ref / "training").is_dir():
        raise SystemExit(
            f"{ref} is not a checkout of NVIDIA's stylegan3 (no train.py / training/): see the docstring "
            "of bench/nvidia_ref.py for how to make .ref/stylegan3"
        )
    return ref


# -- CUDA headers and environment for NVIDIA's plugin builds -------------------------------------------


def _is_cuda_root(path: str | Path) -> bool:
    return Path(path, "bin", "nvcc").exists() and Path(path, "include", "cuda_runtime_api.h").is_file()


def find_cuda_home() -> str | None:
    """The CUDA toolkit root: CUDA_HOME / CUDA_PATH as given, else the toolkit of ``nvcc`` on PATH when it
    has ``include/`` (a wrapper script such as ``/usr/local/bin/nvcc`` does not count), else
    /usr/local/cuda. torch guesses ``dirname(dirname(which nvcc))``, which a wrapper script misleads."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            return os.environ[var]
    nvcc = shutil.which("nvcc")
    if nvcc and _is_cuda_root(Path(os.path.realpath(nvcc)).parent.parent):
        return str(Path(os.path.realpath(nvcc)).parent.parent)
    if _is_cuda_root("/usr/local/cuda"):
        return "/usr/local/cuda"
    return str(Path(nvcc).parent.parent) if nvcc else None


def _site_dirs() -> list[Path]:
    dirs = []
    for entry in sys.path:
        p = Path(entry or ".")
        if p.is_dir() and p.name in ("site-packages", "dist-packages") and p not in dirs:
            dirs.append(p)
    return dirs


def find_cuda_library_headers() -> tuple[list[str], list[str]]:
    """Folders to add for the cuBLAS/cuSPARSE/cuSOLVER headers missing from the CUDA toolkit.

    Returns (folders from pip's ``nvidia`` packages that hold the missing headers, headers found nowhere).
    Both are empty when the toolkit has them all.
    """
    home = find_cuda_home()
    base = Path(home, "include") if home else None
    missing = [h for h in CUDA_LIB_HEADERS if base is None or not (base / h).is_file()]
    if not missing:
        return [], []
    candidates: list[Path] = []
    for site in _site_dirs():
        for pattern in ("nvidia/cu13/include", "nvidia/cu12/include", "nvidia/*/include"):
            candidates += sorted(site.glob(pattern))
    found: list[str] = []
    nowhere = []
    for header in missing:
        where = next((c for c in candidates if (c / header).is_file()), None)
        if where is None:
            nowhere.append(header)
        elif str(where) not in found:
            found.append(str(where))
    return found, nowhere


_STUB_HEADERS = {
    "cusparse.h": "typedef struct cusparseContext* cusparseHandle_t;\n"
    "typedef enum { CUSPARSE_STATUS_SUCCESS = 0 } cusparseStatus_t;\n",
    "cublas_v2.h": "typedef struct cublasContext* cublasHandle_t;\n"
    "typedef enum { CUBLAS_STATUS_SUCCESS = 0 } cublasStatus_t;\n",
    "cublasLt.h": "typedef struct cublasLtContext* cublasLtHandle_t;\n",
    "cusolver_common.h": "typedef enum { CUSOLVER_STATUS_SUCCESS = 0, CUSOLVER_STATUS_INVALID_VALUE = 3 }"
    " cusolverStatus_t;\n",
    "cusolverDn.h": "#include <cusolver_common.h>\ntypedef struct cusolverDnContext* cusolverDnHandle_t;\n",
}


def write_stub_headers(folder: Path, names: list[str]) -> Path:
    """Typedef-only stand-ins for cuBLAS/cuSPARSE/cuSOLVER headers in ``folder``.

    NVIDIA's bindings include ``ATen/cuda/CUDAContext.h`` but call none of these libraries, so the
    handle and status typedefs are all the compiler needs; nothing from them is linked.
    """
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_text(f"#pragma once\n// rootedgan typedef-only stub\n{_STUB_HEADERS[name]}")
    return folder


def _prepend_path_var(env: MutableMapping[str, str], name: str, dirs: list[str]) -> None:
    if dirs:
        old = env.get(name)
        env[name] = os.pathsep.join(dirs + ([old] if old else []))


# -- synthetic data set -------------------------------------------------------------------------------


def make_dataset(path: Path, count: int, res: int, seed: int = 0) -> dict[str, Any]:
    """A zip of ``count`` random smooth ``res`` x ``res`` RGB PNGs in NVIDIA's dataset_tool layout.

    Reused when a zip with the same number of images already exists at ``path``.
    """
    import numpy as np
    import PIL.Image

    info = {"path": str(path), "images": count, "resolution": res, "labels": None, "seed": seed}
    if path.is_file():
        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist() if n.endswith(".png")]
        if len(names) == count:
            return info | {"reused": True, "bytes": path.stat().st_size}
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
        for i in range(count):
            img = np.zeros((res, res, 3), np.float32)
            for cells, weight in ((4, 1.0), (16, 0.35)):  # a coarse colour field and finer detail
                field = rng.integers(0, 256, size=(cells, cells, 3), dtype=np.uint8)
                up = PIL.Image.fromarray(field).resize((res, res), PIL.Image.BICUBIC)
                img += weight * (np.asarray(up, np.float32) - 128)
            img = np.clip(img / 1.35 + 128, 0, 255).astype(np.uint8)
            buf = io.BytesIO()
            PIL.Image.fromarray(img, "RGB").save(buf, format="png", compress_level=1)
            idx = f"{i:08d}"
            zf.writestr(f"{idx[:5]}/img{idx}.png", buf.getvalue())
    tmp.replace(path)
    return info | {"reused": False, "bytes": path.stat().st_size}


# -- gpu-train: NVIDIA's train.py, timed ----------------------------------------------------------------

TICK_RE = re.compile(
    r"^tick\s+(\d+)\s+kimg\s+([\d.]+)\s+time\s+(.+?)\s+sec/tick\s+([\d.]+)\s+sec/kimg\s+([\d.]+)"
)
FIELD_RES = {
    "maintenance_s": re.compile(r"\bmaintenance\s+([\d.]+)"),
    "cpumem_gb": re.compile(r"\bcpumem\s+([\d.]+)"),
    "gpumem_gb": re.compile(r"\bgpumem\s+([\d.]+)"),
    "reserved_gb": re.compile(r"\breserved\s+([\d.]+)"),
    "augment": re.compile(r"\baugment\s+([\d.]+)"),
}
NOTE_RE = re.compile(
    r"PyTorch plugin|Done\.|Failed|[Ww]arning|Falling back|gradfix|Traceback|Error|error:|"
    r"deprecat|nvcc|ninja|Skipping",
    re.IGNORECASE,
)
RUN_DIR_RE = re.compile(r"^Output directory:\s+(.+?)\s*$")


def _parse_duration(text: str) -> float | None:
    """NVIDIA's ``dnnlib.util.format_time`` ("12s", "1m 02s", "1h 02m 03s", "1d 02h 03m") in seconds."""
    units = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    parts = re.findall(r"(\d+)([dhms])", text)
    return float(sum(int(n) * units[u] for n, u in parts)) if parts else None


def parse_tick_line(line: str) -> dict[str, Any] | None:
    """One of NVIDIA's ``tick N kimg X time ... sec/tick ... sec/kimg Y ... gpumem Z ...`` lines."""
    m = TICK_RE.match(line.strip())
    if not m:
        return None
    tick: dict[str, Any] = {
        "tick": int(m.group(1)),
        "kimg": float(m.group(2)),
        "time": m.group(3),
        "time_s": _parse_duration(m.group(3)),
        "sec_per_tick": float(m.group(4)),
        "sec_per_kimg": float(m.group(5)),
    }
    for key, rx in FIELD_RES.items():
        fm = rx.search(line)
        tick[key] = float(fm.group(1)) if fm else None
    return tick


def nvidia_train_command(
    python: str, data: Path, outdir: Path, batch: int, workers: int, extra: list[str]
) -> list[str]:
    """NVIDIA's stylegan3 ``train.py`` command line for our ``paper256`` preset (see the docstring)."""
    return [
        python,
        "train.py",
        f"--outdir={outdir}",
        "--cfg=stylegan2",
        f"--data={data}",
        "--gpus=1",
        f"--batch={batch}",
        "--gamma=1",
        "--cbase=16384",
        "--cmax=512",
        "--map-depth=8",
        "--glr=0.0025",
        "--dlr=0.0025",
        f"--mbstd-group={_mbstd_group(batch, 8)}",
        "--aug=noaug",
        "--metrics=none",
        "--tick=1",
        "--snap=100000",
        "--kimg=1000",
        f"--workers={workers}",
        "--seed=0",
        *extra,
    ]


def _mbstd_group(batch: int, preferred: int) -> int:
    """The largest minibatch-std group <= ``preferred`` dividing ``batch`` (as bench/train.py picks it)."""
    return max(g for g in range(1, min(preferred, batch) + 1) if batch % g == 0)


def nvidia_env(ref: Path, workdir: Path) -> tuple[dict[str, str], dict[str, str], list[str]]:
    """(environment for NVIDIA's subprocess, the variables we set, headers stubbed as found nowhere)."""
    env = dict(os.environ)
    added = {"PYTHONUNBUFFERED": "1", "TORCH_EXTENSIONS_DIR": str(workdir / "torch_extensions")}
    home = find_cuda_home()
    if home and not (env.get("CUDA_HOME") or env.get("CUDA_PATH")) and _is_cuda_root(home):
        added["CUDA_HOME"] = home  # so torch does not take a wrapper script's folder for the toolkit
    env.update(added)
    found, nowhere = find_cuda_library_headers()
    if nowhere:  # last resort: typedef-only stubs (see write_stub_headers)
        found.append(str(write_stub_headers(workdir / "stub-include", nowhere)))
    if found:
        _prepend_path_var(env, "CPLUS_INCLUDE_PATH", found)
        added["CPLUS_INCLUDE_PATH"] = env["CPLUS_INCLUDE_PATH"]
    _prepend_path_var(env, "PYTHONPATH", [str(ref)])
    return env, added, nowhere


IMPORT_MODULES = (
    "dnnlib",
    "torch_utils.misc",
    "torch_utils.persistence",
    "torch_utils.training_stats",
    "torch_utils.custom_ops",
    "torch_utils.ops.bias_act",
    "torch_utils.ops.upfirdn2d",
    "torch_utils.ops.conv2d_gradfix",
    "torch_utils.ops.conv2d_resample",
    "torch_utils.ops.grid_sample_gradfix",
    "training.networks_stylegan2",
    "training.loss",
    "training.dataset",
    "training.augment",
    "metrics.metric_main",
    "legacy",
    "training.training_loop",
    "train",
)
_IMPORT_CHECK_CODE = """
import importlib, json, sys, traceback
sys.path.insert(0, '.')
out = []
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
        out.append({'module': name, 'ok': True})
    except BaseException as e:
        missing = getattr(e, 'name', None) if isinstance(e, ModuleNotFoundError) else None
        out.append({'module': name, 'ok': False, 'missing': missing,
                    'error': traceback.format_exception_only(type(e), e)[-1].strip()})
extra = {}
try:
    import torch
    from torch_utils.ops import conv2d_gradfix
    extra['torch'] = torch.__version__
    extra['conv2d_gradfix_custom_op_on_cuda'] = not conv2d_gradfix._use_pytorch_1_11_api
except BaseException as e:
    extra['error'] = repr(e)
print('@@IMPORTS@@' + json.dumps({'modules': out, 'extra': extra}))
"""


def check_imports(ref: Path, python: str, env: dict[str, str]) -> dict[str, Any]:
    """Import each of NVIDIA's modules in a fresh subprocess (cwd ``ref``); report per module."""
    proc = subprocess.run(
        [python, "-c", _IMPORT_CHECK_CODE, *IMPORT_MODULES],
        cwd=ref,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("@@IMPORTS@@"):
            return json.loads(line[len("@@IMPORTS@@") :])
    return {"modules": [], "extra": {"error": f"exit {proc.returncode}: {proc.stderr[-2000:]}"}}


def _machine_info(python: str) -> dict[str, Any]:
    """bench.common.machine_info() from a subprocess (keeps CUDA out of this process)."""
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); from bench.common import machine_info; "
        "print('@@INFO@@' + json.dumps(machine_info()))"
    )
    try:
        proc = subprocess.run([python, "-c", code, str(REPO)], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as err:
        return {"error": repr(err)}
    for line in proc.stdout.splitlines():
        if line.startswith("@@INFO@@"):
            return json.loads(line[len("@@INFO@@") :])
    return {"error": proc.stderr[-1000:]}


def _child_setup() -> None:  # pragma: no cover - runs in the child between fork and exec
    os.setsid()
    with contextlib.suppress(Exception):  # die with us (Linux): no orphaned trainer left on the GPU
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


class _Interrupted(Exception):
    pass


def _stats_phase_ms(run_dir: Path | None) -> dict[str, Any]:
    """Median over ticks >= 1 of NVIDIA's per-phase CUDA-event times (``Timing/<phase>`` in stats.jsonl)."""
    if run_dir is None or not (run_dir / "stats.jsonl").is_file():
        return {}
    per: dict[str, list[float]] = {}
    for line in (run_dir / "stats.jsonl").read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("Progress/tick", {}).get("mean", 0) < 1:
            continue
        for key, val in rec.items():
            if key.startswith("Timing/") and key[7:] in ("Gmain", "Greg", "Dmain", "Dreg"):
                if isinstance(val, dict) and val.get("num"):
                    per.setdefault(key[7:], []).append(val["mean"])
    return {k: {"median_ms": statistics.median(v), "ticks": len(v)} for k, v in per.items()}


def _summary(ticks: list[dict[str, Any]], t_tick0: float | None, now: float) -> dict[str, Any]:
    measured = [t for t in ticks if t["tick"] >= 1]
    out: dict[str, Any] = {"measured_ticks": len(measured)}
    if t_tick0 is not None:
        out["seconds_since_tick0"] = round(now - t_tick0, 2)
    if measured:
        spk = statistics.median(t["sec_per_kimg"] for t in measured)
        mems = [t["gpumem_gb"] for t in measured if t.get("gpumem_gb") is not None]
        out |= {
            "sec_per_kimg_median": spk,
            "sec_per_kimg_min": min(t["sec_per_kimg"] for t in measured),
            "sec_per_kimg_max": max(t["sec_per_kimg"] for t in measured),
            "img_per_s": 1000.0 / spk if spk > 0 else None,
            "kimg_measured": measured[-1]["kimg"] - (ticks[0]["kimg"] if ticks else 0.0),
            "gpumem_gib_median": statistics.median(mems) if mems else None,
            "gpumem_gib_max": max(mems) if mems else None,
        }
    return out


def gpu_train(args: argparse.Namespace) -> int:
    """The ``gpu-train`` subcommand (see the module docstring)."""
    ref = _check_ref(args.ref)
    patches = apply_patches(ref)
    workdir = (args.workdir or Path(tempfile.gettempdir()) / "rootedgan-nvidia-ref").resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    for p in patches:
        print(f"patch {p['path']}: {p['status']}")
    t_data = time.perf_counter()
    dataset = make_dataset(workdir / f"synthetic-{args.res}px-{args.images}.zip", args.images, args.res)
    verb = "reused" if dataset["reused"] else f"wrote ({time.perf_counter() - t_data:.1f} s)"
    print(
        f"data set: {dataset['path']} ({args.images} images, {args.res} px, "
        f"{dataset['bytes'] / 2**20:.1f} MiB) {verb}"
    )
    cmd = nvidia_train_command(
        args.python, Path(dataset["path"]), workdir / "runs", args.batch, args.workers, args.nv_arg
    )
    env, env_added, nowhere = nvidia_env(ref, workdir)
    print(f"cd {shlex.quote(str(ref))} && " + " ".join(f"{k}={shlex.quote(v)}" for k, v in env_added.items()))
    print("  " + shlex.join(cmd))
    if nowhere:
        print(f"note: {nowhere} not found in the CUDA toolkit nor pip's nvidia packages: typedef-only stubs")

    if args.dry_run:
        imports = check_imports(ref, args.python, env)
        bad, deps = [], []
        for m in imports["modules"]:
            if m["ok"]:
                status = "ok"
            elif m.get("missing") in GPU_ONLY_DEPS:
                status = f"missing dependency {m['missing']!r} (present on the GPU machine)"
                deps.append(m["missing"])
            else:
                status = f"FAILED: {m['error']}"
                bad.append(m["module"])
            print(f"import {m['module']:<36} {status}")
        print(f"extra: {imports['extra']}")
        if not imports["modules"]:
            bad.append("(import check did not run)")
        if not bad and not deps:
            dry = subprocess.run(
                [*cmd, "--dry-run"], cwd=ref, env=env, capture_output=True, text=True, timeout=300
            )
            tail = "\n".join((dry.stdout + dry.stderr).strip().splitlines()[-14:])
            print(f"NVIDIA train.py --dry-run: exit {dry.returncode}\n{tail}")
            if dry.returncode != 0:
                bad.append("train.py --dry-run")
        elif not bad:
            print(f"NVIDIA train.py --dry-run skipped: {sorted(set(deps))} not installed here")
        return 1 if bad else 0

    machine = _machine_info(args.python)
    log_path = workdir / "nvidia-train.log"
    record: dict[str, Any] = {
        "kind": "nvidia-stylegan3-train",
        "status": "running",
        "nvidia": {
            "ref": str(ref),
            "repo": "NVlabs/stylegan3",
            "commit": nvidia_commit(ref),
            "patches": patches,
        },
        "command": cmd,
        "command_str": shlex.join(cmd),
        "cwd": str(ref),
        "env_added": env_added,
        "cuda_headers_stubbed": nowhere,
        "machine": machine,
        "limits": {"seconds": args.seconds, "max_wall": args.max_wall},
        "dataset": dataset,
        "log": str(log_path),
        "run_dir": None,
        "ticks": [],
        "plugin_notes": [],
    }
    out: Path = args.out

    def save(now: float) -> None:
        record["summary"] = _summary(record["ticks"], t_tick0, now)
        record["wall_s"] = round(now - t_start, 2)
        _atomic_write_text(out, json.dumps(record, indent=2))

    def on_signal(signum: int, _frame: Any) -> None:
        raise _Interrupted(signal.Signals(signum).name)

    old_handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    t_start = time.monotonic()
    t_tick0: float | None = None
    stop_reason: str | None = None
    kill_at: float | None = None
    tail: list[str] = []
    lines: Queue[str | None] = Queue()
    proc = subprocess.Popen(
        cmd,
        cwd=ref,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        errors="replace",
        bufsize=1,
        preexec_fn=_child_setup,  # no threads yet: setsid + parent-death signal
    )

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    save(time.monotonic())
    try:
        with log_path.open("w") as log:
            log.write(f"$ cd {ref} && {shlex.join(cmd)}\n")
            while True:
                try:
                    line = lines.get(timeout=0.5)
                except Empty:
                    line = ""
                if line is None:
                    break
                now = time.monotonic()
                if line:
                    log.write(line)
                    log.flush()
                    print(line, end="", flush=True)
                    tail = (tail + [line.rstrip("\n")])[-60:]
                    if m := RUN_DIR_RE.match(line):
                        record["run_dir"] = m.group(1)
                    if (tick := parse_tick_line(line)) is not None:
                        tick["wall_s"] = round(now - t_start, 2)
                        if t_tick0 is None:
                            t_tick0 = now
                        record["ticks"].append(tick)
                        save(now)
                    elif NOTE_RE.search(line) and len(record["plugin_notes"]) < 200:
                        record["plugin_notes"].append(line.strip()[:500])
                if stop_reason is None:
                    if t_tick0 is not None and now - t_tick0 >= args.seconds:
                        stop_reason = f"{args.seconds:g} s after tick 0"
                    elif now - t_start >= args.max_wall:
                        stop_reason = f"max wall {args.max_wall:g} s"
                    if stop_reason is not None:
                        print(f"\n[nvidia_ref] stopping NVIDIA's train.py: {stop_reason}", flush=True)
                        _signal_group(proc, signal.SIGTERM)
                        kill_at = now + 15
                elif kill_at is not None and now >= kill_at:
                    _signal_group(proc, signal.SIGKILL)
                    kill_at = None
    except _Interrupted as err:
        stop_reason = f"interrupted ({err})"
        record["status"] = "interrupted"
    finally:
        if proc.poll() is None:
            _signal_group(proc, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
        _signal_group(proc, signal.SIGKILL)  # stray DataLoader workers of the group, if any
        for s, h in old_handlers.items():
            signal.signal(s, h)

    now = time.monotonic()
    run_dir = Path(record["run_dir"]) if record["run_dir"] else None
    if run_dir is not None and not run_dir.is_absolute():
        run_dir = ref / run_dir
    record["phase_ms_stats_jsonl"] = _stats_phase_ms(run_dir)
    record["returncode"] = proc.returncode
    record["stop_reason"] = stop_reason or "NVIDIA's train.py exited by itself"
    record["log_tail"] = tail[-40:]
    measured = [t for t in record["ticks"] if t["tick"] >= 1]
    if record["status"] != "interrupted":
        if measured:
            record["status"] = "ok"
        else:
            record["status"] = "failed" if stop_reason is None else "no ticks >= 1"
    save(now)
    s = record["summary"]
    print(f"\n[nvidia_ref] {record['status']}: {record['stop_reason']}; wrote {out}")
    if measured:
        print(
            f"NVIDIA stylegan3 --cfg=stylegan2, batch {args.batch}, {machine.get('gpu')}: "
            f"{s['sec_per_kimg_median']:.3f} sec/kimg (median of {s['measured_ticks']} ticks >= 1) = "
            f"{s['img_per_s']:.1f} img/s, gpumem {s['gpumem_gib_median']} GiB"
        )
        print(
            f"ours: python bench/train.py --device cuda --preset paper256 --batch {args.batch} "
            f"--nvidia-flags --nvidia-sec-per-kimg {s['sec_per_kimg_median']:.4g} "
            f"--nvidia-gpumem-gb {s['gpumem_gib_median']}"
        )
    return 0 if record["status"] == "ok" else 1


# -- compile-check: NVIDIA's plugins through torch.utils.cpp_extension, no GPU needed -------------------

PLUGINS = {
    "bias_act": ("bias_act.cpp", "bias_act.cu", "bias_act.h"),
    "upfirdn2d": ("upfirdn2d.cpp", "upfirdn2d.cu", "upfirdn2d.h"),
}


def _nvidia_cuda_cflags(py_file: Path) -> list[str]:
    """The ``extra_cuda_cflags`` NVIDIA's op module passes to ``custom_ops.get_plugin``."""
    m = re.search(r"extra_cuda_cflags\s*=\s*\[([^\]]*)\]", py_file.read_text())
    return re.findall(r"'([^']*)'", m.group(1)) if m else []


def compile_check(ref: Path, arch: str, jobs: int, build_root: Path) -> dict[str, Any]:
    """Build NVIDIA's bias_act and upfirdn2d plugins like their ``get_plugin`` (see the docstring)."""
    import torch
    import torch.utils.cpp_extension as ce

    cuda_home = find_cuda_home()
    if cuda_home is None or not Path(cuda_home, "bin", "nvcc").exists():
        return {"error": "nvcc not found (set CUDA_HOME or put nvcc on PATH)"}
    ce.CUDA_HOME = cuda_home  # a CPU-only wheel leaves it None
    nvcc_version = (
        subprocess.run([str(Path(cuda_home, "bin", "nvcc")), "--version"], capture_output=True, text=True)
        .stdout.strip()
        .splitlines()[-2:]
    )
    torch_inc = Path(ce.include_paths()[0])
    macros_missing = not (torch_inc / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h").is_file()
    defines = ["-DC10_USING_CUSTOM_GENERATED_MACROS"] if macros_missing else []
    found, nowhere = find_cuda_library_headers()
    build_root.mkdir(parents=True, exist_ok=True)
    inc_dirs = list(found)
    if nowhere:
        inc_dirs.append(str(write_stub_headers(build_root / "stub-include", nowhere)))
    saved = {k: os.environ.get(k) for k in ("TORCH_CUDA_ARCH_LIST", "MAX_JOBS", "CPLUS_INCLUDE_PATH")}
    os.environ["TORCH_CUDA_ARCH_LIST"] = arch
    os.environ["MAX_JOBS"] = str(jobs)
    _prepend_path_var(os.environ, "CPLUS_INCLUDE_PATH", inc_dirs)
    result: dict[str, Any] = {
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "nvcc": nvcc_version,
        "cuda_home": cuda_home,
        "arch": arch,
        "defines": defines,
        "library_headers_from": found,
        "library_headers_stubbed": nowhere,
        "plugins": {},
    }
    ops_dir = ref / "torch_utils" / "ops"
    try:
        for op, files in PLUGINS.items():
            build = build_root / op
            shutil.rmtree(build, ignore_errors=True)
            build.mkdir(parents=True)
            for f in files:
                shutil.copyfile(ops_dir / f, build / f)
            cuda_flags = _nvidia_cuda_cflags(ops_dir / f"{op}.py")
            entry: dict[str, Any] = {"extra_cuda_cflags": cuda_flags}
            t0 = time.perf_counter()
            try:
                ce.load(
                    name=f"{op}_plugin",
                    sources=[str(build / f) for f in files if not f.endswith(".h")],
                    build_directory=str(build),
                    extra_cuda_cflags=cuda_flags + defines,
                    extra_cflags=defines,
                    verbose=False,
                )
                entry["load"] = "ok (compiled, linked and imported)"
            except Exception as err:  # the message is the result
                msg = str(err).strip().splitlines()
                why = [ln.strip() for ln in msg if re.search(r"error|cannot find|undefined|No such", ln)]
                entry["load"] = "failed: " + (" | ".join(why[-6:]) or msg[-1])[:1500]
                if not torch.cuda.is_available() and torch.version.cuda is None:
                    entry["load"] += " (a CPU-only torch wheel has no libc10_cuda/libtorch_cuda to link)"
            objects = [f"{op}.o", f"{op}.cuda.o"]
            if not all((build / o).is_file() for o in objects) and (build / "build.ninja").is_file():
                ninja = subprocess.run(
                    ["ninja", "-k", "0", "-j", str(jobs), *objects], cwd=build, capture_output=True, text=True
                )
                entry["ninja_log_tail"] = (ninja.stdout + ninja.stderr).strip().splitlines()[-30:]
            for o, label in zip(objects, ("cpp", "cu"), strict=True):
                entry[label] = "compiled" if (build / o).is_file() else "FAILED"
            entry["seconds"] = round(time.perf_counter() - t0, 1)
            result["plugins"][op] = entry
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    result["ok"] = all(e["cpp"] == e["cu"] == "compiled" for e in result["plugins"].values())
    return result


# -- cpu-step: NVIDIA's inner loop on the CPU -----------------------------------------------------------


def nvidia_cpu_step_times(
    ref: str | Path = DEFAULT_REF,
    steps: int = 16,
    warmup: int = 4,
    threads: int | None = 1,
    preset: str = "smoke",
    seed: int = 0,
    phase_context: Callable[[str], Any] | None = None,
    batch: int | None = None,
) -> dict[str, Any]:
    """Time NVIDIA's training-loop inner loop on the CPU with our ``preset`` (see the module docstring).
    ``phase_context(name)``, when given, is entered around every phase and the EMA (``bench/opcount.py``);
    ``batch`` replaces the preset's.

    Puts ``ref`` on ``sys.path`` and sets torch's thread count: call it in a fresh process.
    """
    from contextlib import nullcontext

    phase_context = phase_context or (lambda name: nullcontext())
    import copy

    import numpy as np
    import torch

    ref = _check_ref(Path(ref))
    patches = apply_patches(ref)
    if str(REPO) not in sys.path:
        sys.path.insert(1, str(REPO))
    from bench.train import preset_config

    try:
        from bench.train import _cpu_snapshot, _other_cpu_cores
    except ImportError:  # pragma: no cover - helpers renamed
        _cpu_snapshot = _other_cpu_cores = None  # type: ignore[assignment]

    if threads:
        torch.set_num_threads(threads)
    if str(ref) not in sys.path:  # NVIDIA's packages: dnnlib, torch_utils, training (they stay imported)
        sys.path.insert(0, str(ref))
    from torch_utils import misc
    from torch_utils.ops import bias_act, conv2d_gradfix, grid_sample_gradfix, upfirdn2d
    from training import networks_stylegan2
    from training.loss import StyleGAN2Loss

    cfg = preset_config(preset, batch)
    gk, dk, hp, batch = cfg["g_kwargs"], cfg["d_kwargs"], cfg["hparams"], cfg["batch"]
    device = torch.device("cpu")
    # What NVIDIA's training_loop sets up front (cudnn/TF32 flags are no-ops on a CPU).
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.benchmark = True
    conv2d_gradfix.enabled = True
    grid_sample_gradfix.enabled = True

    G = networks_stylegan2.Generator(
        z_dim=gk["z_dim"],
        c_dim=gk["c_dim"],
        w_dim=gk["w_dim"],
        img_resolution=gk["img_resolution"],
        img_channels=gk["img_channels"],
        mapping_kwargs=dict(gk["mapping_kwargs"]),
        fused_modconv_default="inference_only",  # --cfg=stylegan2
        **gk["synthesis_kwargs"],
    )
    G = G.train().requires_grad_(False).to(device)
    D = networks_stylegan2.Discriminator(**copy.deepcopy(dk)).train().requires_grad_(False).to(device)
    G_ema = copy.deepcopy(G).eval()
    loss = StyleGAN2Loss(
        device=device,
        G=G,
        D=D,
        augment_pipe=None,
        r1_gamma=hp["r1_gamma"],
        style_mixing_prob=hp["style_mixing_prob"],
        pl_weight=hp["pl_weight"],
        pl_batch_shrink=hp["pl_batch_shrink"],
        pl_decay=hp.get("pl_decay", 0.01),
        pl_no_weight_grad=True,
        blur_init_sigma=0,
        blur_fade_kimg=0,
    )
    phases = []
    for name, module, lr, interval in (
        ("G", G, hp["g_lr"], hp["pl_interval"]),
        ("D", D, hp["d_lr"], hp["r1_interval"]),
    ):
        c = interval / (interval + 1)  # lazy regularization
        opt = torch.optim.Adam(module.parameters(), lr=lr * c, betas=[b**c for b in hp["betas"]], eps=1e-8)
        phases += [(name + "main", module, opt, 1), (name + "reg", module, opt, interval)]

    res, z_dim = gk["img_resolution"], G.z_dim
    gen = torch.Generator().manual_seed(1)
    pool = [torch.randint(0, 256, (batch, 3, res, res), dtype=torch.uint8, generator=gen) for _ in range(4)]
    ema_nimg = hp["ema_kimg"] * 1000
    cycle = math.lcm(max(hp["r1_interval"], 1), max(hp["pl_interval"], 1))
    steps = -(-steps // cycle) * cycle
    total = warmup + steps

    records: list[dict[str, Any]] = []
    cpu_start = cpu_end = None
    cur_nimg = 0
    for batch_idx in range(total):
        if batch_idx == warmup and _cpu_snapshot is not None:
            cpu_start = _cpu_snapshot()
        t_step = time.perf_counter()
        marks: dict[str, float] = {}
        # Fetch training data (NVIDIA: next(loader), to device, x / 127.5 - 1, split per GPU batch).
        real_img = (pool[batch_idx % len(pool)].to(device).to(torch.float32) / 127.5 - 1).split(batch)
        real_c = torch.zeros([batch, 0], device=device).split(batch)
        all_gen_z = torch.randn([len(phases) * batch, z_dim], device=device)
        all_gen_z = [z.split(batch) for z in all_gen_z.split(batch)]
        all_gen_c = [torch.zeros([batch, 0], device=device).split(batch) for _ in phases]
        t = time.perf_counter()
        marks["data"] = t - t_step
        for (name, module, opt, interval), gen_z, gen_c in zip(phases, all_gen_z, all_gen_c, strict=True):
            if batch_idx % interval != 0:
                continue
            t0 = time.perf_counter()
            with phase_context(name):
                opt.zero_grad(set_to_none=True)
                module.requires_grad_(True)
                for r_img, r_c, g_z, g_c in zip(real_img, real_c, gen_z, gen_c, strict=True):
                    loss.accumulate_gradients(
                        phase=name,
                        real_img=r_img,
                        real_c=r_c,
                        gen_z=g_z,
                        gen_c=g_c,
                        gain=interval,
                        cur_nimg=cur_nimg,
                    )
                module.requires_grad_(False)
                params = [p for p in module.parameters() if p.grad is not None]
                if params:
                    flat = torch.cat([p.grad.flatten() for p in params])
                    misc.nan_to_num(flat, nan=0, posinf=1e5, neginf=-1e5, out=flat)
                    for p, g in zip(params, flat.split([p.numel() for p in params]), strict=True):
                        p.grad = g.reshape(p.shape)
                opt.step()
            marks[name] = time.perf_counter() - t0
        t0 = time.perf_counter()
        beta = 0.5 ** (batch / max(ema_nimg, 1e-8))
        with phase_context("ema"):
            for p_ema, p in zip(G_ema.parameters(), G.parameters(), strict=True):  # no grad: G is frozen
                p_ema.copy_(p.lerp(p_ema, beta))
            for b_ema, b in zip(G_ema.buffers(), G.buffers(), strict=True):
                b_ema.copy_(b)
        t_end = time.perf_counter()
        marks["ema"] = t_end - t0
        cur_nimg += batch
        kind = ("P" if "Greg" in marks else "") + ("R" if "Dreg" in marks else "")
        records.append({"marks": marks, "start": t_step, "end": t_end, "kind": kind or "-"})
    if _cpu_snapshot is not None:
        cpu_end = _cpu_snapshot()

    window = records[warmup:]
    wall = window[-1]["end"] - window[0]["start"]
    step_ms = [(r["end"] - r["start"]) * 1e3 for r in window]
    phases_ms: dict[str, Any] = {}
    for name in PHASES:
        vals = [r["marks"][name] * 1e3 for r in window if name in r["marks"]]
        phases_ms[name] = {
            "count": len(vals),
            "mean": statistics.fmean(vals) if vals else None,
            "share": sum(vals) / (wall * 1e3),
        }
    r1_steps = [r for r in window if "Dreg" in r["marks"]]
    cycle_ms = [sum(step_ms[i : i + cycle]) for i in range(0, len(step_ms) - cycle + 1, cycle)]
    finite = all(bool(torch.isfinite(p).all()) for p in [*G.parameters(), *D.parameters()])
    return {
        "implementation": "NVIDIA stylegan3 networks_stylegan2 + loss.StyleGAN2Loss, replica of "
        "training_loop's inner loop (bench/nvidia_ref.py)",
        "nvidia": {
            "ref": str(ref),
            "repo": "NVlabs/stylegan3",
            "commit": nvidia_commit(ref),
            "patches": patches,
        },
        "preset": preset,
        "batch": batch,
        "warmup": warmup,
        "measured_steps": len(window),
        "cycle": cycle,
        "img_per_s": batch * len(window) / wall,
        "ms_per_step": wall * 1e3 / len(window),
        "img_per_s_best_cycle": batch * cycle / (min(cycle_ms) / 1e3) if cycle_ms else None,
        "phases_ms": phases_ms,
        "dmain_plus_dreg_ms": (
            statistics.fmean((r["marks"]["Dmain"] + r["marks"]["Dreg"]) * 1e3 for r in r1_steps)
            if r1_steps
            else None
        ),
        "step_ms": [round(v, 3) for v in step_ms],
        "step_kind": [r["kind"] for r in window],
        "ops_impl": {
            "bias_act": "ref" if bias_act._plugin is None else "cuda plugin loaded",
            "upfirdn2d": "ref" if upfirdn2d._plugin is None else "cuda plugin loaded",
            "conv2d_gradfix": "torch.nn.functional.conv2d (custom op off: CPU tensors / PyTorch >= 1.11)",
        },
        "g_params": sum(p.numel() for p in G.parameters()),
        "d_params": sum(p.numel() for p in D.parameters()),
        "pl_mean": float(loss.pl_mean),
        "params_finite": finite,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "other_cpu_cores": _other_cpu_cores(cpu_start, cpu_end) if _other_cpu_cores else None,
        "loss_kwargs": {
            "r1_gamma": hp["r1_gamma"],
            "style_mixing_prob": hp["style_mixing_prob"],
            "pl_weight": hp["pl_weight"],
            "pl_batch_shrink": hp["pl_batch_shrink"],
            "pl_decay": hp.get("pl_decay", 0.01),
            "pl_no_weight_grad": True,
            "blur_init_sigma": 0,
        },
        "G_reg_interval": hp["pl_interval"],
        "D_reg_interval": hp["r1_interval"],
        "ema_kimg": hp["ema_kimg"],
        "ema_rampup": None,
        "config": cfg,
    }


def run_cpu_step_subprocess(
    ref: str | Path = DEFAULT_REF,
    steps: int = 16,
    warmup: int = 4,
    threads: int | None = 1,
    timeout: float = 1800,
    python: str = sys.executable,
) -> dict[str, Any]:
    """:func:`nvidia_cpu_step_times` in a fresh process (this script's ``cpu-step``); ``{"error": ...}``
    when it fails."""
    with tempfile.TemporaryDirectory(prefix="rootedgan-nvidia-") as tmp:
        out = Path(tmp, "nvidia-cpu-step.json")
        cmd = [python, str(Path(__file__).resolve()), "cpu-step", "--ref", str(ref), "--steps", str(steps)]
        cmd += ["--warmup", str(warmup), "--out", str(out), "--quiet"]
        if threads:
            cmd += ["--threads", str(threads)]
        try:
            proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout:g} s", "command": cmd}
        if proc.returncode != 0 or not out.is_file():
            tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-25:])
            return {"error": f"exit {proc.returncode}", "log_tail": tail, "command": cmd}
        return json.loads(out.read_text())


def print_cpu_step(result: dict[str, Any]) -> None:
    """A table of the per-phase times of :func:`nvidia_cpu_step_times`."""
    print(
        f"NVIDIA stylegan3 inner loop on the CPU ({result['preset']}, batch {result['batch']}, "
        f"{result['torch_threads']} thread(s), torch {result['torch']}): {result['measured_steps']} steps "
        f"after {result['warmup']} warm-up"
    )
    print(f"  {result['img_per_s']:.1f} img/s, {result['ms_per_step']:.1f} ms/step", end="")
    if result.get("img_per_s_best_cycle"):
        print(f" (best cycle {result['img_per_s_best_cycle']:.1f} img/s)", end="")
    print()
    rows = [("phase", "count", "mean ms", "share")]
    for name, p in result["phases_ms"].items():
        mean = "-" if p["mean"] is None else f"{p['mean']:.1f}"
        rows.append((name, str(p["count"]), mean, f"{100 * p['share']:.0f}%"))
    if result.get("dmain_plus_dreg_ms") is not None:
        rows.append(
            (
                "Dmain+Dreg",
                str(result["phases_ms"]["Dreg"]["count"]),
                f"{result['dmain_plus_dreg_ms']:.1f}",
                "",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for i, r in enumerate(rows):
        print(
            "  "
            + "  ".join(
                c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
        if i == 0:
            print("  " + "  ".join("-" * w for w in widths))
    other = result.get("other_cpu_cores")
    if other is not None and other > 0.25:
        print(f"  note: other processes kept {other:.1f} cores busy during the measurement")
    print(f"  ops: {result['ops_impl']}")


# -- command line ----------------------------------------------------------------------------------------


_PREBUILD_CODE = """
import json, sys, time
sys.path.insert(0, '.')
import torch
from torch_utils.ops import bias_act, upfirdn2d
out = {}
for name, mod in (('bias_act', bias_act), ('upfirdn2d', upfirdn2d)):
    t = time.perf_counter()
    ok = bool(mod._init())
    out[name] = {'ok': ok, 'seconds': round(time.perf_counter() - t, 1)}
print('@@PREBUILD@@' + json.dumps(out))
"""


def prebuild(args: argparse.Namespace) -> int:
    """The ``prebuild`` subcommand: compile NVIDIA's plugins (and write the data set) into ``--workdir``
    ahead of ``gpu-train`` with the same ``--workdir``, e.g. while other work keeps the GPU busy."""
    ref = _check_ref(args.ref)
    apply_patches(ref)
    workdir = (args.workdir or Path(tempfile.gettempdir()) / "rootedgan-nvidia-ref").resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    make_dataset(workdir / f"synthetic-{args.res}px-{args.images}.zip", args.images, args.res)
    env, _, _ = nvidia_env(ref, workdir)
    t0 = time.perf_counter()
    proc = subprocess.run(
        [args.python, "-c", _PREBUILD_CODE], cwd=ref, env=env, capture_output=True, text=True
    )
    print(proc.stdout[-4000:] + proc.stderr[-4000:])
    ok = proc.returncode == 0 and "@@PREBUILD@@" in proc.stdout
    print(
        f"NVIDIA plugins {'built' if ok else 'FAILED'} in {time.perf_counter() - t0:.1f} s (cache {workdir})"
    )
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def add_ref(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--ref", type=Path, default=DEFAULT_REF, help=f"NVIDIA stylegan3 checkout (default {DEFAULT_REF})"
        )

    p_setup = sub.add_parser("setup", help="apply the patches to --ref and list them")
    add_ref(p_setup)

    p_gpu = sub.add_parser("gpu-train", help="run and time NVIDIA's train.py on the GPU")
    add_ref(p_gpu)
    p_gpu.add_argument("--batch", type=int, default=32, help="total batch (one GPU), default 32")
    p_gpu.add_argument("--seconds", type=float, default=60, help="training seconds after tick 0 (default 60)")
    p_gpu.add_argument(
        "--max-wall", type=float, default=240, help="hard limit from the start, s (default 240)"
    )
    p_gpu.add_argument("--res", type=int, default=256, help="image resolution (default 256)")
    p_gpu.add_argument("--images", type=int, default=512, help="synthetic images (default 512)")
    p_gpu.add_argument("--workers", type=int, default=3, help="NVIDIA's DataLoader workers (default 3)")
    p_gpu.add_argument("--workdir", type=Path, default=None, help="data set, runs, log, plugin cache")
    p_gpu.add_argument("--out", type=Path, default=DEFAULT_GPU_OUT, help=f"JSON (default {DEFAULT_GPU_OUT})")
    p_gpu.add_argument("--python", default=sys.executable, help="interpreter for NVIDIA's train.py")
    p_gpu.add_argument("--nv-arg", action="append", default=[], help="extra train.py argument (repeatable)")
    p_gpu.add_argument("--dry-run", action="store_true", help="print the command, check imports; no GPU")

    p_pre = sub.add_parser(
        "prebuild", help="compile NVIDIA's plugins and write the data set ahead of gpu-train"
    )
    add_ref(p_pre)
    p_pre.add_argument("--workdir", type=Path, default=None, help="the same --workdir as gpu-train")
    p_pre.add_argument("--res", type=int, default=256, help="image resolution (default 256)")
    p_pre.add_argument("--images", type=int, default=512, help="synthetic images (default 512)")
    p_pre.add_argument("--python", default=sys.executable, help="interpreter with torch")

    p_cpu = sub.add_parser("cpu-step", help="time NVIDIA's inner loop on the CPU (smoke preset)")
    add_ref(p_cpu)
    p_cpu.add_argument("--steps", type=int, default=16, help="measured steps, rounded up to whole cycles")
    p_cpu.add_argument("--warmup", type=int, default=4, help="untimed steps first")
    p_cpu.add_argument("--threads", type=int, default=1, help="torch threads (default 1; 0: torch's own)")
    p_cpu.add_argument("--out", type=Path, default=DEFAULT_CPU_OUT, help=f"JSON (default {DEFAULT_CPU_OUT})")
    p_cpu.add_argument("--quiet", action="store_true", help="no table")

    p_cc = sub.add_parser("compile-check", help="compile NVIDIA's CUDA plugins (no GPU needed)")
    add_ref(p_cc)
    p_cc.add_argument("--arch", default="9.0", help="TORCH_CUDA_ARCH_LIST (default 9.0, H100/H200)")
    p_cc.add_argument("--jobs", type=int, default=1, help="parallel compile jobs (default 1)")
    p_cc.add_argument("--build-dir", type=Path, default=None, help="default: a temporary folder")
    p_cc.add_argument("--out", type=Path, default=None, help="also write the result as JSON")
    args = parser.parse_args(argv)

    if args.command == "setup":
        ref = _check_ref(args.ref)
        print(f"NVIDIA checkout {ref} (commit {nvidia_commit(ref)})")
        for p in apply_patches(ref):
            print(f"  {p['path']}: {p['status']} - {p['why']}")
        return 0

    if args.command == "gpu-train":
        for name in ("batch", "seconds", "max_wall", "res", "images", "workers"):
            if getattr(args, name) <= 0:
                parser.error(f"--{name.replace('_', '-')} must be > 0")
        if args.res & (args.res - 1):
            parser.error("--res must be a power of two")
        return gpu_train(args)

    if args.command == "prebuild":
        return prebuild(args)

    if args.command == "cpu-step":
        if args.steps < 1 or args.warmup < 0 or args.threads < 0:
            parser.error("--steps >= 1, --warmup >= 0 and --threads >= 0 are required")
        result = nvidia_cpu_step_times(args.ref, args.steps, args.warmup, args.threads or None)
        if not args.quiet:
            print_cpu_step(result)
        _atomic_write_text(args.out, json.dumps(result, indent=2))
        if not args.quiet:
            print(f"\nwrote {args.out}")
        return 0

    ref = _check_ref(args.ref)
    apply_patches(ref)
    with contextlib.ExitStack() as stack:
        build = args.build_dir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="nv-plugins-")))
        result = compile_check(ref, args.arch, args.jobs, build.resolve())
    print(json.dumps(result, indent=2))
    if args.out:
        _atomic_write_text(args.out, json.dumps(result, indent=2))
    return 0 if result.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
