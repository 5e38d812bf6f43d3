"""Load-time compilation of the CUDA kernels (``torch.utils.cpp_extension.load`` + ninja) into
``<cache root>/<op>-<key>/`` (README, "The custom ops"), which keeps a marker from which later processes
import the build without a compiler. Tests replace the compile step, :func:`_compile`."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import platform
import shutil
import sys
import threading
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

CSRC_DIR = Path(__file__).resolve().parent / "csrc"
CACHE_ENV_VAR = "STYLEGAN_OPS_CACHE"
ROOT_CACHE_ENV_VAR = "ROOTEDGAN_CACHE"
LOCK_TIMEOUT_ENV_VAR = "STYLEGAN_OPS_LOCK_TIMEOUT"
DEFAULT_LOCK_TIMEOUT_S = 600.0
BUILD_FORMAT = 1  # bump when the build layout or flags change in a way the source hash does not capture
MARKER_NAME = "rootedgan_build.json"
TORCH_BATON_NAME = "lock"  # torch.utils.cpp_extension's own lock file inside a build directory
EXTRA_CFLAGS = ["-O3"]
EXTRA_CUDA_CFLAGS = ["-O3"]


@dataclass(frozen=True)
class OpSources:
    """The files of one op: ``compiled`` go to the compiler, ``headers`` are only hashed."""

    compiled: tuple[str, ...]
    headers: tuple[str, ...]

    def all_files(self) -> tuple[str, ...]:
        return self.compiled + self.headers


OPS: dict[str, OpSources] = {
    op: OpSources(
        compiled=(f"{op}_bindings.cpp", f"{op}_kernel.cu"),
        headers=("sg_common.h", "binding_common.h", f"{op}_math.h", f"{op}_launch.h"),
    )
    for op in ("bias_act", "upfirdn2d")
}


class PluginBuildError(RuntimeError):
    """A CUDA kernel could not be built or loaded (the message says why and what to do)."""


class PluginBuildWarning(RuntimeWarning):
    """A CUDA kernel could not be built; the (slower) reference implementation is used instead."""


@dataclass
class OpStatus:
    """What happened to one op's kernel in this process (see :func:`build_status`)."""

    name: str
    attempted: bool = False
    ok: bool = False
    cached: bool = False  # loaded from an earlier build without compiling
    reason: str | None = None  # one line: why it is unavailable
    error: str | None = None  # full error text (compiler output) of a failed build
    build_dir: str | None = None
    lock_file: str | None = None
    seconds: float | None = None  # time spent loading or building


_STATE_LOCK = threading.RLock()
_PLUGINS: dict[str, ModuleType] = {}
_STATUS: dict[str, OpStatus] = {}
_WARNED: set[str] = set()


# --------------------------------------------------------------------------------------------------
# Configuration and environment


def cache_root() -> Path:
    """Root of the build cache: ``$STYLEGAN_OPS_CACHE``, else ``$ROOTEDGAN_CACHE/ops``, else
    ``~/.cache/rootedgan/ops``."""
    if os.environ.get(CACHE_ENV_VAR):
        return Path(os.environ[CACHE_ENV_VAR]).expanduser()
    return Path(os.environ.get(ROOT_CACHE_ENV_VAR) or "~/.cache/rootedgan").expanduser() / "ops"


def lock_timeout() -> float:
    """Seconds to wait for another process's build: ``$STYLEGAN_OPS_LOCK_TIMEOUT`` or 600."""
    raw = os.environ.get(LOCK_TIMEOUT_ENV_VAR, "").strip()
    if not raw:
        return DEFAULT_LOCK_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ValueError(
            f"environment variable {LOCK_TIMEOUT_ENV_VAR} is {raw!r}; expected a number of seconds > 0"
        )
    return value


def cuda_unavailable_reason() -> str | None:
    """Why the kernels cannot run in this process, or None when they can (CUDA torch and a GPU)."""
    if getattr(torch.version, "hip", None):
        return f"torch {torch.__version__} is a ROCm build; the CUDA kernels support NVIDIA GPUs only"
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build (torch.version.cuda is None)"
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible (torch.cuda.is_available() is False)"
    return None


def gpu_archs() -> str:
    """Compute capabilities of the visible GPUs, e.g. ``sm_80+sm_90`` (part of the cache key)."""
    caps = {torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())}
    return "+".join(f"sm_{major}{minor}" for major, minor in sorted(caps)) or "none"


def _check_name(name: str) -> OpSources:
    if name not in OPS:
        raise ValueError(f"unknown stylegan_ops plugin {name!r}; expected one of {', '.join(OPS)}")
    return OPS[name]


def build_key(name: str) -> str:
    """Hex digest identifying one build of ``name`` (sources, torch, CUDA, GPU arch, Python)."""
    h = hashlib.sha256()
    for fname in sorted(set(_check_name(name).all_files())):
        h.update(fname.encode() + b"\0" + (CSRC_DIR / fname).read_bytes() + b"\0")
    parts = [
        f"format={BUILD_FORMAT}",
        f"torch={torch.__version__}",
        f"cuda={torch.version.cuda}",
        f"arch={gpu_archs()}",
        f"python={platform.python_version()}",
        f"arch_list={os.environ.get('TORCH_CUDA_ARCH_LIST', '')}",
        f"cflags={' '.join(EXTRA_CFLAGS)}",
        f"cuda_cflags={' '.join(EXTRA_CUDA_CFLAGS)}",
    ]
    h.update("\n".join(parts).encode())
    return h.hexdigest()[:16]


def build_dir(name: str) -> Path:
    """Build directory of ``name`` for this torch / CUDA / GPU / Python combination."""
    return cache_root() / f"{name}-{build_key(name)}"


def lock_path(name: str) -> Path:
    """File lock guarding the build of ``name`` (next to, not inside, its build directory)."""
    bdir = build_dir(name)
    return bdir.with_name(f"{bdir.name}.lock")


def module_name(name: str) -> str:
    """Python module name of the compiled extension of ``name``."""
    return f"stylegan_ops_{name}_plugin"


# --------------------------------------------------------------------------------------------------
# Compiling and loading


def _is_cuda_root(path: str | Path) -> bool:
    return Path(path, "bin", "nvcc").exists() and Path(path, "include", "cuda_runtime_api.h").exists()


def find_cuda_home() -> str | None:
    """CUDA toolkit root: ``$CUDA_HOME`` / ``$CUDA_PATH`` as given; else the toolkit of ``nvcc`` on PATH
    (when it has ``include/``; a wrapper script's directory does not count); else ``/usr/local/cuda``."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            return os.environ[var]
    nvcc = shutil.which("nvcc")
    root = Path(os.path.realpath(nvcc)).parent.parent if nvcc else None
    if root is not None and _is_cuda_root(root):
        return str(root)
    if _is_cuda_root("/usr/local/cuda"):
        return "/usr/local/cuda"
    return str(Path(nvcc).parent.parent) if nvcc else None


def _preflight() -> None:
    """Fail early, with advice, when a build cannot work (no nvcc, no ninja, no C++ compiler)."""
    cuda_home = find_cuda_home()
    if cuda_home is None or not Path(cuda_home, "bin", "nvcc").exists():
        raise PluginBuildError(
            f"nvcc not found: install the CUDA toolkit matching torch.version.cuda {torch.version.cuda} "
            "or set CUDA_HOME to its root"
        )
    if shutil.which("ninja") is None:
        raise PluginBuildError("ninja not found: `pip install ninja` in this environment")
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        raise PluginBuildError(f"C++ compiler {cxx!r} not found: install g++ (build-essential) or set CXX")


def _compile(name: str, sources: list[Path], build_directory: Path, *, verbose: bool = False) -> ModuleType:
    """Compile and import one op's extension (the step tests replace). Returns the module."""
    _preflight()
    import torch.utils.cpp_extension as cpp_extension  # heavy, and only ever needed for a build

    cuda_home = find_cuda_home()
    if cuda_home and not (cpp_extension.CUDA_HOME and _is_cuda_root(cpp_extension.CUDA_HOME)):
        # torch guesses the toolkit from `which nvcc` once at import; a wrapper script misleads it.
        cpp_extension.CUDA_HOME = cuda_home
    return cpp_extension.load(
        name=module_name(name),
        sources=[str(s) for s in sources],
        extra_include_paths=[str(CSRC_DIR)],
        extra_cflags=list(EXTRA_CFLAGS),
        extra_cuda_cflags=list(EXTRA_CUDA_CFLAGS),
        build_directory=str(build_directory),
        verbose=verbose,
    )


def _import_path(mod_name: str, path: str) -> ModuleType:
    """Import a module (extension ``.so`` or ``.py``) from a file path."""
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {mod_name} from {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _load_cached(bdir: Path) -> ModuleType | None:
    """The module of a finished earlier build in ``bdir``, or None (no marker, or it fails to load)."""
    try:
        info = json.loads((bdir / MARKER_NAME).read_text())
        return _import_path(info["module"], info["path"]) if Path(info["path"]).is_file() else None
    except (OSError, ValueError, KeyError, ImportError):
        return None


def _write_marker(name: str, bdir: Path, module: ModuleType) -> None:
    path = getattr(module, "__file__", None)
    if not path:
        return
    info = {
        "op": name,
        "module": module.__name__,
        "path": str(Path(path).resolve()),
        "key": bdir.name,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    tmp = bdir / f".{MARKER_NAME}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(info, indent=2))
    os.replace(tmp, bdir / MARKER_NAME)


def _remove_stale_torch_baton(bdir: Path) -> None:
    """Remove torch's ``lock`` baton from ``bdir``. Call only while holding our build lock: then no build of
    ours runs in ``bdir``, so a baton there was left by a killed build and would make torch wait forever."""
    baton = bdir / TORCH_BATON_NAME
    if baton.exists():
        age = time.time() - baton.stat().st_mtime
        print(
            f"stylegan_ops: removing stale torch build lock {baton} (left by an interrupted build "
            f"{age:.0f}s ago)",
            file=sys.stderr,
        )
        baton.unlink(missing_ok=True)


def _acquire(lock_file: Path, timeout: float, name: str) -> Any:
    """Acquire the inter-process build lock (an OS file lock, released by the OS if the holder dies)."""
    import filelock  # only needed when a kernel is built

    try:
        lock = filelock.FileLock(str(lock_file), timeout=timeout)
        try:
            lock.acquire()
        except NotImplementedError:  # no flock on this filesystem: an existence lock, stale after the timeout
            lock = filelock.SoftFileLock(str(lock_file), timeout=timeout)
            if lock_file.exists() and time.time() - lock_file.stat().st_mtime > timeout:
                lock_file.unlink(missing_ok=True)
            lock.acquire()
    except filelock.Timeout as err:
        raise PluginBuildError(
            f"timed out after {timeout:g}s waiting for the build lock {lock_file} of the '{name}' CUDA "
            "kernel. Another process may still be compiling it (wait for it to finish), or a build hung. If "
            "no other rootedgan/stylegan_ops process is running, delete the lock file "
            f"(rm '{lock_file}') and retry; set {LOCK_TIMEOUT_ENV_VAR} to wait longer, or "
            "STYLEGAN_OPS_IMPL=ref to skip the kernels."
        ) from err
    return lock


def _load_or_build(name: str, status: OpStatus, *, verbose: bool = False) -> ModuleType:
    """Load ``name`` from the cache or build it; fills ``status``. Raises PluginBuildError."""
    sources = _check_name(name)
    status.reason = cuda_unavailable_reason()
    if status.reason is not None:
        raise PluginBuildError(f"the '{name}' CUDA kernel is unavailable: {status.reason}")
    bdir = build_dir(name)
    lock_file = bdir.with_name(f"{bdir.name}.lock")
    status.build_dir, status.lock_file = str(bdir), str(lock_file)
    start = time.perf_counter()
    module = _load_cached(bdir)
    status.cached = module is not None
    if module is None:
        try:
            bdir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            status.reason = f"cannot create the build directory {bdir}: {err}"
            raise PluginBuildError(f"{status.reason}; set {CACHE_ENV_VAR} to a writable directory") from err
        lock = _acquire(lock_file, lock_timeout(), name)
        try:
            module = _load_cached(bdir)  # another process may have built it while we waited
            status.cached = module is not None
            if module is None:
                _remove_stale_torch_baton(bdir)
                print(
                    f"stylegan_ops: compiling the '{name}' CUDA kernel into {bdir} "
                    "(first use with this torch/GPU only; about a minute)...",
                    file=sys.stderr,
                    flush=True,
                )
                module = _compile(name, [CSRC_DIR / f for f in sources.compiled], bdir, verbose=verbose)
                _write_marker(name, bdir, module)
                seconds = time.perf_counter() - start
                print(f"stylegan_ops: compiled the '{name}' CUDA kernel in {seconds:.0f}s", file=sys.stderr)
        finally:
            lock.release()
    status.seconds = time.perf_counter() - start
    return module


def _short_reason(err: BaseException) -> str:
    """One line for a warning: the first compiler error line, else the exception's first line."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    return next((line for line in lines[1:] if "error" in line.lower()), lines[0])[:300]


def _attempt(name: str, *, verbose: bool = False) -> tuple[ModuleType | None, OpStatus]:
    """One load/build attempt; records the outcome in the module state. Never warns."""
    status = OpStatus(name=name, attempted=True)
    try:
        module: ModuleType | None = _load_or_build(name, status, verbose=verbose)
        status.ok = True
        _PLUGINS[name] = module
    except Exception as err:  # any failure means "fall back", with the text kept
        module = None
        status.error = str(err) if isinstance(err, PluginBuildError) else f"{type(err).__name__}: {err}"
        status.reason = status.reason or _short_reason(err)
    _STATUS[name] = status
    return module, status


def _error_for(status: OpStatus) -> PluginBuildError:
    msg = f"stylegan_ops: the '{status.name}' CUDA kernel could not be loaded: {status.reason}"
    if status.build_dir:
        msg += f"\nbuild directory: {status.build_dir}"
    if status.error and status.error.strip() != (status.reason or "").strip():
        tail = "\n".join(status.error.rstrip().splitlines()[-40:])
        msg += f"\n--- error output (last lines) ---\n{tail}\n---"
    msg += (
        "\nSet STYLEGAN_OPS_IMPL=auto to fall back to the (slower) reference implementation, or run "
        "`rootedgan doctor` to diagnose the toolchain."
    )
    return PluginBuildError(msg)


def get_plugin(name: str, *, required: bool) -> ModuleType | None:
    """The compiled kernel module of ``name``, built on first use; None when it cannot be had (CPU-only torch,
    no GPU, a failed build: one :class:`PluginBuildWarning` per op and process), or with ``required=True`` a
    :class:`PluginBuildError` with the reason and the compiler output's tail."""
    module = _PLUGINS.get(name)
    if module is not None:
        return module
    _check_name(name)
    with _STATE_LOCK:
        module = _PLUGINS.get(name)
        status = _STATUS.get(name)
        if module is None and (status is None or not status.attempted):
            module, status = _attempt(name)
        if module is not None:
            return module
        if required:
            raise _error_for(status)
        if name not in _WARNED:
            _WARNED.add(name)
            warnings.warn(
                f"stylegan_ops: the '{name}' CUDA kernel is unavailable ({status.reason}); falling back to "
                "the slower pure-PyTorch reference implementation. Run `rootedgan doctor` for details, or "
                "set STYLEGAN_OPS_IMPL=ref to skip the build attempt.",
                PluginBuildWarning,
                stacklevel=3,
            )
        return None


def try_build(name: str, *, verbose: bool = False) -> dict[str, Any]:
    """Load or build ``name`` now, also after an earlier failure (for the doctor): its status as a dict.
    Never warns or raises for a failed build."""
    _check_name(name)
    with _STATE_LOCK:
        if name in _PLUGINS:
            return asdict(_STATUS.get(name) or OpStatus(name=name, attempted=True, ok=True))
        return asdict(_attempt(name, verbose=verbose)[1])


def build_status() -> dict[str, Any]:
    """The kernels' state in this process, for ``rootedgan doctor``: the cache root, the lock timeout, why
    CUDA is unavailable (or None) and each op's :class:`OpStatus`."""
    reason = cuda_unavailable_reason()
    ops: dict[str, Any] = {}
    for name in OPS:
        status = _STATUS.get(name)
        if status is None:
            status = OpStatus(name=name, reason=reason)
            if reason is None:
                try:
                    status.build_dir = str(build_dir(name))
                except Exception:  # informational only
                    pass
        ops[name] = asdict(status)
    try:
        timeout: float | str = lock_timeout()
    except ValueError as err:
        timeout = str(err)
    return dict(cache_root=str(cache_root()), lock_timeout_s=timeout, cuda_unavailable_reason=reason, ops=ops)


def reset() -> None:
    """Forget this process's loaded plugins, failures and warnings (tests; a retry after fixing things)."""
    with _STATE_LOCK:
        _PLUGINS.clear()
        _STATUS.clear()
        _WARNED.clear()
