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
from pathlib import Path
from typing import Any

HELP = "Check torch/CUDA/compiler versions and whether the CUDA kernels build and run; say what to fix."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument(
        "--no-build",
        action="store_true",
        help="do not compile the kernels (only report cached builds and the toolchain)",
    )
    parser.add_argument("--verbose", action="store_true", help="show the compiler's full output on failure")


# --------------------------------------------------------------------------------------------------
# Probes (each returns plain data; none raises)


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
    candidates = []
    if cuda_home:
        candidates.append(str(Path(cuda_home, "bin", "nvcc")))
    which = shutil.which("nvcc")
    if which:
        candidates.append(which)
    for path in candidates:
        if not Path(path).exists():
            continue
        lines = _run_version([path, "--version"])
        if lines:
            match = re.search(r"release (\d+)\.(\d+)", " ".join(lines))
            version = f"{match.group(1)}.{match.group(2)}" if match else None
            return {"path": path, "version": version, "text": lines[-1]}
    return {"path": None, "version": None, "text": None}


def _tool_version(cmd: str, args: list[str]) -> dict[str, Any]:
    path = shutil.which(cmd)
    if path is None:
        return {"path": None, "version": None}
    lines = _run_version([path, *args])
    return {"path": path, "version": lines[0] if lines else None}


def _gpu_info(torch: Any) -> dict[str, Any]:
    info: dict[str, Any] = {"available": False, "count": 0, "devices": []}
    try:
        if torch.version.cuda is None or not torch.cuda.is_available():
            return info
        info["available"] = True
        info["count"] = torch.cuda.device_count()
        for i in range(info["count"]):
            major, minor = torch.cuda.get_device_capability(i)
            info["devices"].append(
                {"index": i, "name": torch.cuda.get_device_name(i), "capability": f"{major}.{minor}",
                 "arch": f"sm_{major}{minor}"}
            )  # fmt: skip
        info["torch_arch_list"] = list(torch.cuda.get_arch_list())
    except Exception as err:  # a broken driver shows up here
        info["error"] = f"{type(err).__name__}: {err}"
        info["available"] = False
    return info


def _cache_writable(path: Path) -> bool:
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return os.access(probe, os.W_OK)


def _op_smoke_test(name: str) -> dict[str, Any]:
    """Tiny forward (and backward) with the kernel vs the reference on the GPU."""
    import torch

    from stylegan_ops import bias_act, bias_act_ref, setup_filter, upfirdn2d, upfirdn2d_ref

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


def collect(*, build_kernels: bool = True) -> dict[str, Any]:
    """Everything the doctor reports, as plain data (``problems``: a list of {level, what, fix})."""
    import torch

    from stylegan_ops import _impl, build

    report: dict[str, Any] = {}
    problems: list[dict[str, str]] = []

    def problem(level: str, what: str, fix: str) -> None:
        problems.append({"level": level, "what": what, "fix": fix})

    report["python"] = {"version": platform.python_version(), "executable": sys.executable}
    report["platform"] = platform.platform()
    torch_cuda = torch.version.cuda
    cudnn = None
    try:
        cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    except Exception:
        cudnn = None
    report["torch"] = {
        "version": torch.__version__,
        "cuda": torch_cuda,
        "hip": getattr(torch.version, "hip", None),
        "cudnn": cudnn,
        "path": str(Path(torch.__file__).parent),
    }
    gpu = _gpu_info(torch)
    report["gpu"] = gpu
    cuda_home = build.find_cuda_home()
    report["cuda_home"] = cuda_home
    nvcc = _nvcc_info(cuda_home)
    report["nvcc"] = nvcc
    report["ninja"] = _tool_version("ninja", ["--version"])
    cxx = os.environ.get("CXX", "c++")
    report["cxx"] = _tool_version(cxx, ["--version"])
    report["cxx"]["command"] = cxx

    impl_raw = os.environ.get(_impl.IMPL_ENV_VAR)
    try:
        impl = _impl.requested_impl()
        impl_error = None
    except ValueError as err:
        impl, impl_error = None, str(err)
    report["impl"] = {"env": impl_raw, "effective": impl, "error": impl_error}

    cache = build.cache_root()
    report["cache"] = {
        "root": str(cache),
        "writable": _cache_writable(cache),
        "env": {
            build.CACHE_ENV_VAR: os.environ.get(build.CACHE_ENV_VAR),
            build.ROOT_CACHE_ENV_VAR: os.environ.get(build.ROOT_CACHE_ENV_VAR),
        },
    }
    try:
        report["lock_timeout_s"] = build.lock_timeout()
    except ValueError as err:
        report["lock_timeout_s"] = None
        problem("error", str(err), f"set {build.LOCK_TIMEOUT_ENV_VAR} to a number of seconds, or unset it")

    # Toolchain problems.
    cpu_build = torch_cuda is None and not report["torch"]["hip"]
    if impl_error:
        problem("error", impl_error, f"set {_impl.IMPL_ENV_VAR} to auto, cuda or ref (or unset it)")
    if report["torch"]["hip"]:
        problem("warning", f"torch is a ROCm build ({report['torch']['hip']}): the CUDA kernels do not apply",
                "ops run on the reference path (correct, slower)")  # fmt: skip
    elif cpu_build:
        problem(
            "info",
            "torch is a CPU build: ops run on the reference path",
            "for GPU training install a CUDA build of torch (https://pytorch.org/get-started/locally/)",
        )
    elif not gpu["available"]:
        detail = f" ({gpu['error']})" if gpu.get("error") else ""
        problem(
            "warning",
            f"torch {torch.__version__} has CUDA {torch_cuda} but no GPU is visible{detail}",
            "check the driver with `nvidia-smi` and CUDA_VISIBLE_DEVICES; ops run on the reference path",
        )
    if not cpu_build and not report["torch"]["hip"]:
        if nvcc["path"] is None:
            problem(
                "error" if gpu["available"] else "warning",
                "nvcc not found: the kernels cannot be compiled",
                f"install the CUDA toolkit matching torch.version.cuda {torch_cuda} or set CUDA_HOME to "
                "its root",
            )
        elif nvcc["version"] and torch_cuda and nvcc["version"].split(".")[0] != torch_cuda.split(".")[0]:
            problem(
                "warning",
                f"nvcc {nvcc['version']} ({nvcc['path']}) does not match torch's CUDA {torch_cuda}",
                f"install CUDA toolkit {torch_cuda.split('.')[0]}.x and point CUDA_HOME to it (or install "
                f"the torch build for CUDA {nvcc['version']}); mismatched majors often fail to build or load",
            )
        if report["ninja"]["path"] is None:
            level = "error" if gpu["available"] else "warning"
            problem(
                level,
                "ninja not found: the kernels cannot be compiled",
                "`pip install ninja` in this environment",
            )
        if report["cxx"]["path"] is None:
            problem("error" if gpu["available"] else "warning", f"C++ compiler {cxx!r} not found",
                    "install g++ (e.g. `apt install build-essential`) or set CXX")  # fmt: skip
    for dev in gpu["devices"]:
        arch_list = gpu.get("torch_arch_list") or []
        if (
            arch_list
            and dev["arch"] not in arch_list
            and not any(a.startswith("compute_") for a in arch_list)
        ):
            problem(
                "warning",
                f"GPU {dev['index']} ({dev['name']}, {dev['arch']}) is not in this torch build's arch list "
                f"({', '.join(arch_list)})",
                "install a torch build that supports this GPU; kernels are still compiled for it",
            )
    if not report["cache"]["writable"]:
        problem("error" if gpu["available"] else "warning", f"kernel cache {cache} is not writable",
                f"set {build.CACHE_ENV_VAR} to a writable directory")  # fmt: skip
    if impl == "ref" and gpu["available"]:
        problem("info", f"{_impl.IMPL_ENV_VAR}=ref: the CUDA kernels are disabled",
                f"unset {_impl.IMPL_ENV_VAR} (or set it to auto) to use them")  # fmt: skip

    # The kernels.
    ops: dict[str, Any] = {}
    reason = build.cuda_unavailable_reason()
    for name in build.OPS:
        entry: dict[str, Any] = {"build": None, "smoke_test": None}
        if reason is not None:
            entry["state"] = "skipped"
            entry["detail"] = f"{reason}; the reference path is used"
        elif not build_kernels:
            status = build.build_status()["ops"][name]
            entry["state"] = "not built (--no-build)"
            entry["detail"] = f"build dir {status['build_dir']}"
            entry["build"] = status
        else:
            status = build.try_build(name)
            entry["build"] = status
            if not status["ok"]:
                entry["state"] = "build failed"
                entry["detail"] = status["reason"]
                problem(
                    "error",
                    f"the '{name}' kernel failed to build: {status['reason']}",
                    "fix the toolchain problems above (run with --verbose for the compiler output); until "
                    f"then the slower reference path is used. Build dir: {status['build_dir']}",
                )
            else:
                smoke = _op_smoke_test(name)
                entry["smoke_test"] = smoke
                how = "cached" if status["cached"] else f"built in {status['seconds']:.1f}s"
                if smoke["ok"]:
                    entry["state"] = "ok"
                    entry["detail"] = f"{how}; max |cuda - ref| = {smoke['max_abs_error']:.2e}"
                else:
                    entry["state"] = "wrong result" if smoke["ran"] else "run failed"
                    entry["detail"] = smoke["error"] or f"max |cuda - ref| = {smoke['max_abs_error']:.2e}"
                    problem(
                        "error",
                        f"the '{name}' kernel {entry['state']}: {entry['detail']}",
                        f"set {_impl.IMPL_ENV_VAR}=ref to use the reference path, and please report this "
                        "with `rootedgan doctor --json`",
                    )
        ops[name] = entry
    report["ops"] = ops
    report["problems"] = problems
    report["ok"] = not any(p["level"] == "error" for p in problems)
    return report


# --------------------------------------------------------------------------------------------------
# Output


def _format_text(report: dict[str, Any], *, verbose: bool) -> str:
    t = report["torch"]
    gpu = report["gpu"]
    lines = ["rootedgan doctor", ""]

    def row(key: str, value: Any) -> None:
        lines.append(f"  {key:<20} {value}")

    row("python", f"{report['python']['version']} ({report['python']['executable']})")
    row("platform", report["platform"])
    cuda = t["cuda"] or ("none (CPU-only build)" if not t["hip"] else f"none (ROCm {t['hip']})")
    row("torch", f"{t['version']} (CUDA {cuda})")
    row("cuDNN", t["cudnn"] if t["cudnn"] is not None else "n/a")
    if gpu["available"]:
        for dev in gpu["devices"]:
            row(
                f"GPU {dev['index']}",
                f"{dev['name']} (compute capability {dev['capability']}, {dev['arch']})",
            )
    else:
        row("GPU", "no GPU" + (f" ({gpu['error']})" if gpu.get("error") else ""))
    nvcc = report["nvcc"]
    row("nvcc", f"{nvcc['version']} ({nvcc['path']})" if nvcc["path"] else "not found")
    row("CUDA_HOME", report["cuda_home"] or "not found")
    ninja = report["ninja"]
    row("ninja", f"{ninja['version']} ({ninja['path']})" if ninja["path"] else "not found")
    cxx = report["cxx"]
    row(
        "C++ compiler",
        f"{cxx['version']} ({cxx['path']})" if cxx["path"] else f"{cxx['command']!r} not found",
    )
    impl = report["impl"]
    env = impl["env"] if impl["env"] is not None else "unset"
    row("STYLEGAN_OPS_IMPL", f"{env} (effective: {impl['effective'] or 'invalid'})")
    cache = report["cache"]
    row("kernel cache", f"{cache['root']}" + ("" if cache["writable"] else " (NOT writable)"))
    lines += ["", "kernels:"]
    for name, entry in report["ops"].items():
        lines.append(f"  {name:<20} {entry['state']}: {entry['detail']}")
        build_info = entry.get("build") or {}
        if verbose and build_info.get("error"):
            lines += ["    " + line for line in build_info["error"].rstrip().splitlines()]
    lines += ["", "problems:" if report["problems"] else "no problems found"]
    for p in report["problems"]:
        lines.append(f"  [{p['level']}] {p['what']}")
        lines.append(f"          -> {p['fix']}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    report = collect(build_kernels=not getattr(args, "no_build", False))
    if getattr(args, "json", False):
        print(json.dumps(report, indent=2, default=str))
    else:
        print(_format_text(report, verbose=getattr(args, "verbose", False)))
    return 0 if report["ok"] else 1
