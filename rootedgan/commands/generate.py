"""``rootedgan generate``: images or one sample grid from any supported checkpoint.

Seeds follow NVIDIA's generate.py (``z = RandomState(seed).randn(1, z_dim)``), so the same seed gives
the same image as NVIDIA's tool on the same network. ``--projected-w projected_w.npz`` renders the ``w``
vectors of a projection (``rootedgan project``, NVIDIA's projector) instead: ``proj00.png``, ...
"""

from __future__ import annotations

import argparse

import torch

from rootedgan.commands import add_options
from rootedgan.errors import UserError
from rootedgan.imaging import check_grid_pixels, ensure_writable_dir, grid_shape, write_images
from rootedgan.sampling import (  # noqa: F401 - seed_latents re-exported (tests import it from here)
    check_ops_setting,
    check_truncation,
    generate_images,
    load_generator,
    parse_seeds,
    resolve_device,
    seed_latents,
    synthesize_ws,
)
from rootedgan.tools.projector import read_projected_w

HELP = "Generate images or a sample grid from a network (NVIDIA .pkl, rosinality .pt, native, URL)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_options(parser, "--network")
    parser.add_argument("--seeds", default=None, help="seeds, e.g. 0-63,100")
    parser.add_argument(
        "--projected-w",
        default=None,
        metavar="NPZ",
        help="render the w vectors of a projected_w.npz (`rootedgan project`, NVIDIA's projector) instead of "
        "seeds: proj00.png, proj01.png, ... (--trunc and --class do not apply)",
    )
    add_options(parser, "--trunc")
    parser.add_argument("--trunc-cutoff", type=int, default=None, help="truncate only the first N ws")
    add_options(parser, "--class", "--noise-mode", "--outdir")
    parser.add_argument("--grid", default=None, help="write one grid PNG instead: ROWSxCOLS or 'auto'")
    parser.add_argument("--batch", type=int, default=16, help="images per forward pass")
    add_options(parser, "--device", "--which", "--base")


def run(args: argparse.Namespace) -> int:
    projected = args.projected_w is not None  # render the w of a projection, as NVIDIA's generate.py does
    if projected:
        if args.seeds is not None:
            print("note: --seeds is ignored with --projected-w (as in NVIDIA's generate.py)")
        if args.trunc != 1.0 or args.trunc_cutoff is not None or args.class_idx is not None:
            print("note: --trunc, --trunc-cutoff and --class do not apply to projected w vectors (ignored)")
    elif args.seeds is None:
        raise UserError("give --seeds (e.g. 0-63,100) or --projected-w projected_w.npz")
    else:
        seeds = parse_seeds(args.seeds)
        check_truncation(args.trunc, args.trunc_cutoff)
    check_ops_setting()
    if args.batch < 1:
        raise UserError("--batch must be >= 1")
    grid = None if projected else grid_shape(args.grid, len(seeds))
    outdir = ensure_writable_dir(args.outdir)
    device = resolve_device(args.device)
    G = load_generator(args.network, args.which, args.base)
    if projected:
        ws = torch.from_numpy(read_projected_w(args.projected_w, G.num_ws, G.w_dim))
        grid, count, what = grid_shape(args.grid, len(ws)), len(ws), "projections"
        synthesized = synthesize_ws(G, ws, noise_mode=args.noise_mode, batch_size=args.batch, device=device)
        images = ((f"proj{i:02d}.png", arr) for i, arr in enumerate(synthesized))
    else:
        count, what = len(seeds), "images"
        kw = dict(class_idx=args.class_idx, noise_mode=args.noise_mode, batch_size=args.batch, progress=True)
        generated = generate_images(G, seeds, args.trunc, args.trunc_cutoff, device=device, **kw)
        images = ((f"seed{seed:04d}.png", arr) for seed, arr in generated)
    check_grid_pixels(grid, G.img_resolution)
    path = write_images(images, outdir, grid)
    if grid is None:
        print(f"wrote {count} images{' (proj00.png ...)' if projected else ''} to {outdir}")
    else:
        print(f"wrote a {grid[0]}x{grid[1]} grid of {count} {what} to {path}")
    return 0
