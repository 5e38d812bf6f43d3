"""Training throughput (images/s) and peak memory of FinetuneModule, rooted vs logistic loss.

    python bench/train.py [--device auto|cpu|cuda] [--preset all|smoke|paper256] [--steps N]
                          [--warmup N] [--batch N] [--precision 32|bf16-mixed|16-mixed]
                          [--nvidia-sec-per-kimg X] [--vs-nvidia-cpu [--rounds N]] [--threads N]
                          [--out bench/results/train.json]

Presets (networks built from scratch with random weights; nothing is downloaded):

* ``paper256`` (GPU only): NVIDIA stylegan2-ada's ``--cfg=paper256``: 256x256, 8 mapping layers,
  channel_base 16384 (fmaps 0.5), channel_max 512, 4 fp16 resolutions, conv_clamp 256, D minibatch-std
  group 8 (or the largest divisor of the batch below it), gamma 1, lr 0.0025, G_ema half-life 20 kimg,
  R1 every 16 steps, path length every 4 (weight 2). NVIDIA's global batch is 64 on 8 GPUs; here the
  batch is what one GPU runs per step: ``--batch`` (default 32).
* ``smoke`` (the CPU one): 32x32, channel_base 1024, channel_max 64, 2 mapping layers, z_dim = w_dim =
  64, batch 8, the hyperparameters of ``configs/smoke.yaml`` (R1 every 4 steps, path length every 2).

Each (preset, loss) runs in a fresh subprocess (clean peak-memory counters, one failure does not end the
rest) that drives ``FinetuneModule.training_step`` through a real ``lightning.Trainer`` on an in-memory
uint8 batch stream, with a callback timing every step (CUDA-synchronised). Throughput is the wall time
from the start of the first step after ``--warmup`` to the end of the last, over ``--steps`` steps
rounded up to a whole number of R1/path-length cycles, so every measurement holds the same share of
regularization steps as a long run. Peak memory is ``torch.cuda.max_memory_allocated`` on a GPU and the
process's peak RSS (``getrusage``; it includes the torch/Lightning runtime) on the CPU. The cost per
phase (Gmain, Greg, Dmain, Dreg, EMA+logging, and the loop between steps) is printed as well; timing
it adds no synchronisation on a GPU, since the module reads every phase's loss back to the host anyway.

Comparing with NVIDIA's implementation (stylegan2-ada-pytorch; it cannot run here and its code is not in
this repository). On the same GPU, in NVIDIA's checkout and environment (it targets PyTorch 1.7-1.9; a
newer PyTorch, as an H100 needs, runs it with a ``conv2d_gradfix ... Falling back`` warning)::

    python bench/synthetic_data.py /tmp/shapes256 --count 2000 --resolution 256   # any 256x256 images
    python train.py --outdir=/tmp/nv-runs --data=/tmp/shapes256 --gpus=1 --cfg=paper256 --batch=32 \\
        --kimg=40 --aug=noaug --metrics=none --snap=1000

``--batch`` must match ours (NVIDIA's per-GPU batch is ``--batch / --gpus``), ``--aug=noaug`` because
this module runs no augmentation (NVIDIA's default is ADA), ``--metrics=none`` so no FID runs between
ticks. NVIDIA prints one line per tick (every 4 kimg: 10 ticks for ``--kimg=40``), e.g.
``tick 3  kimg 12.0  time ...  sec/tick ...  sec/kimg 7.51  maintenance ...  gpumem ...``; tick 0 is
the first step alone (with the CUDA warm-up), so take the median ``sec/kimg`` of ticks 1 and later (also
the ``Timing/sec_per_kimg`` entries of ``stats.jsonl`` in the run directory). Then

    python bench/train.py --device cuda --preset paper256 --batch 32 --nvidia-sec-per-kimg 7.51 \\
        --nvidia-flags

adds the throughput ratio ours/NVIDIA (> 1: ours is faster) to the paper256 rows. ``--nvidia-flags``
sets what NVIDIA's training loop sets (``cudnn.benchmark = True``, TF32 off for matmul and cuDNN);
without it the benchmark runs with PyTorch's defaults, as ``rootedgan finetune`` does. NVIDIA's
``gpumem`` column is its peak ``max_memory_allocated`` in GiB, comparable to ours
(``--nvidia-gpumem-gb`` adds it to the JSON).

On the CPU, NVIDIA's inner loop runs here (``bench/nvidia_ref.py cpu-step``, its code from ``.ref/``)::

    python bench/train.py --device cpu --preset smoke --loss logistic --threads 1 --vs-nvidia-cpu --rounds 6

times our smoke step and NVIDIA's loop on the same steps and threads, each in a fresh process, ``--rounds``
times, alternating which goes first, and prints every round, the per-phase split and the median ratio
(< 1: ours is faster; the JSON's ``nvidia_cpu.rounds_summary``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from bench.common import machine_info, set_ops_hooks, write_json  # noqa: E402

DEFAULT_OUT = REPO / "bench" / "results" / "train.json"
LOSSES = ("rooted", "logistic")
PHASES = ("Gmain", "Greg", "Dmain", "Dreg", "ema+log", "loop")
#: Speed levers (module options and backend flags), each measured alone on top of the baseline.
LEVERS: dict[str, dict[str, Any]] = {
    "channels_last": {"channels_last": True},
    "channels_last_d": {"channels_last_d": True},  # D's fp16 blocks only (issue 25: G's modulated convs lose)
    "tf32": {"tf32": True},
    "no_tf32": {"tf32": False},
    "fused_optimizer": {"fused_optimizer": True},
    "cudnn_benchmark": {"cudnn_benchmark": True},
    "nvidia_flags": {"cudnn_benchmark": True, "tf32": False},
    "ref_ops": {"ops_impl": "ref"},  # the plain reference ops (no CUDA kernel, no fused CPU bias_act)
    "ref_filter": {"filter_impl": "ref"},  # the reference for plain filtering only (set_ops_hooks)
    "gather_kernel": {"upfirdn2d_kernel": "gather"},  # upfirdn2d on our gather kernel, not the tiles
    "bias_act_keep_input": {"bias_act_keep_input": True},  # the CUDA bias_act as before it kept its output
    "sync_free": {"sync_free": True},  # no host synchronisation inside a step (model.speed.sync_free)
    # the candidates together (none changes the step beyond rounding; TF32 is left as NVIDIA's loop sets it)
    "winners": {"sync_free": True, "channels_last": True, "cudnn_benchmark": True},
}
MODULE_LEVERS = ("channels_last", "tf32", "fused_optimizer", "sync_free")  # FinetuneModule's model.speed
# levers that change which kernels run: profiled like the baseline rows, to see where the time moved
PROFILED_LEVERS = ("ref_filter", "ref_ops")


def _mbstd_group(batch: int, preferred: int) -> int:
    """The largest minibatch-std group size <= ``preferred`` that divides ``batch``."""
    return max(g for g in range(1, min(preferred, batch) + 1) if batch % g == 0)


VARIANTS = ("fp16", "fp32")


def preset_config(name: str, batch: int | None, variant: str = "fp16") -> dict[str, Any]:
    """Network and module arguments, batch and default step counts of a preset. ``variant`` ``fp32``
    turns the preset's fp16 layers (NVIDIA's ``num_fp16_res``) off."""
    if name == "paper256":
        batch = batch or 32
        res, base, cmax, fp16, clamp = 256, 16384, 512, 4, 256
        g_mapping, z_dim = dict(num_layers=8), 512
        mbstd = _mbstd_group(batch, 8)
        hparams = dict(g_lr=0.0025, d_lr=0.0025, r1_gamma=1.0, r1_interval=16, pl_interval=4, ema_kimg=20.0)
        steps, warmup = 64, 16
    elif name == "paper1024":  # NVIDIA's paper1024 (MetFaces transfer): 4 images per GPU at 1024 px
        batch = batch or 4
        res, base, cmax, fp16, clamp = 1024, 32768, 512, 4, 256
        g_mapping, z_dim = dict(num_layers=8), 512
        mbstd = _mbstd_group(batch, 4)
        hparams = dict(g_lr=0.002, d_lr=0.002, r1_gamma=2.0, r1_interval=16, pl_interval=4, ema_kimg=10.0)
        steps, warmup = 32, 8
    elif name == "smoke":
        batch = batch or 8
        res, base, cmax, fp16, clamp = 32, 1024, 64, 0, 256
        g_mapping, z_dim = dict(num_layers=2), 64
        mbstd = _mbstd_group(batch, 4)
        hparams = dict(g_lr=0.002, d_lr=0.002, r1_gamma=1.0, r1_interval=4, pl_interval=2, ema_kimg=0.01)
        steps, warmup = 16, 4
    else:
        raise ValueError(f"unknown preset {name!r}")
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}")
    if variant == "fp32":
        fp16 = 0
    g_kwargs = dict(
        z_dim=z_dim,
        c_dim=0,
        w_dim=z_dim,
        img_resolution=res,
        img_channels=3,
        mapping_kwargs=g_mapping,
        synthesis_kwargs=dict(channel_base=base, channel_max=cmax, num_fp16_res=fp16, conv_clamp=clamp),
    )
    d_kwargs = dict(
        c_dim=0,
        img_resolution=res,
        img_channels=3,
        architecture="resnet",
        channel_base=base,
        channel_max=cmax,
        num_fp16_res=fp16,
        conv_clamp=clamp,
        epilogue_kwargs=dict(mbstd_group_size=mbstd),
    )
    hparams.update(pl_weight=2.0, pl_batch_shrink=2, style_mixing_prob=0.9, betas=(0.0, 0.99), k=2.0)
    return dict(
        g_kwargs=g_kwargs, d_kwargs=d_kwargs, hparams=hparams, batch=batch, steps=steps, warmup=warmup
    )


# -- worker: one (preset, loss) measurement in its own process ---------------------------------------


def _cpu_snapshot() -> tuple[float, float, float] | None:
    """(wall s, CPU s busy on the whole machine incl. steal, CPU s of this process); None off Linux."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    busy = sum(fields[i] for i in (0, 1, 2, 5, 6, 7) if i < len(fields))  # user nice system irq softirq steal
    t = os.times()
    return time.perf_counter(), busy / os.sysconf("SC_CLK_TCK"), t.user + t.system


def _other_cpu_cores(start, end) -> float | None:
    """Cores kept busy by other processes (and the hypervisor's steal) between two snapshots."""
    if start is None or end is None or end[0] <= start[0]:
        return None
    return max(((end[1] - start[1]) - (end[2] - start[2])) / (end[0] - start[0]), 0.0)


def _vm_rss_mib() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _peak_rss_mib() -> float:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Build the module, train ``warmup + steps`` steps through a Trainer, return the measurements."""
    import lightning as L

    from rootedgan.training.module import FinetuneModule, use_channels_last
    from rootedgan.training.settings import migrate

    device = spec["device"]
    cuda = device == "cuda"
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    levers = dict(spec.get("levers") or {})
    if spec.get("nvidia_flags"):
        levers.update(LEVERS["nvidia_flags"])
    saved_flags = (
        torch.backends.cudnn.benchmark,
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
    )
    torch.backends.cudnn.benchmark = bool(levers.pop("cudnn_benchmark", False))
    if levers.get("ops_impl"):  # read by every op call (run_worker_specs restores the environment)
        os.environ["STYLEGAN_OPS_IMPL"] = levers.pop("ops_impl")
    # stylegan_ops' benchmark hooks, set for every row (so a lever's choice never outlives its row)
    set_ops_hooks(
        levers.pop("filter_impl", None),
        levers.pop("upfirdn2d_kernel", "auto"),
        bool(levers.pop("bias_act_keep_input", False)),
    )
    if levers.get("tf32") is not None:  # the module applies it at fit start; set here for the record too
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = bool(levers["tf32"])
    channels_last_d = bool(levers.pop("channels_last_d", False))
    unknown = set(levers) - set(MODULE_LEVERS)
    if unknown:
        raise ValueError(f"unknown levers {sorted(unknown)}")
    ops_impl: dict[str, str] = {}
    if cuda:
        from stylegan_ops import build
        from stylegan_ops._impl import requested_impl

        wanted = requested_impl()
        for op in build.OPS:  # build (or load) the kernels now, outside the timings
            if wanted == "ref":
                ops_impl[op] = "ref (STYLEGAN_OPS_IMPL=ref)"
            else:
                status = build.try_build(op)
                ops_impl[op] = "cuda" if status.get("ok") else f"ref ({status.get('reason')})"
                if status.get("ok"):
                    build.get_plugin(op, required=True)
    rss_before = _vm_rss_mib()

    cfg = spec["config"]
    profile_steps = int(spec.get("profile") or 0)
    batch, total = cfg["batch"], spec["warmup"] + spec["steps"] + profile_steps
    measured_end = spec["warmup"] + spec["steps"]
    torch.manual_seed(0)
    module = FinetuneModule(
        network=None,
        g_kwargs=cfg["g_kwargs"],
        d_kwargs=cfg["d_kwargs"],
        total_kimg=1e9,
        **migrate({"loss": spec["loss"], **cfg["hparams"]}),  # NVIDIA-style flat settings -> sections
        speed=levers,
    )
    if channels_last_d:
        use_channels_last(module.D)
    hp = module.reg
    res = cfg["g_kwargs"]["img_resolution"]

    class Batches(torch.utils.data.IterableDataset):
        """``total`` batches cycling over a few pre-made random uint8 ones (no decoding cost)."""

        def __init__(self) -> None:
            gen = torch.Generator().manual_seed(1)
            self.pool = []
            for _ in range(4):
                img = torch.randint(0, 256, (batch, 3, res, res), dtype=torch.uint8, generator=gen)
                labels = torch.zeros(batch, 0)
                self.pool.append((img.pin_memory(), labels.pin_memory()) if cuda else (img, labels))

        def __len__(self) -> int:
            return total

        def __iter__(self):
            for i in range(total):
                yield self.pool[i % len(self.pool)]

    sync = torch.cuda.synchronize if cuda else (lambda: None)
    # Per-phase times need a synchronisation after every phase, which on a GPU would itself stall the
    # queue (and hide what sync_free saves): there, only the window's ends are synchronised, unless asked.
    phase_times = not cuda or bool(spec.get("phase_times"))
    step_sync = sync if phase_times else (lambda: None)
    steps: list[dict[str, Any]] = []
    cpu: dict[str, Any] = {}

    class Timer(L.Callback):
        def on_train_start(self, trainer, pl_module) -> None:
            if not phase_times:
                return
            original = pl_module._finish_phase

            def timed_phase(name, loss, params, opt):
                out = original(name, loss, params, opt)
                sync()
                step = steps[-1]
                step["marks"].append((name, time.perf_counter()))
                return out

            pl_module._finish_phase = timed_phase  # instance attribute shadows the method

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            idx = int(pl_module.step_idx)
            do_pl = hp.pl_weight > 0 and idx % max(hp.pl_interval, 1) == 0
            do_r1 = hp.r1_gamma > 0 and idx % max(hp.r1_interval, 1) == 0
            (sync if len(steps) == spec["warmup"] else step_sync)()
            if len(steps) == spec["warmup"]:
                cpu["start"] = _cpu_snapshot()
                if cuda:  # every host synchronisation in the measured steps becomes a recorded warning
                    torch.cuda.set_sync_debug_mode("warn")
                    cpu["syncs_before"] = len(caught)
            if profile_steps and len(steps) == measured_end:
                profiler.start()
            steps.append({"pl": do_pl, "r1": do_r1, "marks": [], "start": time.perf_counter()})

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if len(steps) == measured_end and cuda:
                torch.cuda.set_sync_debug_mode(0)
                cpu["syncs"] = sum("ynchroniz" in str(w.message) for w in caught[cpu["syncs_before"] :])
            (sync if len(steps) == measured_end else step_sync)()
            steps[-1]["end"] = time.perf_counter()
            if len(steps) == measured_end:
                cpu["end"] = _cpu_snapshot()
            if profile_steps and len(steps) == total:
                profiler.stop()

    activities = [torch.profiler.ProfilerActivity.CPU]
    if cuda:
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    profiler = torch.profiler.profile(activities=activities)

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory(prefix="rootedgan-bench-") as root:
        trainer = L.Trainer(
            accelerator=device,
            devices=1,
            precision=spec["precision"],
            benchmark=torch.backends.cudnn.benchmark,
            max_epochs=1,
            limit_train_batches=total,
            log_every_n_steps=spec.get("log_every", 50),
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            default_root_dir=root,
            callbacks=[Timer()],
        )
        loader = torch.utils.data.DataLoader(Batches(), batch_size=None, num_workers=0)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer.fit(module, loader)
    if len(steps) != total or "end" not in steps[-1]:
        raise RuntimeError(f"ran {len(steps)} of {total} steps")

    window = steps[spec["warmup"] : measured_end]
    wall = window[-1]["end"] - window[0]["start"]
    phases: dict[str, list[float]] = {name: [] for name in PHASES}
    for i, step in enumerate(window):
        prev = step["start"]
        for name, t in step["marks"]:
            phases[name].append((t - prev) * 1e3)
            prev = t
        phases["ema+log"].append((step["end"] - prev) * 1e3)
        if i + 1 < len(window):
            phases["loop"].append((window[i + 1]["start"] - step["end"]) * 1e3)
    step_ms = [(s["end"] - s["start"]) * 1e3 for s in window]
    cycle = spec["cycle"]
    cycle_ms = [sum(step_ms[i : i + cycle]) for i in range(0, len(step_ms) - cycle + 1, cycle)]
    result: dict[str, Any] = {
        "img_per_s": batch * len(window) / wall,
        "ms_per_step": wall * 1e3 / len(window),
        "img_per_s_best_cycle": batch * cycle / (min(cycle_ms) / 1e3),
        "measured_steps": len(window),
        "phases_ms": {
            name: {
                "count": len(v),
                "mean": statistics.fmean(v) if v else None,
                "share": sum(v) / (wall * 1e3),
            }
            for name, v in phases.items()
        },
        "step_ms": [round(v, 3) for v in step_ms],
        "step_kind": ["".join(k for k, on in (("P", s["pl"]), ("R", s["r1"])) if on) or "-" for s in window],
        "phase_counts": dict(module.phase_counts),
        "nonfinite_phases": int(module.bad_phases),
        "g_params": sum(p.numel() for p in module.G.parameters()),
        "d_params": sum(p.numel() for p in module.D.parameters()),
        "torch_threads": torch.get_num_threads(),
        "other_cpu_cores": _other_cpu_cores(cpu.get("start"), cpu.get("end")),
        "backend_flags": {
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        },
    }
    if cuda:
        result["host_syncs_per_step"] = cpu.get("syncs", 0) / len(window)
        result["peak_gpu_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
        result["peak_gpu_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
        result["ops_impl"] = ops_impl
    result["peak_rss_mib"] = _peak_rss_mib()
    result["rss_before_model_mib"] = rss_before
    result["module_levers"] = levers
    result["ops_impl_env"] = os.environ.get("STYLEGAN_OPS_IMPL")
    if profile_steps:
        result["profile"] = _profile_summary(profiler, steps[measured_end:], cuda)
    (
        torch.backends.cudnn.benchmark,
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
    ) = saved_flags
    del module, trainer
    if cuda:
        torch.cuda.empty_cache()
    return result


def _profile_summary(profiler: Any, steps: list[dict[str, Any]], cuda: bool) -> dict[str, Any]:
    """The profiled steps: wall time, time the GPU spent in kernels, and the top operators."""
    wall_ms = (steps[-1]["end"] - steps[0]["start"]) * 1e3
    events = profiler.key_averages()

    def self_device_us(e: Any) -> float:
        return float(getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0.0)) or 0.0)

    sort_by = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    # Kernels only: an operator's own row repeats the time of the kernels it launched.
    on_device = [e for e in events if str(getattr(e, "device_type", "")).endswith("CUDA")]
    kernel_ms = sum(self_device_us(e) for e in on_device) / 1e3 if cuda else None
    top = sorted(events, key=self_device_us if cuda else (lambda e: e.self_cpu_time_total), reverse=True)
    return {
        "steps": len(steps),
        "step_kinds": ["".join(k for k, on in (("P", s["pl"]), ("R", s["r1"])) if on) or "-" for s in steps],
        "wall_ms": wall_ms,
        "device_busy_ms": kernel_ms,
        "device_busy_share": kernel_ms / wall_ms if kernel_ms is not None else None,
        "top": [
            {
                "name": e.key[:120],
                "calls": e.count,
                "self_device_ms": self_device_us(e) / 1e3,
                "self_cpu_ms": e.self_cpu_time_total / 1e3,
            }
            for e in top[:40]
        ],
        "table": events.table(sort_by=sort_by, row_limit=30, max_name_column_width=60),
    }


def run_worker_specs(specs: list[dict[str, Any]], result_path: Path) -> None:
    """Several measurements in one process (saves the start-up of a process per row); each result is
    written as soon as it exists, and a failing spec is recorded without ending the others. The
    environment and backend flags are restored after every row."""
    results: list[dict[str, Any]] = []
    for spec in specs:
        env = dict(os.environ)
        flags = (
            torch.backends.cudnn.benchmark,
            torch.backends.cuda.matmul.allow_tf32,
            torch.backends.cudnn.allow_tf32,
        )
        try:
            results.append(run_worker(spec))
        except Exception as err:  # recorded in the table; the other rows still run
            import traceback

            results.append(
                {"error": f"{type(err).__name__}: {err}", "log_tail": traceback.format_exc()[-3000:]}
            )
        finally:
            os.environ.clear()
            os.environ.update(env)
            (
                torch.backends.cudnn.benchmark,
                torch.backends.cuda.matmul.allow_tf32,
                torch.backends.cudnn.allow_tf32,
            ) = flags
        result_path.write_text(json.dumps(results))


# -- parent: plan, run workers, report --------------------------------------------------------------


def _measure_group(specs: list[dict[str, Any]], verbose: bool, timeout: float | None) -> list[dict[str, Any]]:
    """Run ``specs`` in one worker process; a row it did not finish gets an ``error``."""
    with tempfile.TemporaryDirectory(prefix="rootedgan-bench-") as tmp:
        spec_path, result_path = Path(tmp, "spec.json"), Path(tmp, "result.json")
        spec_path.write_text(json.dumps(specs))
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(spec_path), str(result_path)]
        t0 = time.perf_counter()
        status, output = None, ""
        # own process group: on timeout the worker's children (torch.compile's compile workers, which hold
        # the output pipe open) are killed with it, instead of keeping this call waiting
        proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            stdout=None if verbose else subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        try:
            output, _ = proc.communicate(timeout=timeout)
            status, output = proc.returncode, output or ""
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
            status = f"stopped after {timeout:.0f} s (time budget)"
        elapsed = time.perf_counter() - t0
        done = json.loads(result_path.read_text()) if result_path.exists() else []
    tail = "\n".join(output.splitlines()[-25:])
    results = []
    for i, _ in enumerate(specs):
        if i < len(done):
            results.append(done[i] | {"process_s": elapsed})
        else:
            results.append({"error": f"worker exited ({status}) before this row", "log_tail": tail})
    return results


def _fmt_mem(row: dict[str, Any]) -> str:
    if "peak_gpu_mem_gib" in row:
        return f"{row['peak_gpu_mem_gib']:.2f} GiB gpu"
    if "peak_rss_mib" in row:
        return f"{row['peak_rss_mib']:.0f} MiB rss"
    return "-"


def _print_table(header: list[str], lines: list[list[str]], left: int) -> None:
    table = [header, *lines]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    for i, line in enumerate(table):
        cells = [
            c.ljust(w) if j < left else c.rjust(w) for j, (c, w) in enumerate(zip(line, widths, strict=True))
        ]
        print("  ".join(cells))
        if i == 0:
            print("  ".join("-" * w for w in widths))


def row_label(r: dict[str, Any]) -> str:
    """``preset/variant/loss[+lever]`` of a result row."""
    label = f"{r['preset']}/{r.get('variant', 'fp16')}/{r['loss']}"
    return label + (f"+{r['lever']}" if r.get("lever") else "")


def _baseline_of(r: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    for b in rows:
        same = all(b.get(k) == r.get(k) for k in ("preset", "variant", "loss", "device", "precision"))
        if same and not b.get("lever") and "error" not in b:
            return b
    return None


def _report(rows: list[dict[str, Any]], nvidia_img_s: float | None) -> None:
    header = ["run", "device", "batch", "precision", "img/s", "ms/step", "peak mem", "syncs/step", "vs base"]
    if nvidia_img_s is not None:
        header.append("ours/NVIDIA")
    lines = []
    for r in rows:
        ok = "error" not in r
        line = [row_label(r), r["device"], str(r["batch"]), r["precision"]]
        line += (
            [f"{r['img_per_s']:.1f}", f"{r['ms_per_step']:.1f}", _fmt_mem(r)] if ok else ["failed", "-", "-"]
        )
        line.append(f"{r['host_syncs_per_step']:.1f}" if "host_syncs_per_step" in r else "-")
        base = _baseline_of(r, rows) if r.get("lever") else None
        line.append(f"{r['img_per_s'] / base['img_per_s']:.3f}x" if ok and base else "-")
        if nvidia_img_s is not None:
            ratio = ok and r["preset"] in ("paper256", "paper1024") and r["device"] == "cuda"
            line.append(f"{r['img_per_s'] / nvidia_img_s:.2f}x" if ratio else "-")
        lines.append(line)
    _print_table(header, lines, left=4)

    done = [r for r in rows if "error" not in r]
    if done:
        print("\nmean ms per occurrence of each phase in the measured steps (share of the wall time):")
        header = ["run", *PHASES]
        lines = []
        for r in done:
            cells = []
            for name in PHASES:
                p = r["phases_ms"].get(name) or {"mean": None}
                cells.append("-" if p["mean"] is None else f"{p['mean']:.1f} ({100 * p['share']:.0f}%)")
            lines.append([row_label(r), *cells])
        _print_table(header, lines, left=1)
    for r in rows:
        if "error" in r:
            print(f"\n{row_label(r)} on {r['device']} failed: {r['error']}\n{r.get('log_tail', '')}")
        elif any(not v.startswith("cuda") for v in r.get("ops_impl", {}).values()):
            print(f"\nnote: {row_label(r)} ran the reference ops: {r['ops_impl']}")


def _parse_list(
    value: str, allowed: tuple[str, ...] | dict, what: str, parser: argparse.ArgumentParser
) -> list:
    items = [x.strip() for x in value.split(",") if x.strip()]
    bad = [x for x in items if x not in allowed]
    if bad:
        parser.error(f"--{what}: unknown {', '.join(bad)}; choose from {', '.join(allowed)}")
    return items


def plan_runs(args: argparse.Namespace, has_cuda: bool, parser: argparse.ArgumentParser) -> tuple[list, list]:
    """The rows to measure: every (preset, variant, loss), then each lever on the first (variant, loss)."""
    losses = _parse_list(args.loss, LOSSES, "loss", parser)
    variants = _parse_list(args.variants, VARIANTS, "variants", parser)
    levers = _parse_list(args.levers, LEVERS, "levers", parser) if args.levers else []
    if not losses or not variants:
        parser.error("--loss and --variants need at least one entry each")
    presets = ["smoke", "paper256"] if args.preset == "all" else [args.preset]
    plan, skipped = [], []
    for preset in presets:
        device = args.device
        if preset in ("paper256", "paper1024"):
            if not has_cuda:
                skipped.append({"preset": preset, "reason": f"no GPU: {preset} not measured"})
                continue
            if device == "cpu":
                skipped.append(
                    {"preset": preset, "reason": f"{preset} is GPU-only: not measured with --device cpu"}
                )
                continue
            device = "cuda"
        elif device == "auto":
            device = "cpu"
        for variant in variants:
            cfg = preset_config(preset, args.batch, variant)
            hp = cfg["hparams"]
            cycle = math.lcm(max(hp["r1_interval"], 1), max(hp["pl_interval"], 1))
            steps = args.steps if args.steps is not None else cfg["steps"]
            steps = -(-steps // cycle) * cycle
            warmup = args.warmup if args.warmup is not None else cfg["warmup"]
            runs = [(loss, None) for loss in losses]
            if variant == variants[0]:
                runs += [(losses[0], lever) for lever in levers]
            for loss, lever in runs:
                plan.append(
                    dict(
                        preset=preset,
                        variant=variant,
                        device=device,
                        loss=loss,
                        lever=lever,
                        levers=dict(LEVERS[lever]) if lever else {},
                        precision=args.precision,
                        steps=steps,
                        warmup=warmup,
                        cycle=cycle,
                        config=cfg,
                        nvidia_flags=args.nvidia_flags,
                        threads=args.threads,
                        profile=args.profile if lever in (None, *PROFILED_LEVERS) else 0,
                    )
                )
    return plan, skipped


def _groups(plan: list[dict[str, Any]], one_process: bool = False) -> list[list[dict[str, Any]]]:
    """Worker processes: on a GPU all rows share one (peak memory is reset per row); on the CPU every row
    gets its own (peak RSS cannot be reset). ``one_process``: all rows in one process (CPU peak RSS then
    accumulates)."""
    shared = [s for s in plan if one_process or s["device"] == "cuda"]
    alone = [[s] for s in plan if s not in shared]
    return ([shared] if shared else []) + alone


def _cpu_baseline(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The first smoke row (or spec) on the CPU without a lever: the one compared with NVIDIA's loop."""
    return next(
        (r for r in rows if r["preset"] == "smoke" and r["device"] == "cpu" and not r.get("lever")), None
    )


def _nvidia_cpu_side_by_side(rows: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any] | None:
    """NVIDIA's inner loop (its networks and loss, replicated loop; bench/nvidia_ref.py) on the CPU with the
    steps, warm-up and threads of our smoke rows; None when there is no such row."""
    r = _cpu_baseline(rows)
    if r is None or "error" in r:
        return None
    from bench import nvidia_ref

    if not nvidia_ref.DEFAULT_REF.is_dir():
        print(f"--vs-nvidia-cpu: {nvidia_ref.DEFAULT_REF} not there (NVIDIA's stylegan3, never committed)")
        return {"error": f"{nvidia_ref.DEFAULT_REF} missing"}
    print(f"measuring NVIDIA's inner loop on cpu: {r['warmup']} warm-up + {r['steps']} steps ...", flush=True)
    return nvidia_ref.run_cpu_step_subprocess(
        steps=r["steps"], warmup=r["warmup"], threads=args.threads or torch.get_num_threads()
    )


def _report_nvidia_cpu(rows: list[dict[str, Any]], nvidia: dict[str, Any]) -> None:
    if "error" in nvidia:
        print(f"\nNVIDIA's CPU loop failed: {nvidia['error']}\n{nvidia.get('log_tail', '')}")
        return
    print(
        "\nms per occurrence of each phase, ours vs NVIDIA's inner loop on the same CPU (< 1x: ours faster):"
    )
    header = ["run", "step", *PHASES[:4], "ema"]
    theirs = nvidia["phases_ms"]
    names = (*PHASES[:4], "ema")
    means = [theirs.get(p, {}).get("mean") for p in names]
    lines = [["NVIDIA", f"{nvidia['ms_per_step']:.1f}"] + ["-" if m is None else f"{m:.1f}" for m in means]]
    for r in rows:
        if r["preset"] != "smoke" or "error" in r or r.get("lever"):
            continue
        ph = r["phases_ms"]
        cells = [f"{r['ms_per_step']:.1f} ({r['ms_per_step'] / nvidia['ms_per_step']:.2f}x)"]
        for p, q in (*((p, p) for p in PHASES[:4]), ("ema+log", "ema")):
            a, b = ph.get(p, {}).get("mean"), theirs.get(q, {}).get("mean")
            cells.append("-" if a is None or not b else f"{a:.1f} ({a / b:.2f}x)")
        lines.append([row_label(r), *cells])
        r["ratio_vs_nvidia_cpu_step"] = r["ms_per_step"] / nvidia["ms_per_step"]
    _print_table(header, lines, left=1)


def _round_record(order: str, ours: dict[str, Any], nvidia: dict[str, Any]) -> dict[str, Any]:
    """One paired measurement: step and per-phase ms of ours and NVIDIA's, and their ratios."""
    rec: dict[str, Any] = {"order": order}
    if "error" in ours or "error" in nvidia:
        rec["error"] = ours.get("error") or nvidia.get("error")
        return rec
    rec.update(ours_ms=ours["ms_per_step"], nvidia_ms=nvidia["ms_per_step"])
    rec["ratio"] = ours["ms_per_step"] / nvidia["ms_per_step"]
    rec["phase_ratio"] = {}
    for p in PHASES[:4]:
        a = ours["phases_ms"].get(p, {}).get("mean")
        b = nvidia["phases_ms"].get(p, {}).get("mean")
        if a is not None and b:
            rec["phase_ratio"][p] = a / b
    rec["other_cpu_cores"] = [ours.get("other_cpu_cores"), nvidia.get("other_cpu_cores")]
    return rec


def _more_nvidia_cpu_rounds(
    plan: list[dict[str, Any]], rows: list[dict[str, Any]], nvidia: dict[str, Any], args: argparse.Namespace
) -> list[dict[str, Any]]:
    """Rounds 2..``--rounds`` of the CPU side-by-side: our smoke baseline row and NVIDIA's loop measured
    again, each in a fresh process, NVIDIA first in even rounds (drift then favours neither side)."""
    first = _cpu_baseline(rows)
    if first is None or "error" in nvidia:
        return []
    rounds = [_round_record("ours first", first, nvidia)]
    spec = dict(_cpu_baseline(plan), profile=0)
    for i in range(2, args.rounds + 1):
        print(f"round {i} of {args.rounds} ...", flush=True)
        nvidia_first = i % 2 == 0
        if nvidia_first:
            theirs = _nvidia_cpu_side_by_side(rows, args) or {"error": "not measured"}
        ours = _measure_group([spec], args.verbose, None)[0]
        if not nvidia_first:
            theirs = _nvidia_cpu_side_by_side(rows, args) or {"error": "not measured"}
        rounds.append(_round_record("NVIDIA first" if nvidia_first else "ours first", ours, theirs))
    return rounds


def _report_rounds(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Print every round and the median ratios; returns the summary stored in the JSON."""
    print("\nstep time, ours vs NVIDIA's inner loop, round by round (< 1x: ours faster):")
    lines = []
    for i, r in enumerate(rounds, 1):
        if "error" in r:
            lines.append([str(i), r["order"], "failed", "", "", "", "", "", ""])
            continue
        phases = [f"{r['phase_ratio'][p]:.2f}x" if p in r["phase_ratio"] else "-" for p in PHASES[:4]]
        lines.append(
            [
                str(i),
                r["order"],
                f"{r['ours_ms']:.1f}",
                f"{r['nvidia_ms']:.1f}",
                f"{r['ratio']:.3f}x",
                *phases,
            ]
        )
    _print_table(["round", "order", "ours ms", "NVIDIA ms", "ratio", *PHASES[:4]], lines, left=2)
    good = [r for r in rounds if "error" not in r]
    if not good:
        return {}
    ratios = [r["ratio"] for r in good]
    summary = {
        "rounds": len(good),
        "ratio_median": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "phase_ratio_median": {
            p: statistics.median(r["phase_ratio"][p] for r in good if p in r["phase_ratio"])
            for p in PHASES[:4]
            if any(p in r["phase_ratio"] for r in good)
        },
    }
    print(
        f"median step ratio {summary['ratio_median']:.3f}x over {len(good)} rounds "
        f"(range {summary['ratio_min']:.3f}-{summary['ratio_max']:.3f}x)"
    )
    return summary


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--count-ops" in argv:  # the CPU proxy of the GPU's host overhead: bench/opcount.py
        from bench.opcount import main as count_ops

        return count_ops([a for a in argv if a != "--count-ops"])
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="auto: paper256 on the GPU (skipped without one), smoke on the CPU",
    )
    parser.add_argument("--preset", choices=["all", "smoke", "paper256", "paper1024"], default="all")
    parser.add_argument("--loss", default=",".join(LOSSES), help="comma-separated: rooted, logistic")
    parser.add_argument(
        "--variants",
        default="fp16",
        help="comma-separated: fp16 (the preset's fp16 layers, as NVIDIA's networks), fp32 (no fp16 layers)",
    )
    parser.add_argument(
        "--levers",
        default="",
        help="comma-separated speed levers, each measured alone on the first loss and variant: "
        + ", ".join(LEVERS),
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="measured steps (default: smoke 16, paper256 64; rounded up to whole R1/path-length cycles)",
    )
    parser.add_argument(
        "--warmup", type=int, default=None, help="untimed steps first (default: smoke 4, paper256 16)"
    )
    parser.add_argument(
        "--batch", type=int, default=None, help="per-device batch (default: smoke 8, paper256 32)"
    )
    parser.add_argument(
        "--precision",
        choices=["32", "bf16-mixed", "16-mixed"],
        default="32",
        help="Lightning precision (32 keeps the networks' own fp16 layers, as NVIDIA)",
    )
    parser.add_argument(
        "--nvidia-flags",
        action="store_true",
        help="cudnn.benchmark on, TF32 off (what NVIDIA's training loop sets) for every row",
    )
    parser.add_argument(
        "--nvidia-sec-per-kimg",
        type=float,
        default=None,
        help="NVIDIA train.py's sec/kimg for the same preset and batch on the same GPU: "
        "adds the ratio ours/NVIDIA to the paper256 rows",
    )
    parser.add_argument("--nvidia-gpumem-gb", type=float, default=None, help="NVIDIA's gpumem, for the JSON")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="stop measuring after this many seconds (rows left: errors)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON output (default {DEFAULT_OUT})")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads in the workers (default: torch's own)"
    )
    parser.add_argument(
        "--vs-nvidia-cpu",
        action="store_true",
        help="also time NVIDIA's inner loop on the CPU (bench/nvidia_ref.py cpu-step; needs .ref/stylegan3) "
        "with the same steps and threads, and print the per-phase split side by side",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="with --vs-nvidia-cpu: measure ours and NVIDIA's loop this many times, alternating which goes "
        "first, and report the median ratio (a shared CPU drifts by several %% between runs)",
    )
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        help="after the measured steps, profile this many more steps of each baseline and ref_* row",
    )
    parser.add_argument(
        "--one-process",
        action="store_true",
        help="measure the CPU rows in one process too (faster; the peak RSS column then accumulates)",
    )
    parser.add_argument("--verbose", action="store_true", help="show the workers' Lightning output")
    parser.add_argument("--worker", nargs=2, metavar=("SPEC", "RESULT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        run_worker_specs(json.loads(Path(args.worker[0]).read_text()), Path(args.worker[1]))
        return 0

    for name in ("steps", "warmup", "batch", "threads", "rounds"):
        value = getattr(args, name)
        if value is not None and value < (0 if name == "warmup" else 1):
            parser.error(f"--{name} must be >= {0 if name == 'warmup' else 1}, got {value}")
    if args.nvidia_sec_per_kimg is not None and args.nvidia_sec_per_kimg <= 0:
        parser.error("--nvidia-sec-per-kimg must be > 0")
    has_cuda = torch.cuda.is_available()
    if args.device == "cuda" and not has_cuda:
        print("no GPU: --device cuda needs a CUDA build of torch and a GPU", file=sys.stderr)
        return 2

    info = machine_info()
    try:
        import lightning

        info["lightning"] = lightning.__version__
    except ImportError:
        pass
    print(f"CPU: {info['cpu']} ({info['cpu_cores_usable']} cores), torch {info['torch']}", end="")
    print(f", GPU: {info['gpu']} (CUDA {info['cuda']})" if info["gpu"] else ", no GPU")

    plan, skipped = plan_runs(args, has_cuda, parser)
    for s in skipped:
        print(s["reason"])
    if not plan:
        print("nothing to measure: no JSON written")
        return 0
    start = time.perf_counter()
    rows = []
    for group in _groups(plan, args.one_process):
        timeout = None
        if args.budget_s is not None:
            timeout = args.budget_s - (time.perf_counter() - start)
        for spec in group:
            cfg = spec["config"]
            print(
                f"measuring {row_label(spec)} on {spec['device']}: batch {cfg['batch']}, "
                f"{spec['warmup']} warm-up + {spec['steps']} steps ...",
                flush=True,
            )
        load = os.getloadavg()
        if timeout is not None and timeout <= 5:
            results = [{"error": "not measured: time budget spent"} for _ in group]
        else:
            results = _measure_group(group, args.verbose, timeout)
        for spec, result in zip(group, results, strict=True):
            result["loadavg_before"] = [round(x, 2) for x in load]
            keys = ("preset", "variant", "device", "loss", "lever", "levers", "precision", "steps", "warmup")
            rows.append({k: spec[k] for k in keys} | {"batch": spec["config"]["batch"], **result})
            rows[-1]["config"] = spec["config"]
        # the rows so far, so that a caller's timeout (the GPU check) still leaves the finished ones
        write_json(args.out, {"machine": info, "partial": True, "results": rows, "skipped": skipped})
    nvidia_cpu = _nvidia_cpu_side_by_side(rows, args) if args.vs_nvidia_cpu else None
    rounds = _more_nvidia_cpu_rounds(plan, rows, nvidia_cpu, args) if nvidia_cpu else []
    print()
    nvidia_img_s = 1000 / args.nvidia_sec_per_kimg if args.nvidia_sec_per_kimg else None
    _report(rows, nvidia_img_s)
    if nvidia_cpu:
        _report_nvidia_cpu(rows, nvidia_cpu)
        if len(rounds) > 1:
            nvidia_cpu["rounds"] = rounds
            nvidia_cpu["rounds_summary"] = _report_rounds(rounds)
    for r in rows:  # another load on the CPU, or whole cycles of very different length
        if "error" in r:
            continue
        others, best, overall = r.get("other_cpu_cores"), r["img_per_s_best_cycle"], r["img_per_s"]
        if (others is not None and others > 0.25) or best > 1.5 * overall:
            busy = f"other processes kept {others:.1f} cores busy, " if others is not None else ""
            hint = "; on a shared CPU --threads 1 is steadier" if r["torch_threads"] > 1 else ""
            print(
                f"\nnote: {row_label(r)} was disturbed ({busy}best cycle {best:.1f} img/s vs "
                f"{overall:.1f} overall): rerun on a quiet machine{hint}"
            )
    nvidia = None
    if args.nvidia_sec_per_kimg is not None or args.nvidia_gpumem_gb is not None:
        nvidia = {
            "sec_per_kimg": args.nvidia_sec_per_kimg,
            "img_per_s": nvidia_img_s,
            "gpumem_gib": args.nvidia_gpumem_gb,
        }
        for r in rows:
            if "error" not in r and r["preset"] == "paper256" and nvidia_img_s:
                r["ratio_vs_nvidia"] = r["img_per_s"] / nvidia_img_s
    record = {
        "machine": info,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "worker"},
        "env": {k: os.environ[k] for k in ("STYLEGAN_OPS_IMPL", "OMP_NUM_THREADS") if k in os.environ},
        "results": rows,
        "skipped": skipped,
        "nvidia": nvidia,
        "nvidia_cpu": nvidia_cpu,
    }
    write_json(args.out, record)
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
