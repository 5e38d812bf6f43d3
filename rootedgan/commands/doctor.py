"""``rootedgan doctor``: check the toolchain behind the CUDA kernels and say what to fix.

Prints the versions of Python, torch, CUDA, cuDNN, nvcc, ninja and the C++ compiler, the GPU, the
``STYLEGAN_OPS_IMPL`` setting and the kernel cache, then, per op (``bias_act``, ``upfirdn2d``), whether
its kernel builds and agrees with the reference on a tiny input (GPU only). Every problem found comes
with a line saying what to do. ``--json`` prints the same as one JSON object.

Exit status: 0 when the kernels work or cannot be used anyway (CPU-only torch, no GPU: the reference
path is used); 1 when a GPU is there but a kernel fails to build or disagrees with the reference.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from stylegan_ops import _impl, bias_act, bias_act_ref, build, setup_filter, upfirdn2d, upfirdn2d_ref

HELP = "Check torch/CUDA/compiler versions and whether the CUDA kernels build and run; say what to fix."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument(
        "--no-build",
        action="store_true",
        help="do not compile the kernels (only report cached builds and the toolchain)",
    )
    parser.add_argument("--verbose", action="store_true", help="show the compiler's full output on failure")


def _run_version(cmd: list[str]) -> list[str] | None:
    """Non-empty lines of ``cmd``'s output (``--version`` style), or None when it cannot run."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    text = (proc.stdout or "") + (proc.stderr or "")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines if proc.returncode == 0 and lines else None


def _nvcc_info(cuda_home: str | None) -> dict[str, Any]:
    candidates = [str(Path(cuda_home, "bin", "nvcc"))] if cuda_home else []
    candidates += [path for path in [shutil.which("nvcc")] if path]
    for path in candidates:
        lines = _run_version([path, "--version"]) if Path(path).exists() else None
        if lines:
            match = re.search(r"release (\d+)\.(\d+)", " ".join(lines))
            version = f"{match.group(1)}.{match.group(2)}" if match else None
            return {"path": path, "version": version, "text": lines[-1]}
    return {"path": None, "version": None, "text": None}


def _tool_version(cmd: str, args: list[str]) -> dict[str, Any]:
    path = shutil.which(cmd)
    lines = _run_version([path, *args]) if path is not None else None
    return {"path": path, "version": lines[0] if lines else None}


def _gpu_info(torch: Any) -> dict[str, Any]:
    info: dict[str, Any] = {"available": False, "count": 0, "devices": []}
    try:
        if torch.version.cuda is None or not torch.cuda.is_available():
            return info
        info.update(available=True, count=torch.cuda.device_count())
        for i in range(info["count"]):
            major, minor = torch.cuda.get_device_capability(i)
            info["devices"].append(
                {
                    "index": i,
                    "name": torch.cuda.get_device_name(i),
                    "capability": f"{major}.{minor}",
                    "arch": f"sm_{major}{minor}",
                }
            )
        info["torch_arch_list"] = list(torch.cuda.get_arch_list())
    except Exception as err:  # a broken driver shows up here
        info.update(error=f"{type(err).__name__}: {err}", available=False)
    return info


def _cache_writable(path: Path) -> bool:
    while not path.exists() and path != path.parent:
        path = path.parent
    return os.access(path, os.W_OK)


def _op_smoke_test(name: str) -> dict[str, Any]:
    """Tiny forward (and backward) with the kernel vs the reference on the GPU."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    try:
        if name == "bias_act":
            x = torch.randn(2, 8, 5, 5, device="cuda", generator=gen, requires_grad=True)
            b = torch.randn(8, device="cuda", generator=gen)
            got = bias_act(x, b, act="lrelu", clamp=1.5, impl="cuda")
            want = bias_act_ref(x, b, act="lrelu", clamp=1.5)
        else:
            x = torch.randn(2, 3, 8, 7, device="cuda", generator=gen, requires_grad=True)
            f = setup_filter([1, 3, 3, 1], device="cuda")
            got = upfirdn2d(x, f, up=2, padding=(2, 1, 2, 1), impl="cuda")
            want = upfirdn2d_ref(x, f, up=2, padding=(2, 1, 2, 1))
        (g_got,) = torch.autograd.grad(got.square().sum(), x)
        (g_want,) = torch.autograd.grad(want.square().sum(), x)
        torch.cuda.synchronize()
        err = max((got - want).abs().max().item(), (g_got - g_want).abs().max().item())
        return {"ran": True, "max_abs_error": err, "ok": err <= 1e-4, "error": None}
    except Exception as err:
        return {"ran": False, "max_abs_error": None, "ok": False, "error": f"{type(err).__name__}: {err}"}


Problem = tuple[str, str, str]  # level (error, warning, info), what is wrong, what to do


def _machine() -> dict[str, Any]:
    """Python, the platform, torch's build (CUDA, ROCm, cuDNN), the GPU, CUDA_HOME, nvcc, ninja and C++."""
    try:
        cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    except Exception:
        cudnn = None
    cuda_home, cxx = build.find_cuda_home(), os.environ.get("CXX", "c++")
    return {
        "python": {"version": platform.python_version(), "executable": sys.executable},
        "platform": platform.platform(),
        "torch": {
            "version": torch.__version__,
            "cuda": torch.version.cuda,
            "hip": getattr(torch.version, "hip", None),
            "cudnn": cudnn,
            "path": str(Path(torch.__file__).parent),
        },
        "gpu": _gpu_info(torch),
        "cuda_home": cuda_home,
        "nvcc": _nvcc_info(cuda_home),
        "ninja": _tool_version("ninja", ["--version"]),
        "cxx": {**_tool_version(cxx, ["--version"]), "command": cxx},
    }


def _ops_settings() -> tuple[dict[str, Any], list[Problem]]:
    """``STYLEGAN_OPS_IMPL``, the kernel cache and the build lock's timeout; an invalid setting's problem."""
    problems: list[Problem] = []
    try:
        impl, impl_error = _impl.requested_impl(), None
    except ValueError as err:
        impl, impl_error = None, str(err)
    try:
        lock_timeout = build.lock_timeout()
    except ValueError as err:
        lock_timeout = None
        fix = f"set {build.LOCK_TIMEOUT_ENV_VAR} to a number of seconds, or unset it"
        problems.append(("error", str(err), fix))
    if impl_error:
        problems.append(("error", impl_error, f"set {_impl.IMPL_ENV_VAR} to auto, cuda or ref (or unset it)"))
    cache = build.cache_root()
    env = {var: os.environ.get(var) for var in (build.CACHE_ENV_VAR, build.ROOT_CACHE_ENV_VAR)}
    return {
        "impl": {"env": os.environ.get(_impl.IMPL_ENV_VAR), "effective": impl, "error": impl_error},
        "cache": {"root": str(cache), "writable": _cache_writable(cache), "env": env},
        "lock_timeout_s": lock_timeout,
    }, problems


def _torch_problems(report: dict[str, Any]) -> Iterator[Problem]:
    """A torch build or a machine on which the kernels do not apply."""
    t, gpu = report["torch"], report["gpu"]
    if t["hip"]:
        what = f"torch is a ROCm build ({t['hip']}): the CUDA kernels do not apply"
        yield "warning", what, "ops run on the reference path (correct, slower)"
    elif t["cuda"] is None:
        fix = "for GPU training install a CUDA build of torch (https://pytorch.org/get-started/locally/)"
        yield "info", "torch is a CPU build: ops run on the reference path", fix
    elif not gpu["available"]:
        detail = f" ({gpu['error']})" if gpu.get("error") else ""
        what = f"torch {t['version']} has CUDA {t['cuda']} but no GPU is visible{detail}"
        fix = "check the driver with `nvidia-smi` and CUDA_VISIBLE_DEVICES; ops run on the reference path"
        yield "warning", what, fix


def _compiler_problems(report: dict[str, Any]) -> Iterator[Problem]:
    """nvcc (present, matching torch's CUDA major), ninja and the C++ compiler, for a CUDA build of torch."""
    torch_cuda, nvcc = report["torch"]["cuda"], report["nvcc"]
    if torch_cuda is None or report["torch"]["hip"]:
        return
    level = "error" if report["gpu"]["available"] else "warning"
    major = torch_cuda.split(".")[0]
    if nvcc["path"] is None:
        fix = (
            f"install the CUDA toolkit matching torch.version.cuda {torch_cuda} or set CUDA_HOME to its root"
        )
        yield level, "nvcc not found: the kernels cannot be compiled", fix
    elif nvcc["version"] and nvcc["version"].split(".")[0] != major:
        what = f"nvcc {nvcc['version']} ({nvcc['path']}) does not match torch's CUDA {torch_cuda}"
        fix = (
            f"install CUDA toolkit {major}.x and point CUDA_HOME to it (or install the torch build for CUDA "
            f"{nvcc['version']}); mismatched majors often fail to build or load"
        )
        yield "warning", what, fix
    if report["ninja"]["path"] is None:
        yield (
            level,
            "ninja not found: the kernels cannot be compiled",
            "`pip install ninja` in this environment",
        )
    if report["cxx"]["path"] is None:
        what = f"C++ compiler {report['cxx']['command']!r} not found"
        yield level, what, "install g++ (e.g. `apt install build-essential`) or set CXX"


def _setup_problems(report: dict[str, Any]) -> Iterator[Problem]:
    """GPUs missing from torch's arch list, an unwritable kernel cache, kernels switched off."""
    gpu = report["gpu"]
    arch_list = gpu.get("torch_arch_list") or []
    portable = any(a.startswith("compute_") for a in arch_list)  # PTX: compiled for any newer GPU
    for dev in gpu["devices"]:
        if arch_list and dev["arch"] not in arch_list and not portable:
            what = f"GPU {dev['index']} ({dev['name']}, {dev['arch']}) is not in this torch build's arch list"
            fix = "install a torch build that supports this GPU; kernels are still compiled for it"
            yield "warning", f"{what} ({', '.join(arch_list)})", fix
    if not report["cache"]["writable"]:
        level = "error" if gpu["available"] else "warning"
        what = f"kernel cache {report['cache']['root']} is not writable"
        yield level, what, f"set {build.CACHE_ENV_VAR} to a writable directory"
    if report["impl"]["effective"] == "ref" and gpu["available"]:
        what = f"{_impl.IMPL_ENV_VAR}=ref: the CUDA kernels are disabled"
        yield "info", what, f"unset {_impl.IMPL_ENV_VAR} (or set it to auto) to use them"


def _kernel(name: str, build_kernels: bool, reason: str | None) -> tuple[dict[str, Any], Problem | None]:
    """One op's kernel: skipped (no CUDA), its cached build (``--no-build``), or built and smoke-tested."""
    entry: dict[str, Any] = {"build": None, "smoke_test": None}
    if reason is not None:
        return {**entry, "state": "skipped", "detail": f"{reason}; the reference path is used"}, None
    if not build_kernels:
        status = build.build_status()["ops"][name]
        return {
            **entry,
            "build": status,
            "state": "not built (--no-build)",
            "detail": f"build dir {status['build_dir']}",
        }, None
    status = entry["build"] = build.try_build(name)
    if not status["ok"]:
        fix = (
            "fix the toolchain problems above (run with --verbose for the compiler output); until then the "
            f"slower reference path is used. Build dir: {status['build_dir']}"
        )
        entry.update(state="build failed", detail=status["reason"])
        return entry, ("error", f"the '{name}' kernel failed to build: {status['reason']}", fix)
    smoke = entry["smoke_test"] = _op_smoke_test(name)
    how = "cached" if status["cached"] else f"built in {status['seconds']:.1f}s"
    if smoke["ok"]:
        entry.update(state="ok", detail=f"{how}; max |cuda - ref| = {smoke['max_abs_error']:.2e}")
        return entry, None
    entry["state"] = "wrong result" if smoke["ran"] else "run failed"
    entry["detail"] = smoke["error"] or f"max |cuda - ref| = {smoke['max_abs_error']:.2e}"
    fix = f"set {_impl.IMPL_ENV_VAR}=ref to use the reference path, and please report this with "
    fix += "`rootedgan doctor --json`"
    return entry, ("error", f"the '{name}' kernel {entry['state']}: {entry['detail']}", fix)


def collect(*, build_kernels: bool = True) -> dict[str, Any]:
    """Everything the doctor reports, as plain data (``problems``: a list of {level, what, fix})."""
    settings, problems = _ops_settings()
    report = {**_machine(), **settings}
    problems += [*_torch_problems(report), *_compiler_problems(report), *_setup_problems(report)]
    reason = build.cuda_unavailable_reason()
    kernels = {name: _kernel(name, build_kernels, reason) for name in build.OPS}
    report["ops"] = {name: entry for name, (entry, _) in kernels.items()}
    problems += [problem for _, problem in kernels.values() if problem is not None]
    report["problems"] = [dict(zip(("level", "what", "fix"), p, strict=True)) for p in problems]
    report["ok"] = not any(p[0] == "error" for p in problems)
    return report


def _found(tool: dict[str, Any], missing: str = "not found") -> str:
    return f"{tool['version']} ({tool['path']})" if tool["path"] else missing


def _format_text(report: dict[str, Any], *, verbose: bool) -> str:
    t, gpu, impl, cache = report["torch"], report["gpu"], report["impl"], report["cache"]
    cuda = t["cuda"] or ("none (CPU-only build)" if not t["hip"] else f"none (ROCm {t['hip']})")
    gpus = [
        (f"GPU {dev['index']}", f"{dev['name']} (compute capability {dev['capability']}, {dev['arch']})")
        for dev in gpu["devices"]
    ]
    no_gpu = ("GPU", "no GPU" + (f" ({gpu['error']})" if gpu.get("error") else ""))
    env = impl["env"] if impl["env"] is not None else "unset"
    rows = [
        ("python", f"{report['python']['version']} ({report['python']['executable']})"),
        ("platform", report["platform"]),
        ("torch", f"{t['version']} (CUDA {cuda})"),
        ("cuDNN", t["cudnn"] if t["cudnn"] is not None else "n/a"),
        *(gpus if gpu["available"] else [no_gpu]),
        ("nvcc", _found(report["nvcc"])),
        ("CUDA_HOME", report["cuda_home"] or "not found"),
        ("ninja", _found(report["ninja"])),
        ("C++ compiler", _found(report["cxx"], f"{report['cxx']['command']!r} not found")),
        ("STYLEGAN_OPS_IMPL", f"{env} (effective: {impl['effective'] or 'invalid'})"),
        ("kernel cache", f"{cache['root']}" + ("" if cache["writable"] else " (NOT writable)")),
    ]
    lines = ["rootedgan doctor", "", *(f"  {key:<20} {value}" for key, value in rows), "", "kernels:"]
    for name, entry in report["ops"].items():
        lines.append(f"  {name:<20} {entry['state']}: {entry['detail']}")
        build_info = entry.get("build") or {}
        if verbose and build_info.get("error"):
            lines += ["    " + line for line in build_info["error"].rstrip().splitlines()]
    lines += ["", "problems:" if report["problems"] else "no problems found"]
    for p in report["problems"]:
        lines += [f"  [{p['level']}] {p['what']}", f"          -> {p['fix']}"]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    report = collect(build_kernels=not args.no_build)
    print(
        json.dumps(report, indent=2, default=str) if args.json else _format_text(report, verbose=args.verbose)
    )
    return 0 if report["ok"] else 1
