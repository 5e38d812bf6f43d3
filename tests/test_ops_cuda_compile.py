"""Every CUDA source compiles, without a GPU: ``.cu`` kernels with nvcc (object only) and the ``.cpp``
bindings with the host compiler (syntax only) against torch's headers.

The ``.cu`` files include no torch headers (the bindings pass raw pointers), so plain nvcc with the
CUDA runtime headers suffices. A CPU-only torch wheel ships ``c10/cuda`` headers but not the
generated ``c10/cuda/impl/cuda_cmake_macros.h``; the bindings are then checked with
``-DC10_USING_CUSTOM_GENERATED_MACROS`` (the file only sets build-time macros of libc10_cuda).

Skipped only when nvcc (resp. a C++ compiler) is absent; a source that fails to compile fails here.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest
from torch.utils.cpp_extension import include_paths

from stylegan_ops import build

pytestmark = pytest.mark.slow

CSRC = build.CSRC_DIR
CU_FILES = sorted(p.name for p in CSRC.glob("*.cu"))
BINDING_FILES = sorted({f for op in build.OPS.values() for f in op.compiled if f.endswith(".cpp")})
# Flags torch.utils.cpp_extension passes to nvcc for every extension.
TORCH_NVCC_DEFINES = [
    "-D__CUDA_NO_HALF_OPERATORS__",
    "-D__CUDA_NO_HALF_CONVERSIONS__",
    "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
    "-D__CUDA_NO_HALF2_OPERATORS__",
]


def _nvcc() -> str | None:
    home = build.find_cuda_home()
    if home and Path(home, "bin", "nvcc").exists():
        return str(Path(home, "bin", "nvcc"))
    return shutil.which("nvcc")


def _archs() -> list[str]:
    """``sm_XY`` targets: from TORCH_CUDA_ARCH_LIST (e.g. "8.0;9.0+PTX") or sm_80 and sm_90."""
    raw = os.environ.get("TORCH_CUDA_ARCH_LIST", "").replace(",", ";").replace(" ", ";")
    archs = []
    for item in filter(None, raw.split(";")):
        digits = item.split("+")[0].replace(".", "")
        if digits.isdigit():
            archs.append(f"sm_{digits}")
    return archs or ["sm_80", "sm_90"]


def _run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.fail(
            f"{what} failed to compile (exit {proc.returncode}):\n$ {shlex.join(cmd)}\n"
            f"{proc.stdout}\n{proc.stderr}",
            pytrace=False,
        )


def test_sources_are_listed() -> None:
    """Every source the build compiles exists, and every .cu in csrc belongs to an op."""
    compiled = {f for op in build.OPS.values() for f in op.all_files()}
    for name in compiled:
        assert (CSRC / name).is_file(), name
    assert set(CU_FILES) <= compiled
    assert CU_FILES and BINDING_FILES


@pytest.mark.parametrize("cu_file", CU_FILES)
def test_cu_compiles_with_nvcc(cu_file: str, tmp_path: Path) -> None:
    nvcc = _nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found (install the CUDA toolkit or set CUDA_HOME)")
    gencode = []
    for arch in _archs():
        gencode += ["-gencode", f"arch=compute_{arch[3:]},code={arch}"]
    cmd = [
        nvcc,
        "-c",
        str(CSRC / cu_file),
        "-o",
        str(tmp_path / (cu_file + ".o")),
        "-std=c++20",
        "-O3",
        "--expt-relaxed-constexpr",
        "-Xcompiler",
        "-fPIC,-Wall",
        *TORCH_NVCC_DEFINES,
        *gencode,
        f"-I{CSRC}",  # deliberately no torch include paths: the kernels need only CUDA headers
    ]
    _run(cmd, cu_file)
    assert (tmp_path / (cu_file + ".o")).stat().st_size > 0


def test_bindings_compile_with_torch_headers(tmp_path: Path) -> None:
    """The .cpp bindings (pybind11 + c10/cuda stream/guard) pass the host compiler's syntax check."""
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        pytest.skip(f"C++ compiler {cxx!r} not found")
    cuda_home = build.find_cuda_home()
    if cuda_home is None or not Path(cuda_home, "include", "cuda_runtime_api.h").exists():
        pytest.skip("CUDA toolkit headers not found (install the CUDA toolkit or set CUDA_HOME)")
    torch_includes = include_paths()
    flags = [
        "-fsyntax-only",
        "-std=c++20",
        "-fPIC",
        "-Wall",
        "-DTORCH_EXTENSION_NAME=stylegan_ops_compile_check",
        "-DTORCH_API_INCLUDE_EXTENSION_H",
        f"-I{CSRC}",
        *[f"-isystem{p}" for p in torch_includes],
        f"-isystem{Path(cuda_home, 'include')}",
        f"-isystem{sysconfig.get_paths()['include']}",
    ]
    if not any(Path(p, "c10", "cuda", "impl", "cuda_cmake_macros.h").exists() for p in torch_includes):
        flags.append("-DC10_USING_CUSTOM_GENERATED_MACROS")  # CPU-only torch wheel
    # Both files at once: the torch headers make each take ~20 s.
    procs = {
        name: subprocess.Popen(
            [cxx, str(CSRC / name), *flags], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        for name in BINDING_FILES
    }
    failures = []
    for name, proc in procs.items():
        out, _ = proc.communicate(timeout=600)
        if proc.returncode != 0:
            failures.append(f"{name} (exit {proc.returncode}):\n{out.decode(errors='replace')}")
    if failures:
        pytest.fail("bindings failed to compile:\n" + "\n".join(failures), pytrace=False)
