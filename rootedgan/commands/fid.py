"""``rootedgan fid``: FID / KID of a network or an image folder against a reference data set (README
"FID / KID"); the work is :func:`rootedgan.metrics.score.score`.
"""

from __future__ import annotations

import argparse

from rootedgan.commands import add_options, options_from

HELP = "FID/KID of a network or an image folder against a data set (NVIDIA's or clean-fid's protocol)."
MODES = ("legacy_tensorflow", "clean", "fast")  # rootedgan.metrics.MODES, without importing it for --help


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="reference images (folder or zip) or statistics (.npz)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--network", help="checkpoint path, URL or shortcut name of the generator")
    source.add_argument("--images", help="folder or zip of images to score instead of a network")
    parser.add_argument(
        "--metrics",
        default="fid50k_full",
        help="comma-separated: fidNk_full, kidNk_full, optionally prefixed by the protocol "
        "(clean_fid50k_full); default fid50k_full",
    )
    parser.add_argument("--mirror", action="store_true", help="add x-flipped copies of the reference images")
    parser.add_argument("--num-gen", type=int, help="generated (or used) images, overrides N")
    parser.add_argument("--inception", help="NVIDIA's inception-2015-12-05.pt (offline use)")
    add_options(parser, "--device")
    parser.add_argument(
        "--mode",
        choices=MODES,
        help="FID protocol: legacy_tensorflow = NVIDIA's (default; comparable with published StyleGAN "
        "FIDs; names fid50k_full...), clean = clean-fid's (clean_fid50k_full...), fast = an approximation "
        "of clean on the device (approx_clean_fid50k_full...); default: the protocol the metric names "
        "state, else legacy_tensorflow",
    )
    parser.add_argument("--bf16", action="store_true", help="Inception in bf16 (fast mode only)")
    parser.add_argument("--resolution", type=int, help="reference resolution (default: G's)")
    add_options(parser, "--which", "--trunc", "--base", "--noise-mode", noise_mode={"default": "random"})
    parser.add_argument("--seed", type=int, default=0, help="seed of the latents and of the KID subsets")
    parser.add_argument("--batch", type=int, default=64, help="images per generator/Inception batch")
    parser.add_argument(
        "--workers", type=int, help="CPU workers for decoding and resizing (default: min(4, usable cores))"
    )
    parser.add_argument("--outdir", help="where metric-*.jsonl go (default: the network's folder)")
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write cached statistics")
    parser.add_argument("--no-download", action="store_true", help="never download the Inception file")


def run(args: argparse.Namespace) -> int:
    # rootedgan.metrics imports SciPy and torchmetrics: loaded here, not for `rootedgan --help`
    from rootedgan.metrics.evaluator import format_time
    from rootedgan.metrics.score import ScoreOptions, score

    scores = score(options_from(args, ScoreOptions))
    for name, value in scores.results.items():
        print(f"{name}: {value:.6g}")
    print(f"({format_time(scores.seconds)}; results appended to {scores.outdir}/metric-*.jsonl)")
    return 0
