"""A CPU proxy of the GPU's host overhead: aten operator calls and tensor allocations per training phase,
ours against NVIDIA's training loop on the same preset.

    python bench/opcount.py [--preset smoke] [--loss logistic] [--levers sync_free] [--out JSON]
    python bench/train.py --count-ops ...                   # the same

On a GPU, every operator call is a kernel launch the host must issue, and every allocation goes through the
caching allocator, so these counts are what the GPU's idle gaps are made of; on the CPU they can be counted
exactly, without a GPU. Counted with a ``TorchDispatchMode`` below autograd (forward, backward, double
backward and optimizer alike) over one whole R1 / path-length cycle after warm-up, per phase: ``Gmain``,
``Greg``, ``Dmain``, ``Dreg`` and the EMA update. An allocation is an output tensor whose storage is not one
of the operator's inputs'. NVIDIA's loop is the CPU replica of its inner loop in ``bench/nvidia_ref.py``
(its code from the ignored ``.ref/stylegan3``; the column is left out when that folder is missing).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import weakref
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

PHASES = ("Gmain", "Greg", "Dmain", "Dreg", "ema")


class OpCounter(TorchDispatchMode):
    """Counts aten calls and fresh output storages per phase (``with counter.phase(name):``), from the step
    after the ``warmup``-th EMA update on (the EMA ends every step, in both loops)."""

    def __init__(self, warmup: int) -> None:
        super().__init__()
        self.warmup = warmup
        self.ops: Counter[str] = Counter()
        self.allocs: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()
        self.peak: Counter[str] = Counter()  # the most bytes alive in the phase, over its calls
        self.live = 0  # bytes of the storages allocated while counting that are still alive
        self._tracked: set[int] = set()
        self._emas = 0
        self._name: str | None = None

    @contextlib.contextmanager
    def phase(self, name: str):
        counting = self._emas >= self.warmup
        self._emas += name == "ema"
        if not counting:
            yield
            return
        self._name, self.calls[name] = name, self.calls[name] + 1
        with self:
            yield
        self._name = None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if self._name is not None:
            inputs = {
                t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0] if _is_tensor(t)
            }
            outputs = [t for t in tree_flatten(out)[0] if _is_tensor(t)]
            fresh = {t.untyped_storage().data_ptr(): t.untyped_storage() for t in outputs}
            fresh = {ptr: s for ptr, s in fresh.items() if ptr not in inputs}
            self.ops[self._name] += 1
            self.allocs[self._name] += sum(t.untyped_storage().data_ptr() not in inputs for t in outputs)
            for ptr, storage in fresh.items():
                if ptr not in self._tracked:
                    self._tracked.add(ptr)
                    self.live += storage.nbytes()
                    weakref.finalize(storage, self._freed, ptr, storage.nbytes())
            self.peak[self._name] = max(self.peak[self._name], self.live)
        return out

    def _freed(self, ptr: int, nbytes: int) -> None:
        self._tracked.discard(ptr)
        self.live -= nbytes

    def per_phase(self) -> dict[str, dict[str, float]]:
        """Mean operator calls and allocations per call of each phase, and per step in total; ``peak_mib``:
        the most memory held by tensors allocated in the counted cycle (activations kept for backward,
        temporaries, gradients) during the phase, MiB; for the step, the most over all phases."""
        out = {
            name: {
                "ops": self.ops[name] / self.calls[name],
                "allocs": self.allocs[name] / self.calls[name],
                "peak_mib": self.peak[name] / 2**20,
            }
            for name in PHASES
            if self.calls[name]
        }
        steps = max(self.calls["ema"], 1)
        out["step"] = {
            "ops": sum(self.ops.values()) / steps,
            "allocs": sum(self.allocs.values()) / steps,
            "peak_mib": max(self.peak.values(), default=0) / 2**20,
        }
        return out


def _is_tensor(x: Any) -> bool:
    return isinstance(x, torch.Tensor) and x.numel() > 0


def _counted(counter: OpCounter, name: str, method: Any) -> Any:
    def counted(*args: Any, **kwargs: Any) -> Any:
        with counter.phase(name):
            return method(*args, **kwargs)

    return counted


def count_ours(
    preset: str, loss: str, levers: dict[str, Any], cycle: int, batch: int | None = None
) -> dict[str, dict[str, float]]:
    """Ours through Lightning's loop: one R1 / path-length cycle of warm-up, one counted."""
    from bench.train import preset_config
    from rootedgan.training.module import FinetuneModule
    from rootedgan.training.settings import migrate
    from tests.conftest import fit_batches

    cfg = preset_config(preset, batch)
    torch.manual_seed(0)
    module = FinetuneModule(g_kwargs=cfg["g_kwargs"], d_kwargs=cfg["d_kwargs"], total_kimg=1e9,
                            **migrate({"loss": loss, **cfg["hparams"]}), speed=levers)  # fmt: skip
    counter = OpCounter(warmup=cycle)
    for name in ("Gmain", "Greg", "Dmain", "Dreg"):
        method = getattr(module, f"_phase_{name.lower()}")
        setattr(module, f"_phase_{name.lower()}", _counted(counter, name, method))
    module._update_ema = _counted(counter, "ema", module._update_ema)
    res, batch = cfg["g_kwargs"]["img_resolution"], cfg["batch"]
    gen = torch.Generator().manual_seed(1)
    img = torch.randint(0, 256, (batch, 3, res, res), dtype=torch.uint8, generator=gen)
    fit_batches(module, [(img, torch.zeros(batch, 0))] * (2 * cycle))
    return counter.per_phase()


def count_nvidia(preset: str, cycle: int, batch: int | None = None) -> dict[str, dict[str, float]] | None:
    """NVIDIA's inner loop (CPU replica), the same cycle of warm-up and the same counted cycle."""
    from bench.nvidia_ref import DEFAULT_REF, nvidia_cpu_step_times

    if not Path(DEFAULT_REF).is_dir():
        return None
    counter = OpCounter(warmup=cycle)
    nvidia_cpu_step_times(steps=cycle, warmup=cycle, preset=preset, phase_context=counter.phase, batch=batch)
    return counter.per_phase()


def main(argv: list[str] | None = None) -> int:
    import math

    from bench.common import machine_info, write_json
    from bench.train import preset_config

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=["smoke", "paper256"], default="smoke")
    parser.add_argument("--batch", type=int, default=None, help="replaces the preset's batch")
    parser.add_argument("--loss", default="logistic", help="ours: logistic or rooted (NVIDIA's is logistic)")
    parser.add_argument("--levers", default="", help="ours: comma list of model.speed levers, e.g. sync_free")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "opcount-cpu.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    cfg = preset_config(args.preset, args.batch)
    hp = cfg["hparams"]
    cycle = math.lcm(max(hp["r1_interval"], 1), max(hp["pl_interval"], 1))
    levers = {name: True for name in args.levers.split(",") if name}
    ours = count_ours(args.preset, args.loss, levers, cycle, args.batch)
    nvidia = count_nvidia(args.preset, cycle, args.batch)
    print(
        f"aten operator calls, tensor allocations and peak memory per call of each phase ({args.preset}, "
        f"batch {cfg['batch']}, CPU, one counted cycle of {cycle} steps after one of warm-up; "
        f"ours: {args.loss} {args.levers})"
    )
    columns = (("ops", "ops ours", 9), ("allocs", "allocs ours", 12), ("peak_mib", "peak MiB ours", 14))
    print(" ".join(["phase".ljust(8)] + [f"{h:>{w}} {'NVIDIA':>8} {'ratio':>6}" for _, h, w in columns]))
    for name, row in ours.items():
        theirs = (nvidia or {}).get(name)
        cells = [f"{name:<8}"]
        for key, _, width in columns:
            cells.append(f"{row[key]:>{width}.0f}")
            cells += (
                [f"{theirs[key]:>8.0f}", f"{row[key] / theirs[key]:>6.2f}"]
                if theirs and theirs[key]
                else ["-".rjust(8), "-".rjust(6)]
            )
        print(" ".join(cells))
    record = {
        "machine": machine_info(),
        "preset": args.preset,
        "batch": cfg["batch"],
        "loss": args.loss,
        "levers": levers,
        "cycle_steps": cycle,
        "ours": ours,
        "nvidia": nvidia,
    }
    write_json(args.out, record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
