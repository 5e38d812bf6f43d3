"""``rootedgan landscape``: probe the alpha-beta condition (arXiv 2410.12455) along saved snapshots, with D
frozen at one snapshot (:mod:`rootedgan.tools.landscape`); writes ``landscape.json`` and ``landscape.png``
and says which D was frozen and where the loss came from.
"""

from __future__ import annotations

import argparse

from rootedgan.commands import options_from

HELP = "Probe the alpha-beta landscape condition along a run's snapshots (writes landscape.json/.png)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--snapshots", required=True, help="glob of native snapshots x_0..x_K (sorted by name)"
    )
    parser.add_argument("--d-snapshot", help="snapshot whose D is frozen (default: the last)")
    parser.add_argument(
        "--loss", help="generator loss: rooted:K or logistic (default: the loss recorded in the snapshots)"
    )
    parser.add_argument("--compare", help="glob of a second run's snapshots")
    parser.add_argument(
        "--compare-loss", help="loss of the --compare run (default: recorded in its snapshots)"
    )
    parser.add_argument("--compare-d-snapshot", help="frozen D for the --compare run")
    parser.add_argument("--batch", type=int, default=16, help="latents per step")
    parser.add_argument("--seed", type=int, default=0, help="seed of the per-step latents")
    parser.add_argument("--steps-per-snapshot", type=int, default=1, help="mini-batches per snapshot")
    parser.add_argument("--which", choices=["G", "G_ema"], default="G", help="generator to probe")
    parser.add_argument("--alpha-max", type=float, default=50.0, help="alpha/beta grid goes 0..alpha-max")
    parser.add_argument("--grid", type=int, default=201, help="grid points per axis")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", required=True, help="output folder")


def run(args: argparse.Namespace) -> int:
    from rootedgan.tools.landscape import LandscapeOptions, landscape_report  # ~0.1 s: not for --help

    report, json_path, png_path = landscape_report(options_from(args, LandscapeOptions, network=args.which))
    for name, entry in report["runs"].items():
        s = entry["summary"]
        best = s["smallest_feasible_alpha"]
        best_txt = f"alpha={best['alpha']:.4g} at beta={best['beta']:.4g}" if best else "none on the grid"
        print(
            f"{name}: {s['steps']} steps, feasible cells {s['feasible_cells']}, smallest feasible alpha "
            f"(infimum; alpha > beta strictly) {best_txt}"
        )
        print(f"  loss {name.split('(', 1)[1].rstrip(')')} ({entry['loss_source']}). {entry['d_frozen']}")
    print(f"wrote {json_path} and {png_path}")
    return 0
