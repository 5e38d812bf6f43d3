"""The prepared GPU check: kernels, tests, speed against NVIDIA's code and the speed levers, in one run.

    python3 bench/gpu_check.py --out DIR [--budget-s 450]       # on a GPU machine (``make gpu-check``)
    python bench/gpu_check.py --cpu-rehearsal --out DIR          # every step's code path, tiny, on a CPU

Written for a bare, borrowed GPU machine with a few minutes of time: its ``python3`` has torch, lightning,
torchmetrics, torchvision, scipy, matplotlib; what else we need travels as wheels in ``.whl/`` (``make
gpu-wheels``), NVIDIA's code (optional) in the ignored ``.ref/`` (never committed). Steps, in order of
value, each bounded by what is left of ``--budget-s``:

1. ``environment``: GPU, driver, torch, CUDA, CPU cores;
2. ``install``: the wheels of ``.whl/`` into a private folder on ``PYTHONPATH``, and a build of the
   project itself (``pip install --no-deps``) to check that it installs;
3. ``ops_build``: build ``bias_act`` and ``upfirdn2d`` at load time (seconds and compiler warnings), while
   NVIDIA's own plugins build in the background (``bench/nvidia_ref.py prebuild``) for step 6;
4. ``pytest_gpu``: ``pytest -m gpu`` (kernels vs reference in fp32/fp16/bf16, first and second order;
   CUDA augmentation; CUDA FID path);
5. ``nvidia_train``: NVIDIA's own ``train.py --cfg=stylegan2`` on the same GPU, same batch and synthetic
   256 px data (``bench/nvidia_ref.py gpu-train``), when ``.ref/stylegan3`` is there;
6. ``train``: ``bench/train.py`` at ``paper256``, batch 32, rooted and logistic, with NVIDIA's fp16 layers
   and in fp32, then each speed lever alone (sync_free and the candidates together first, then
   channels_last, cudnn.benchmark, fused optimizer, the kernels, TF32 on/off, NVIDIA's flags), with the
   host synchronisations per step and the peak memory of every row, and a profile of the baseline's steps;
   ``train_1024``: the same at NVIDIA's ``paper1024`` (4 images at 1024 px), plain, sync_free and the
   candidates, against NVIDIA's train.py at that size;
7. ``fid``: ``bench/fid.py`` for 10k generated 256 px images: ours (exact, fast) vs clean-fid, with an
   Inception-v3 of the real architecture and random weights when NVIDIA's file is absent;
8. ``ops_bench``: ``bench/ops.py``, kernels vs reference.

Everything is written under ``--out`` as it goes (``gpu_check.log``, ``gpu_check.json`` after every
step, and each benchmark's ``*-cuda.json``), so a run stopped from outside still returns what it did.
Copy the ``*-cuda.json`` files into ``bench/results/`` and run ``python bench/run_all.py --render-only``
to put the tables into the README.

``--cpu-rehearsal`` runs the same steps on tiny sizes on a CPU (the GPU-only parts are skipped, each
with its reason), so the script cannot rot between GPU sessions; ``tests/test_gpu_check.py`` runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
WHEELS = REPO / ".whl"
NVIDIA_REF = REPO / ".ref" / "stylegan3"
LEVERS_GPU = (  # the candidates first: the budget may end the list
    "sync_free,winners,bias_act_keep_input,channels_last_d,channels_last,cudnn_benchmark,fused_optimizer,"
    "gather_kernel,ref_filter,ref_ops,tf32,no_tf32,nvidia_flags"
)


class Budget:
    """Seconds left of the run's budget."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.start = time.monotonic()

    def left(self) -> float:
        return self.seconds - (time.monotonic() - self.start)

    def elapsed(self) -> float:
        return time.monotonic() - self.start


@dataclass
class Check:
    """The run's state: where things go, the log, and every step's record."""

    out: Path
    rehearsal: bool
    budget: Budget
    train_args: argparse.Namespace
    env: dict[str, str] = field(default_factory=dict)
    steps: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    background: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def log_path(self) -> Path:
        return self.out / "gpu_check.log"

    def log(self, text: str) -> None:
        line = f"[{self.budget.elapsed():6.1f}s] {text}"
        print(line, flush=True)
        with self.log_path.open("a") as fh:
            fh.write(line + "\n")

    def save(self) -> None:
        record = {
            "mode": "cpu-rehearsal" if self.rehearsal else "gpu",
            "elapsed_s": round(self.budget.elapsed(), 1),
            "budget_s": self.budget.seconds,
            "machine": self.info,
            "steps": self.steps,
        }
        tmp = self.out / ".gpu_check.json.tmp"
        tmp.write_text(json.dumps(record, indent=2))
        tmp.replace(self.out / "gpu_check.json")

    def run(
        self, name: str, cmd: list[str], timeout: float, env: dict[str, str] | None = None
    ) -> tuple[int | str, str]:
        """Run ``cmd`` in the repository, its output streamed into the log; ``(returncode or 'timeout',
        output)``. The whole process group is killed at ``timeout``."""
        self.log(f"$ {shlex.join(cmd)}  (limit {timeout:.0f} s)")
        full_env = dict(os.environ, **self.env, **(env or {}), PYTHONUNBUFFERED="1")
        proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        lines: list[str] = []

        def pump() -> None:
            assert proc.stdout is not None
            with self.log_path.open("a") as fh:
                for line in proc.stdout:
                    lines.append(line)
                    fh.write(f"    {name}| {line}")
                    fh.flush()
                    print(f"    {name}| {line}", end="", flush=True)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            status: int | str = proc.wait(timeout=max(timeout, 1))
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            status = "timeout"
        reader.join(timeout=5)
        return status, "".join(lines)


def _kill_group(proc: subprocess.Popen) -> None:
    import signal

    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=5)
            return
        except subprocess.TimeoutExpired:
            continue


@dataclass(frozen=True)
class Step:
    """One step: ``fn(check)`` returns its record; ``min_s``: skipped when less time than this is left."""

    name: str
    fn: Callable[[Check], dict[str, Any]]
    min_s: float


def _tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _status(code: int | str) -> str:
    return "ok" if code == 0 else ("timeout" if code == "timeout" else "failed")


def _python() -> str:
    return sys.executable


def _gpu() -> bool:
    import torch

    return torch.cuda.is_available()


# -- steps --------------------------------------------------------------------------------------------


def step_environment(check: Check) -> dict[str, Any]:
    probe = "\n".join(
        [
            "import json, os, platform, torch",
            "d = dict(python=platform.python_version(), torch=torch.__version__, cuda=torch.version.cuda,",
            "         cudnn=torch.backends.cudnn.version(), gpu=None, cpu_cores=os.cpu_count())",
            "if torch.cuda.is_available():",
            "    cap = torch.cuda.get_device_capability()",
            "    mem = torch.cuda.get_device_properties(0).total_memory / 2**30",
            "    d.update(gpu=torch.cuda.get_device_name(), capability=f'{cap[0]}.{cap[1]}',",
            "             gpu_memory_gib=round(mem, 1))",
            "print(json.dumps(d))",
        ]
    )
    code, out = check.run("environment", [_python(), "-c", probe], timeout=60)
    if code == 0:
        check.info.update(json.loads(out.strip().splitlines()[-1]))
    # Every child builds or finds the kernels under the same cache key: the same arch list and cache.
    if check.info.get("capability"):
        check.env.setdefault(
            "TORCH_CUDA_ARCH_LIST", os.environ.get("TORCH_CUDA_ARCH_LIST", check.info["capability"])
        )
    check.env.setdefault("STYLEGAN_OPS_CACHE", str(Path(tempfile.gettempdir()) / "rootedgan-gpu-check-ops"))
    check.info["env"] = dict(check.env)
    smi = shutil.which("nvidia-smi")
    if smi:
        q = "--query-gpu=name,driver_version,memory.total,clocks.max.sm"
        _, smi_out = check.run("environment", [smi, q, "--format=csv,noheader"], timeout=30)
        check.info["nvidia_smi"] = smi_out.strip()
    return {"status": _status(code), "info": dict(check.info)}


def step_install(check: Check) -> dict[str, Any]:
    details: dict[str, Any] = {}
    wheels = sorted(WHEELS.glob("*.whl")) if WHEELS.is_dir() else []
    if wheels:
        target = Path(tempfile.mkdtemp(prefix="rootedgan-site-"))
        cmd = [_python(), "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
               "--target", str(target), *map(str, wheels)]  # fmt: skip
        code, out = check.run("install", cmd, timeout=120)
        if code != 0:
            return {"status": "failed", "reason": "pip could not install .whl/", "tail": _tail(out)}
        check.env["PYTHONPATH"] = os.pathsep.join([str(target), str(REPO)])
        sys.path[:0] = [str(target)]
        details["wheels"] = [w.name for w in wheels]
    else:
        check.env["PYTHONPATH"] = str(REPO)
        details["wheels"] = (
            "none: no .whl/ (make gpu-wheels fills it; the packages must already be installed)"
        )
    mods = ("jsonargparse", "cleanfid", "lightning", "torchmetrics", "safetensors", "scipy", "matplotlib")
    probe = (
        "import importlib, json, sys\n"
        "bad = []\n"
        "for m in sys.argv[1:]:\n"
        "    try:\n"
        "        importlib.import_module(m)\n"
        "    except Exception as e:\n"
        "        bad.append(f'{m} ({type(e).__name__}: {e})')\n"
        "print('MISSING ' + json.dumps(bad))\n"
    )
    _, out = check.run("install", [_python(), "-c", probe, *mods], timeout=90)
    line = next(
        (ln for ln in out.splitlines() if ln.startswith("MISSING ")), 'MISSING ["import check failed"]'
    )
    missing = json.loads(line[len("MISSING ") :])
    details["missing_modules"] = missing
    project = Path(tempfile.mkdtemp(prefix="rootedgan-project-"))
    cmd = [_python(), "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-build-isolation",
           "--no-compile", "--target", str(project), str(REPO)]  # fmt: skip
    code, out = check.run("install", cmd, timeout=180)
    details["project_install"] = "ok" if code == 0 else f"failed: {_tail(out, 8)}"
    status = "ok" if not missing and code == 0 else "failed"
    return {"status": status, **details}


def step_ops_build(check: Check) -> dict[str, Any]:
    if not _gpu():
        return {"status": "skipped", "reason": "no CUDA device: the kernels build only where they can run"}
    if NVIDIA_REF.is_dir():  # NVIDIA's plugins compile meanwhile, on the other cores
        cmd = [_python(), "bench/nvidia_ref.py", "prebuild", "--ref", str(NVIDIA_REF)]
        log = (check.out / "nvidia_prebuild.log").open("w")
        check.log(f"background: $ {shlex.join(cmd)}")
        env = dict(os.environ, **check.env, MAX_JOBS="8")
        check.background["nvidia_prebuild"] = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    script = (
        "import json, sys, time\n"
        "from stylegan_ops import build\n"
        "op = sys.argv[1]\n"
        "t = time.perf_counter()\n"
        "st = build.try_build(op, verbose=True)\n"
        "secs = round(time.perf_counter() - t, 1)\n"
        "rec = dict(ok=bool(st.get('ok')), seconds=secs, reason=st.get('reason'))\n"
        "print('BUILD ' + json.dumps(rec))\n"
    )
    env = {"MAX_JOBS": "4"}
    t0 = time.perf_counter()
    outputs: dict[str, tuple[int | str, str]] = {}

    def build(op: str) -> None:  # the ops build in parallel, one process each
        cmd = [_python(), "-c", script, op]
        outputs[op] = check.run(f"ops_build:{op}", cmd, timeout=min(300, check.budget.left()), env=env)

    threads = [threading.Thread(target=build, args=(op,)) for op in ("bias_act", "upfirdn2d")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ops, warnings_seen, tails = {}, set(), []
    for op, (code, out) in outputs.items():
        for line in out.splitlines():
            if line.startswith("BUILD "):
                ops[op] = json.loads(line[6:])
            elif "warning" in line.lower():
                warnings_seen.add(line.strip())
        if code != 0 or not ops.get(op, {}).get("ok"):
            tails.append(f"{op}: {code}\n{_tail(out)}")
    ok = len(ops) == 2 and all(v["ok"] for v in ops.values()) and not tails
    return {
        "status": "ok" if ok else "failed",
        "seconds": round(time.perf_counter() - t0, 1),
        "ops": ops,
        "compiler_warnings": sorted(warnings_seen)[:40],
        "tail": "\n".join(tails) or None,
    }


def step_pytest_gpu(check: Check) -> dict[str, Any]:
    cmd = [_python(), "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "-rfEs"]
    code, out = check.run("pytest_gpu", cmd, timeout=min(240, check.budget.left()))
    words = ("passed", "skipped", "failed", "error")
    summary = next(
        (ln for ln in reversed(out.splitlines()) if " in " in ln and any(w in ln for w in words)), ""
    )
    failures = [ln for ln in out.splitlines() if ln.startswith(("FAILED", "ERROR"))][:30]
    # pytest: 0 all passed, 5 nothing collected (all deselected would be a bug: gpu tests exist)
    return {"status": _status(code), "summary": summary.strip("= "), "failures": failures}


def _train_cmd(check: Check, out: Path, extra: list[str], preset: tuple[str, ...] = ()) -> list[str]:
    """bench/train.py on tiny CPU sizes (the rehearsal), else on the GPU at ``paper256`` or ``preset``
    (``(name, batch, steps, warmup)``)."""
    if check.rehearsal:
        base = ["--device", "cpu", "--preset", "smoke", "--steps", "2", "--warmup", "1",
                "--threads", "1", "--one-process"]  # fmt: skip
    else:
        name, batch, steps, warmup = preset or ("paper256", "32", "32", "8")
        base = ["--device", "cuda", "--preset", name, "--batch", batch, "--steps", steps, "--warmup", warmup]
    return [_python(), "bench/train.py", *base, "--out", str(out), *extra]


def step_train(check: Check) -> dict[str, Any]:
    _wait_background(check, "nvidia_prebuild", limit=120)  # no compiler competing with the timings
    out = check.out / ("train-cpu-rehearsal.json" if check.rehearsal else "train-cuda.json")
    budget = check.budget.left() - 100  # leave room for FID and the ops benchmark
    t = check.train_args
    profile = min(t.profile, 1) if check.rehearsal else t.profile
    variants = "fp16,fp32" if check.rehearsal else t.train_variants  # the rehearsal runs every code path
    extra = ["--loss", t.train_losses, "--variants", variants, "--levers", t.train_levers,
             "--profile", str(profile), "--budget-s", f"{max(budget, 45):.0f}"]  # fmt: skip
    nvidia = check.out / "nvidia-train.json"
    summary = json.loads(nvidia.read_text()).get("summary") or {} if nvidia.exists() else {}
    if summary.get("sec_per_kimg_median"):  # NVIDIA's run on this GPU: the ratio column
        extra += ["--nvidia-sec-per-kimg", str(summary["sec_per_kimg_median"])]
        if summary.get("gpumem_gib_median"):
            extra += ["--nvidia-gpumem-gb", str(summary["gpumem_gib_median"])]
    code, text = check.run("train", _train_cmd(check, out, extra), timeout=max(budget, 45) + 30)
    return {"status": _status(code), "json": out.name if out.exists() else None, "table": _table(text)}


def _table(text: str) -> str:
    """The results table a benchmark printed (from its header line on)."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(("run ", "case ", "op ")) or line.lstrip().startswith("tick "):
            return "\n".join(lines[i : i + 40])
    return _tail(text, 25)


def step_train_1024(check: Check) -> dict[str, Any]:
    """The second preset (NVIDIA's paper1024: 4 images at 1024 px), ours plain and with the candidate levers,
    against NVIDIA's train.py at the same size when its code and the time are there."""
    out = check.out / ("train-1024-cpu-rehearsal.json" if check.rehearsal else "train-1024-cuda.json")
    extra = ["--loss", "logistic", "--variants", "fp16", "--levers", "sync_free,winners"]
    if not check.rehearsal:
        nvidia = check.out / "nvidia-train-1024.json"
        if NVIDIA_REF.is_dir() and check.budget.left() > 200:
            cmd = [_python(), "bench/nvidia_ref.py", "gpu-train", "--ref", str(NVIDIA_REF), "--batch", "4",
                   "--res", "1024", "--images", "64", "--seconds", "30", "--max-wall", "120",
                   "--out", str(nvidia)]  # fmt: skip
            check.run("nvidia_train_1024", cmd, timeout=140)
        summary = json.loads(nvidia.read_text()).get("summary") or {} if nvidia.exists() else {}
        if summary.get("sec_per_kimg_median"):
            extra += ["--nvidia-sec-per-kimg", str(summary["sec_per_kimg_median"])]
    budget = max(check.budget.left() - 60, 45)
    cmd = [*_train_cmd(check, out, extra, ("paper1024", "4", "16", "4")), "--budget-s", f"{budget:.0f}"]
    code, text = check.run("train_1024", cmd, timeout=budget + 30)
    return {"status": _status(code), "json": out.name if out.exists() else None, "table": _table(text)}


def step_nvidia_train(check: Check) -> dict[str, Any]:
    if not NVIDIA_REF.is_dir():
        return {
            "status": "skipped",
            "reason": f"{NVIDIA_REF.relative_to(REPO)} not there: fetch NVlabs/stylegan3 into the ignored "
            ".ref/ (its licence keeps it out of the repository)",
        }
    out = check.out / "nvidia-train.json"
    if check.rehearsal or not _gpu():
        cmd = [_python(), "bench/nvidia_ref.py", "gpu-train", "--ref", str(NVIDIA_REF), "--dry-run"]
        code, text = check.run("nvidia_train", cmd, timeout=120)
        return {"status": _status(code), "mode": "dry-run (no GPU)", "tail": _tail(text, 15)}
    _wait_background(check, "nvidia_prebuild", limit=60)
    seconds = min(35.0, check.budget.left() - 150)
    cmd = [_python(), "bench/nvidia_ref.py", "gpu-train", "--ref", str(NVIDIA_REF), "--batch", "32",
           "--seconds", f"{max(seconds, 20):.0f}", "--max-wall", f"{max(seconds, 20) + 90:.0f}",
           "--out", str(out)]  # fmt: skip
    code, text = check.run("nvidia_train", cmd, timeout=max(seconds, 20) + 110)
    summary = json.loads(out.read_text()).get("summary") if out.exists() else None
    return {"status": _status(code), "json": out.name if out.exists() else None, "summary": summary}


def step_ops_bench(check: Check) -> dict[str, Any]:
    if check.rehearsal:
        out = check.out / "ops-cpu-rehearsal.json"
        cmd = [
            _python(),
            "bench/ops.py",
            "--iters",
            "2",
            "--warmup",
            "1",
            "--dtypes",
            "float32",
            "--out",
            str(out),
        ]
        code, text = check.run("ops_bench", cmd, timeout=120, env={"CUDA_VISIBLE_DEVICES": ""})
    else:
        out = check.out / "ops-cuda.json"
        cmd = [_python(), "bench/ops.py", "--iters", "20", "--warmup", "5", "--dtypes", "float32,float16",
               "--out", str(out)]  # fmt: skip
        code, text = check.run("ops_bench", cmd, timeout=min(120, check.budget.left()))
    return {"status": _status(code), "json": out.name if out.exists() else None, "table": _table(text)}


def step_fid(check: Check) -> dict[str, Any]:
    if check.rehearsal:
        out = check.out / "fid-cpu-rehearsal.json"
        cmd = [_python(), "bench/fid.py", "--device", "cpu", "--preset", "tiny32", "--num-gen", "64",
               "--batch", "32", "--repeats", "1", "--inception", "random-v3", "--out", str(out)]  # fmt: skip
        code, text = check.run("fid", cmd, timeout=300)
    else:
        out = check.out / "fid-cuda.json"
        num = 10000 if check.budget.left() > 150 else 4096
        cmd = [_python(), "bench/fid.py", "--device", "cuda", "--preset", "paper256", "--num-gen", str(num),
               "--batch", "250", "--repeats", "1", "--inception", "random-v3", "--workers", "12",
               "--out", str(out)]  # fmt: skip
        code, text = check.run("fid", cmd, timeout=min(240, check.budget.left()))
    return {"status": _status(code), "json": out.name if out.exists() else None, "tail": _tail(text, 12)}


def _wait_background(check: Check, name: str, limit: float) -> None:
    proc = check.background.get(name)
    if proc is None or proc.poll() is not None:
        return
    check.log(f"waiting for the background {name} (at most {limit:.0f} s)")
    try:
        proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        check.log(f"background {name} still running: left to finish on its own")


STEPS = [
    Step("environment", step_environment, 5),
    Step("install", step_install, 20),
    Step("ops_build", step_ops_build, 60),
    Step("pytest_gpu", step_pytest_gpu, 30),
    Step("nvidia_train", step_nvidia_train, 60),
    Step("train", step_train, 60),
    Step("train_1024", step_train_1024, 60),
    Step("fid", step_fid, 60),
    Step("ops_bench", step_ops_bench, 30),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="folder for the log, the JSON and the results"
    )
    parser.add_argument("--budget-s", type=float, default=450, help="wall-clock budget of the whole check")
    parser.add_argument(
        "--cpu-rehearsal", action="store_true", help="tiny sizes on the CPU; GPU-only parts skipped"
    )
    parser.add_argument("--only", default=None, help="comma list of steps to run (default: all)")
    parser.add_argument("--train-losses", default="logistic,rooted", help="bench/train.py --loss")
    parser.add_argument(
        "--train-variants",
        default="fp16",
        help="bench/train.py --variants (fp16,fp32: both; the first H200 run has fp32)",
    )
    parser.add_argument("--train-levers", default=LEVERS_GPU, help="bench/train.py --levers")
    parser.add_argument("--profile", type=int, default=4, help="bench/train.py --profile (steps)")
    args = parser.parse_args(argv)

    names = [s.name for s in STEPS]
    only = [x.strip() for x in args.only.split(",")] if args.only else names
    unknown = set(only) - set(names)
    if unknown:
        parser.error(f"--only: unknown steps {', '.join(sorted(unknown))}; choose from {', '.join(names)}")
    args.out.mkdir(parents=True, exist_ok=True)
    check = Check(out=args.out, rehearsal=args.cpu_rehearsal, budget=Budget(args.budget_s), train_args=args)
    check.log_path.write_text("")
    if not args.cpu_rehearsal and not _gpu():
        check.log("no CUDA device here: running the CPU rehearsal instead (--cpu-rehearsal)")
        check.rehearsal = True
    mode = "CPU rehearsal" if check.rehearsal else "GPU"
    check.log(f"gpu_check: {mode}, budget {args.budget_s:.0f} s, out {args.out}")
    for step in STEPS:
        record: dict[str, Any] = {"name": step.name}
        if step.name not in only:
            record.update(status="skipped", reason="not in --only")
        elif step.name not in ("environment", "install") and check.budget.left() < step.min_s:
            record.update(
                status="skipped",
                reason=f"time budget: {check.budget.left():.0f} s left, needs {step.min_s:.0f}",
            )
        else:
            t0 = time.monotonic()
            try:
                record.update(step.fn(check))
            except Exception as err:  # one broken step must not cost the others
                record.update(status="failed", reason=f"{type(err).__name__}: {err}")
            record["seconds"] = round(time.monotonic() - t0, 1)
        check.steps.append(record)
        check.log(
            f"== {step.name}: {record['status']}" + (f" ({record['reason']})" if record.get("reason") else "")
        )
        check.save()
    for name, proc in check.background.items():
        if proc.poll() is None:
            _kill_group(proc)
            check.log(f"stopped the background {name}")
    failed = [s["name"] for s in check.steps if s["status"] in ("failed", "timeout")]
    check.log(
        f"done in {check.budget.elapsed():.0f} s; "
        + (f"FAILED: {', '.join(failed)}" if failed else "no failures")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
