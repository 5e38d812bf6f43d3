"""stylegan_ops.build without a compiler: the compile step is replaced by a fake that writes a small
Python module, so caching, locking, fallback and the environment variables are tested anywhere."""

from __future__ import annotations

import json
import os
import time
import types
import warnings
from pathlib import Path

import pytest
import torch
from filelock import FileLock

from stylegan_ops import _impl, bias_act, bias_act_ref, build, upfirdn2d, upfirdn2d_ref

REAL_COMPILE = build._compile

COMPILER_OUTPUT = (
    "Error building extension 'stylegan_ops_bias_act_plugin': [1/3] nvcc ... -c bias_act_kernel.cu\n"
    "FAILED: bias_act_kernel.cuda.o\n"
    'bias_act_kernel.cu(42): error: identifier "oops" is undefined\n'
    '1 error detected in the compilation of "bias_act_kernel.cu".\n'
    "ninja: build stopped: subcommand failed.\n"
)


class FakeCompiler:
    """Stands in for build._compile: records calls, writes ``<module>.py`` into the build dir."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Path]] = []
        self.fail: Exception | None = None
        self.check: types.FunctionType | None = None

    def __call__(self, name: str, sources: list[Path], build_directory: Path, *, verbose: bool = False):
        self.calls.append((name, Path(build_directory)))
        assert all(Path(s).is_file() for s in sources), sources
        if self.check is not None:
            self.check(name, Path(build_directory))
        if self.fail is not None:
            raise self.fail
        mod_name = build.module_name(name)
        path = Path(build_directory) / f"{mod_name}.py"
        path.write_text(f"OP = {name!r}\nBUILT_AT = {time.time()!r}\n")
        return build._import_path(mod_name, str(path))


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeCompiler:
    """A CUDA-capable-looking process with a fake compiler and a private cache."""
    monkeypatch.setenv(build.CACHE_ENV_VAR, str(tmp_path / "cache"))
    monkeypatch.delenv(_impl.IMPL_ENV_VAR, raising=False)
    monkeypatch.delenv(build.LOCK_TIMEOUT_ENV_VAR, raising=False)
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    monkeypatch.setattr(build, "cuda_unavailable_reason", lambda: None)
    monkeypatch.setattr(build, "gpu_archs", lambda: "sm_90")
    compiler = FakeCompiler()
    monkeypatch.setattr(build, "_compile", compiler)
    build.reset()
    yield compiler
    build.reset()


def fake_cuda_tensor() -> types.SimpleNamespace:
    """Enough of a CUDA tensor for resolve_impl (it only looks at .device)."""
    return types.SimpleNamespace(device=torch.device("cuda"))


# --------------------------------------------------------------------------------------------------
# Cache


def test_cache_hit_on_second_load(fake: FakeCompiler) -> None:
    mod = build.get_plugin("bias_act", required=True)
    assert mod is not None and mod.OP == "bias_act"
    assert len(fake.calls) == 1
    bdir = fake.calls[0][1]
    assert bdir.parent == build.cache_root() and bdir.name.startswith("bias_act-")
    assert (bdir / build.MARKER_NAME).is_file()
    # Same process: the loaded module is reused.
    assert build.get_plugin("bias_act", required=True) is mod
    # "New process": forget in-process state; the marker leads to the built module, no compile.
    build.reset()
    mod2 = build.get_plugin("bias_act", required=True)
    assert mod2 is not None and mod2.BUILT_AT == mod.BUILT_AT
    assert len(fake.calls) == 1
    status = build.build_status()["ops"]["bias_act"]
    assert status["ok"] and status["cached"] and status["build_dir"] == str(bdir)


def test_ops_build_separately(fake: FakeCompiler) -> None:
    assert build.get_plugin("bias_act", required=True).OP == "bias_act"
    assert build.get_plugin("upfirdn2d", required=True).OP == "upfirdn2d"
    assert [c[0] for c in fake.calls] == ["bias_act", "upfirdn2d"]
    assert fake.calls[0][1] != fake.calls[1][1]


def test_cache_key_tracks_sources_torch_arch_python(fake: FakeCompiler, monkeypatch, tmp_path: Path) -> None:
    base = build.build_key("bias_act")
    assert base == build.build_key("bias_act")  # deterministic
    for target, attr, value in [
        (build, "gpu_archs", lambda: "sm_80"),
        (torch, "__version__", "0.0.0-test"),
        (torch.version, "cuda", "11.0"),
        (build.platform, "python_version", lambda: "3.99.0"),
    ]:
        with monkeypatch.context() as m:
            m.setattr(target, attr, value)
            assert build.build_key("bias_act") != base, attr
    with monkeypatch.context() as m:
        m.setenv("TORCH_CUDA_ARCH_LIST", "8.6")
        assert build.build_key("bias_act") != base
    assert build.build_key("bias_act") == base
    # A changed header (not compiled directly) changes the key too.
    csrc = tmp_path / "csrc"
    csrc.mkdir()
    for f in build.CSRC_DIR.iterdir():
        (csrc / f.name).write_bytes(f.read_bytes())
    monkeypatch.setattr(build, "CSRC_DIR", csrc)
    assert build.build_key("bias_act") == base
    (csrc / "bias_act_math.h").write_text((csrc / "bias_act_math.h").read_text() + "\n// changed\n")
    assert build.build_key("bias_act") != base
    assert build.build_key("upfirdn2d") != build.build_key("bias_act")


def test_corrupt_marker_rebuilds(fake: FakeCompiler) -> None:
    build.get_plugin("bias_act", required=True)
    bdir = fake.calls[0][1]
    (bdir / build.MARKER_NAME).write_text("{not json")
    build.reset()
    assert build.get_plugin("bias_act", required=True) is not None
    assert len(fake.calls) == 2
    info = json.loads((bdir / build.MARKER_NAME).read_text())
    assert info["op"] == "bias_act" and Path(info["path"]).is_file()


# --------------------------------------------------------------------------------------------------
# Locks


def test_lock_timeout_names_the_lock_file(fake: FakeCompiler, monkeypatch) -> None:
    monkeypatch.setenv(build.LOCK_TIMEOUT_ENV_VAR, "0.3")
    lock_file = build.lock_path("bias_act")
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    holder = FileLock(str(lock_file))
    holder.acquire()
    try:
        start = time.monotonic()
        with pytest.raises(build.PluginBuildError) as info:
            build.get_plugin("bias_act", required=True)
        assert time.monotonic() - start < 10
    finally:
        holder.release()
    msg = str(info.value)
    assert str(lock_file) in msg
    assert "timed out after 0.3s" in msg and "delete the lock file" in msg and f"rm '{lock_file}'" in msg
    assert build.LOCK_TIMEOUT_ENV_VAR in msg
    assert fake.calls == []


def test_lock_timeout_falls_back_with_warning(fake: FakeCompiler, monkeypatch) -> None:
    monkeypatch.setenv(build.LOCK_TIMEOUT_ENV_VAR, "0.2")
    lock_file = build.lock_path("upfirdn2d")
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    holder = FileLock(str(lock_file))
    with holder:
        with pytest.warns(build.PluginBuildWarning, match="upfirdn2d") as record:
            assert build.get_plugin("upfirdn2d", required=False) is None
    assert str(lock_file) in str(record[0].message)
    assert str(lock_file) in build.build_status()["ops"]["upfirdn2d"]["error"]


def test_leftover_unheld_lock_file_is_not_stale(fake: FakeCompiler) -> None:
    """A lock file left by a killed process is not held (OS locks die with their process)."""
    lock_file = build.lock_path("bias_act")
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    lock_file.write_text("12345")
    old = time.time() - 7200
    os.utime(lock_file, (old, old))
    assert build.get_plugin("bias_act", required=True) is not None
    assert len(fake.calls) == 1


def test_stale_torch_baton_is_removed(fake: FakeCompiler, capsys) -> None:
    """torch's own `lock` baton left in the build dir by a killed build would hang load() forever."""
    bdir = build.build_dir("bias_act")
    bdir.mkdir(parents=True)
    baton = bdir / build.TORCH_BATON_NAME
    baton.write_text("")

    def check(name: str, build_directory: Path) -> None:
        assert not (build_directory / build.TORCH_BATON_NAME).exists(), "baton still present at compile time"

    fake.check = check
    assert build.get_plugin("bias_act", required=True) is not None
    assert not baton.exists()
    assert "removing stale torch build lock" in capsys.readouterr().err


def test_invalid_lock_timeout_env(fake: FakeCompiler, monkeypatch) -> None:
    assert build.lock_timeout() == build.DEFAULT_LOCK_TIMEOUT_S
    monkeypatch.setenv(build.LOCK_TIMEOUT_ENV_VAR, "soon")
    with pytest.raises(ValueError, match=build.LOCK_TIMEOUT_ENV_VAR):
        build.lock_timeout()
    monkeypatch.setenv(build.LOCK_TIMEOUT_ENV_VAR, "-1")
    with pytest.raises(ValueError, match=build.LOCK_TIMEOUT_ENV_VAR):
        build.lock_timeout()
    monkeypatch.setenv(build.LOCK_TIMEOUT_ENV_VAR, "12.5")
    assert build.lock_timeout() == 12.5


# --------------------------------------------------------------------------------------------------
# Failure and fallback


def test_failed_build_warns_once_and_records_error(fake: FakeCompiler) -> None:
    fake.fail = RuntimeError(COMPILER_OUTPUT)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert build.get_plugin("bias_act", required=False) is None
        assert build.get_plugin("bias_act", required=False) is None
        assert build.get_plugin("bias_act", required=False) is None
    ours = [w for w in caught if issubclass(w.category, build.PluginBuildWarning)]
    assert len(ours) == 1, [str(w.message) for w in caught]
    msg = str(ours[0].message)
    assert "'bias_act'" in msg and "reference" in msg and "rootedgan doctor" in msg
    assert 'identifier "oops" is undefined' in msg  # the compiler's error line, not the generic first line
    assert len(fake.calls) == 1  # no retry in the same process
    status = build.build_status()["ops"]["bias_act"]
    assert status["attempted"] and not status["ok"]
    assert "ninja: build stopped" in status["error"]
    assert status["build_dir"] == str(fake.calls[0][1])
    # The other op is unaffected and still warns on its own.
    with pytest.warns(build.PluginBuildWarning, match="upfirdn2d"):
        assert build.get_plugin("upfirdn2d", required=False) is None
    # After a failure, required=True raises with the compiler output instead of building again.
    with pytest.raises(build.PluginBuildError, match="oops"):
        build.get_plugin("bias_act", required=True)
    assert len(fake.calls) == 2


def test_required_failure_raises_with_compiler_tail(fake: FakeCompiler) -> None:
    fake.fail = RuntimeError(COMPILER_OUTPUT)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # required=True must raise, not warn
        with pytest.raises(build.PluginBuildError) as info:
            build.get_plugin("bias_act", required=True)
    msg = str(info.value)
    assert "'bias_act'" in msg and "error output" in msg and "ninja: build stopped" in msg
    assert "STYLEGAN_OPS_IMPL=auto" in msg and str(fake.calls[0][1]) in msg


def test_env_impl_cuda_turns_failure_into_error(fake: FakeCompiler, monkeypatch) -> None:
    fake.fail = RuntimeError(COMPILER_OUTPUT)
    monkeypatch.setenv(_impl.IMPL_ENV_VAR, "cuda")
    with pytest.raises(build.PluginBuildError, match="oops"):
        _impl.resolve_impl("bias_act", None, fake_cuda_tensor())
    build.reset()
    monkeypatch.setenv(_impl.IMPL_ENV_VAR, "auto")
    with pytest.warns(build.PluginBuildWarning):
        assert _impl.resolve_impl("bias_act", None, fake_cuda_tensor()) == "ref"
    # The argument overrides the environment.
    with pytest.raises(build.PluginBuildError):
        _impl.resolve_impl("bias_act", "cuda", fake_cuda_tensor())
    monkeypatch.setenv(_impl.IMPL_ENV_VAR, "ref")
    assert _impl.resolve_impl("bias_act", None, fake_cuda_tensor()) == "ref"


def test_successful_build_resolves_to_cuda(fake: FakeCompiler, monkeypatch) -> None:
    monkeypatch.setenv(_impl.IMPL_ENV_VAR, "auto")
    assert _impl.resolve_impl("upfirdn2d", None, fake_cuda_tensor()) == "cuda"


def test_invalid_impl_env_value(monkeypatch) -> None:
    monkeypatch.setenv(_impl.IMPL_ENV_VAR, "fast")
    with pytest.raises(ValueError, match=_impl.IMPL_ENV_VAR):
        _impl.resolve_impl("bias_act", None, torch.zeros(1))
    with pytest.raises(ValueError, match=_impl.IMPL_ENV_VAR):
        bias_act(torch.zeros(2, 3), act="lrelu")
    with pytest.raises(ValueError, match="impl argument"):
        _impl.resolve_impl("bias_act", "gpu", torch.zeros(1))


def test_cpu_tensors_always_take_ref(monkeypatch) -> None:
    def no_build(*args, **kwargs):
        raise AssertionError("get_plugin must not be called for CPU tensors")

    monkeypatch.setattr(build, "get_plugin", no_build)
    for impl in ("cuda", "auto", None):
        assert _impl.resolve_impl("bias_act", impl, torch.zeros(1)) == "ref"
    monkeypatch.setenv(_impl.IMPL_ENV_VAR, "cuda")
    x = torch.randn(2, 4, 3, 3)
    b = torch.randn(4)
    torch.testing.assert_close(bias_act(x, b, act="lrelu"), bias_act_ref(x, b, act="lrelu"))
    f = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    torch.testing.assert_close(upfirdn2d(x, f, up=2, impl="cuda"), upfirdn2d_ref(x, f, up=2))


def test_no_cuda_returns_none_or_raises(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv(build.CACHE_ENV_VAR, str(tmp_path))
    monkeypatch.setattr(torch.version, "cuda", None)
    build.reset()
    try:
        assert "CPU-only build" in build.cuda_unavailable_reason()
        compiled = []
        monkeypatch.setattr(build, "_compile", lambda *a, **k: compiled.append(a))
        with pytest.raises(build.PluginBuildError, match="CPU-only build"):
            build.get_plugin("bias_act", required=True)
        with pytest.warns(build.PluginBuildWarning, match="CPU-only build"):
            assert build.get_plugin("upfirdn2d", required=False) is None
        assert compiled == []
        status = build.build_status()
        assert "CPU-only" in status["cuda_unavailable_reason"]
        assert "CPU-only" in status["ops"]["bias_act"]["reason"]
    finally:
        build.reset()


def test_no_gpu_reason(monkeypatch) -> None:
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "no CUDA GPU" in build.cuda_unavailable_reason()


def test_missing_nvcc_is_explained(fake: FakeCompiler, monkeypatch) -> None:
    """The real compile step checks the toolchain first (no torch build is started)."""
    monkeypatch.setattr(build, "_compile", REAL_COMPILE)
    monkeypatch.setattr(build, "find_cuda_home", lambda: None)
    with pytest.raises(build.PluginBuildError, match="nvcc not found") as info:
        build.get_plugin("bias_act", required=True)
    assert "CUDA_HOME" in str(info.value) and "torch.version.cuda" in str(info.value)


def test_try_build_and_status_for_doctor(fake: FakeCompiler) -> None:
    status = build.build_status()
    assert set(status) >= {"cache_root", "lock_timeout_s", "cuda_unavailable_reason", "ops"}
    assert set(status["ops"]) == set(build.OPS)
    assert status["ops"]["bias_act"]["attempted"] is False
    fake.fail = RuntimeError(COMPILER_OUTPUT)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # try_build never warns
        result = build.try_build("bias_act")
    assert not result["ok"] and "oops" in result["error"]
    fake.fail = None
    result = build.try_build("bias_act")  # retried after the failure
    assert result["ok"] and not result["cached"]
    assert build.get_plugin("bias_act", required=True) is not None
    with pytest.raises(ValueError, match="unknown stylegan_ops plugin"):
        build.try_build("conv2d")


# --------------------------------------------------------------------------------------------------
# Cache location


def test_cache_root_env_overrides(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv(build.CACHE_ENV_VAR, str(tmp_path / "a"))
    monkeypatch.setenv(build.ROOT_CACHE_ENV_VAR, str(tmp_path / "b"))
    assert build.cache_root() == tmp_path / "a"
    monkeypatch.delenv(build.CACHE_ENV_VAR)
    assert build.cache_root() == tmp_path / "b" / "ops"
    monkeypatch.delenv(build.ROOT_CACHE_ENV_VAR)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert build.cache_root() == tmp_path / "home" / ".cache" / "rootedgan" / "ops"


def test_unwritable_cache_is_explained(fake: FakeCompiler, monkeypatch, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv(build.CACHE_ENV_VAR, str(blocker / "sub"))  # a path below a regular file
    with pytest.raises(build.PluginBuildError, match=build.CACHE_ENV_VAR):
        build.get_plugin("bias_act", required=True)


# --------------------------------------------------------------------------------------------------
# rootedgan doctor (the report built on build_status / try_build)


def _doctor_args(**kw) -> types.SimpleNamespace:
    return types.SimpleNamespace(**{"json": False, "no_build": True, "verbose": False, **kw})


def test_doctor_runs_on_this_machine(capsys) -> None:
    from rootedgan.commands import doctor

    assert doctor.run(_doctor_args()) in (0, 1)
    out = capsys.readouterr().out
    for key in (
        "python",
        "torch",
        "cuDNN",
        "nvcc",
        "ninja",
        "C++ compiler",
        "STYLEGAN_OPS_IMPL",
        "kernel cache",
    ):
        assert key in out
    assert "bias_act" in out and "upfirdn2d" in out
    if torch.version.cuda is None:
        assert "torch is a CPU build: ops run on the reference path" in out
        assert doctor.run(_doctor_args()) == 0  # advice only: nothing is broken on a CPU machine
        capsys.readouterr()
    doctor.run(_doctor_args(json=True))
    report = json.loads(capsys.readouterr().out)
    assert set(report["ops"]) == set(build.OPS)
    assert {"torch", "gpu", "nvcc", "ninja", "cxx", "impl", "cache", "problems", "ok"} <= set(report)


def test_doctor_explains_missing_nvcc(monkeypatch) -> None:
    from rootedgan.commands import doctor

    real_which = doctor.shutil.which
    monkeypatch.setattr(
        doctor.shutil, "which", lambda cmd: None if cmd in ("nvcc", "ninja") else real_which(cmd)
    )
    monkeypatch.setattr(build, "find_cuda_home", lambda: None)
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv(_impl.IMPL_ENV_VAR, "turbo")
    report = doctor.collect(build_kernels=False)
    text = "\n".join(f"{p['what']} -> {p['fix']}" for p in report["problems"])
    assert "nvcc not found" in text and "torch.version.cuda 12.4" in text and "CUDA_HOME" in text
    assert "ninja not found" in text and "pip install ninja" in text
    assert "no GPU is visible" in text and "nvidia-smi" in text
    assert "STYLEGAN_OPS_IMPL" in text and not report["ok"]  # an invalid setting is an error


def test_doctor_reports_failed_build_on_gpu_machine(fake: FakeCompiler, monkeypatch, capsys) -> None:
    """The GPU branch, with a fake GPU and a failing fake compiler: state, advice, exit status 1."""
    from rootedgan.commands import doctor

    gpu = {"available": True, "count": 1, "torch_arch_list": ["sm_90"],
           "devices": [{"index": 0, "name": "Fake GPU", "capability": "9.0", "arch": "sm_90"}]}  # fmt: skip
    monkeypatch.setattr(doctor, "_gpu_info", lambda torch_module: gpu)
    fake.fail = RuntimeError(COMPILER_OUTPUT)
    assert doctor.run(_doctor_args(no_build=False, verbose=True)) == 1
    out = capsys.readouterr().out
    assert "Fake GPU" in out and "build failed" in out and 'identifier "oops" is undefined' in out
    assert "the 'bias_act' kernel failed to build" in out and "reference path" in out
    assert "ninja: build stopped" in out  # --verbose shows the compiler output
