"""Orthogonal finetuning vs full finetuning: trainable G parameters and training step time.

    OMP_NUM_THREADS=1 python bench/orthogonal.py [--device cpu|cuda] [--preset smoke|paper256]
        [--variants full,cayley,...] [--repeats 2] [--steps N] [--warmup N] [--threads N]
        [--out bench/results/orthogonal.json]

Step time is measured by ``bench/train.py``'s worker (a real ``lightning.Trainer`` driving
``FinetuneModule.training_step`` on in-memory batches, each measurement in a fresh process, whole R1/path
length cycles) with the module's ``mode``/``orthogonal`` arguments added. The ``smoke`` preset has the
architecture and hyperparameters of ``configs/smoke.yaml`` / the tiny32 fixture (32 px, channel_base 1024,
channel_max 64, batch 8) with random weights: the time of a step does not depend on the weights' values.
Variants (``--variants``):

* ``full``: every G parameter trains (the default mode);
* ``cayley``, ``neumann``, ``gram_schmidt``: orthogonal mode with that parameterization, the default layers
  (``synthesis.*.conv0/conv1``), block size 32, COFT eps 0.5 (the projection runs after each G step);
* ``cayley-shared``: one shared block per layer.

``--repeats`` runs the whole list several times in alternating order and reports the median (and the
fastest run), which keeps drift on a shared machine from favouring one variant; ``other_cpu_cores`` in the
JSON says how busy the machine was. Trainable-parameter counts are also given for
StyleGAN2 configurations that are too large to time here (256 and 1024 px; built, counted, not trained).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from bench.common import machine_info, write_json  # noqa: E402
from bench.train import _measure, preset_config  # noqa: E402

DEFAULT_OUT = REPO / "bench" / "results" / "orthogonal.json"
BASE_ORTHOGONAL = dict(block_size=32, eps=0.5, log_every=50)
VARIANTS: dict[str, dict[str, Any] | None] = {
    "full": None,
    "cayley": dict(parameterization="cayley"),
    "neumann": dict(parameterization="neumann", neumann_terms=5),
    "gram_schmidt": dict(parameterization="gram_schmidt"),
    "cayley-shared": dict(parameterization="cayley", shared=True),
}
# Architectures only counted (G constructor kwargs); 1024 px is NVIDIA's FFHQ config-f.
COUNT_ONLY = {
    "stylegan2-256 (paper256)": dict(
        z_dim=512, c_dim=0, w_dim=512, img_resolution=256, img_channels=3, mapping_kwargs=dict(num_layers=8),
        synthesis_kwargs=dict(channel_base=16384, channel_max=512),
    ),
    "stylegan2-1024 (ffhq config-f)": dict(
        z_dim=512, c_dim=0, w_dim=512, img_resolution=1024, img_channels=3, mapping_kwargs=dict(num_layers=8),
        synthesis_kwargs=dict(channel_base=32768, channel_max=512),
    ),
}  # fmt: skip


def module_kwargs(variant: str) -> dict[str, Any]:
    """``FinetuneModule`` arguments that select the variant."""
    extra = VARIANTS[variant]
    if extra is None:
        return {"mode": "full"}
    return {"mode": "orthogonal", "orthogonal": {**BASE_ORTHOGONAL, **extra}}


def count_params(g_kwargs: dict[str, Any], variant: str) -> dict[str, int]:
    """Total G parameters and those that train (``g_params``) for a variant, on a randomly built G."""
    from rootedgan.networks import Generator
    from rootedgan.training.orthogonal import OrthogonalConfig, OrthogonalFinetune

    torch.manual_seed(0)
    G = Generator(**g_kwargs)
    total = sum(p.numel() for p in G.parameters())
    kwargs = module_kwargs(variant)
    if kwargs["mode"] == "full":
        return {"g_total": total, "g_trainable": total}
    G_ema = Generator(**g_kwargs)
    orth = OrthogonalFinetune(OrthogonalConfig.from_any(kwargs["orthogonal"]), G, G_ema, base=None)
    rotated = sum(G.get_submodule(n).parametrizations.weight.original.numel() for n in orth.layers)
    return {
        "g_total": total,
        "g_trainable": sum(p.numel() for p in orth.parameters(G)),
        "rotated_weights": rotated,
        "rotated_layers": len(orth.layers),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--preset", choices=["smoke", "paper256"], default="smoke")
    parser.add_argument("--variants", default="full,cayley,neumann,gram_schmidt,cayley-shared")
    parser.add_argument("--repeats", type=int, default=2, help="runs of the whole list (median reported)")
    parser.add_argument("--steps", type=int, default=None, help="measured steps (default: the preset's)")
    parser.add_argument(
        "--warmup", type=int, default=None, help="untimed steps first (default: the preset's)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads in the workers")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--verbose", action="store_true", help="show the workers' Lightning output")
    args = parser.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if not variants or any(v not in VARIANTS for v in variants):
        parser.error(f"--variants must list some of {', '.join(VARIANTS)}, got {args.variants!r}")
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no GPU: --device cuda needs a CUDA build of torch and a GPU", file=sys.stderr)
        return 2

    info = machine_info()
    print(f"CPU: {info['cpu']} ({info['cpu_cores_usable']} cores), torch {info['torch']}, GPU: {info['gpu']}")
    cfg = preset_config(args.preset, None)
    hp = cfg["hparams"]
    cycle = math.lcm(max(hp["r1_interval"], 1), max(hp["pl_interval"], 1))
    steps = args.steps if args.steps is not None else cfg["steps"]
    steps = -(-steps // cycle) * cycle
    warmup = args.warmup if args.warmup is not None else cfg["warmup"]

    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    for rep in range(args.repeats):
        order = variants if rep % 2 == 0 else variants[::-1]
        for variant in order:
            print(f"measuring {variant} (run {rep + 1}/{args.repeats}) ...", flush=True)
            config = {**cfg, "hparams": {**hp, **module_kwargs(variant)}}
            spec = dict(
                preset=args.preset, device=args.device, loss="rooted", precision="32", steps=steps,
                warmup=warmup, cycle=cycle, config=config, nvidia_flags=False, threads=args.threads,
            )  # fmt: skip
            result = _measure(spec, args.verbose)
            if "error" in result:
                print(f"{variant} failed: {result['error']}\n{result.get('log_tail', '')}")
                return 1
            runs[variant].append(result)

    rows = []
    for variant in variants:
        ms = [r["ms_per_step"] for r in runs[variant]]
        phases = {
            name: statistics.median(r["phases_ms"][name]["mean"] or 0.0 for r in runs[variant])
            for name in ("Gmain", "Greg", "Dmain", "Dmain+Dreg")
        }
        row = {
            "variant": variant,
            "module_kwargs": module_kwargs(variant),
            **count_params(cfg["g_kwargs"], variant),
            "ms_per_step_median": statistics.median(ms),
            "ms_per_step_min": min(ms),
            "ms_per_step_runs": ms,
            "phase_ms_median": phases,
            "other_cpu_cores": [r.get("other_cpu_cores") for r in runs[variant]],
            "nonfinite_phases": [r["nonfinite_phases"] for r in runs[variant]],
        }
        rows.append(row)
    full = next((r for r in rows if r["variant"] == "full"), None)
    header = f"{'variant':<14} {'trainable G':>12} {'share':>7} {'ms/step':>9} {'vs full':>8} {'min':>7}"
    header += "  Gmain / Greg / Dmain ms"
    print("\n" + header + "\n" + "-" * len(header))
    for r in rows:
        share = r["g_trainable"] / r["g_total"]
        ratio = f"{r['ms_per_step_median'] / full['ms_per_step_median']:.2f}x" if full else "-"
        p = r["phase_ms_median"]
        ms = r["ms_per_step_median"]
        print(
            f"{r['variant']:<14} {r['g_trainable']:>12,} {100 * share:>6.1f}% {ms:>9.1f} {ratio:>8} "
            f"{r['ms_per_step_min']:>7.1f}  {p['Gmain']:.0f} / {p['Greg']:.0f} / {p['Dmain']:.0f}"
        )

    counts = {}
    for name, g_kwargs in COUNT_ONLY.items():
        counts[name] = {v: count_params(g_kwargs, v) for v in ("full", "cayley", "cayley-shared")}
        c = counts[name]
        total, trained = c["full"]["g_total"], c["cayley"]["g_trainable"]
        print(
            f"\n{name}: G {total:,} parameters; orthogonal (block 32) trains {trained:,} "
            f"({100 * trained / total:.2f}%), shared {c['cayley-shared']['g_trainable']:,}"
        )
    record = {
        "machine": info,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "env": {k: os.environ[k] for k in ("OMP_NUM_THREADS",) if k in os.environ},
        "preset": args.preset,
        "steps": steps,
        "warmup": warmup,
        "results": rows,
        "param_counts_only": counts,
    }
    write_json(args.out, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
