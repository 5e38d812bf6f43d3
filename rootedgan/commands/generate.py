"""``rootedgan generate``: images or one sample grid from any supported checkpoint, with NVIDIA's seeds
(:mod:`rootedgan.sampling`), or the ``w`` of a projection (``--projected-w``) as ``proj00.png``, ...
"""

from __future__ import annotations

import argparse

import torch

from rootedgan import sampling
from rootedgan.commands import add_options
from rootedgan.errors import UserError
from rootedgan.imaging import check_grid_pixels, ensure_writable_dir, grid_shape, write_images
from rootedgan.tools.projector import read_projected_w

PROJECTED_W_HELP = (
    "render the w vectors of a projected_w.npz (`rootedgan project`, NVIDIA's projector) instead of seeds: "
    "proj00.png, proj01.png, ... (--trunc and --class do not apply)"
)
HELP = "Generate images or a sample grid from a network (NVIDIA .pkl, rosinality .pt, native, URL)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_options(parser, "--network")
    parser.add_argument("--seeds", help="seeds, e.g. 0-63,100")
    parser.add_argument("--projected-w", metavar="NPZ", help=PROJECTED_W_HELP)
    add_options(parser, "--trunc")
    parser.add_argument("--trunc-cutoff", type=int, help="truncate only the first N ws")
    add_options(parser, "--class", "--noise-mode", "--outdir")
    parser.add_argument("--grid", help="write one grid PNG instead: ROWSxCOLS or 'auto'")
    parser.add_argument("--batch", type=int, default=16, help="images per forward pass")
    parser.add_argument("--max-images", type=int, default=1000, help="most w a --projected-w file may hold")
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
        seeds = sampling.parse_seeds(args.seeds)
        sampling.check_truncation(args.trunc, args.trunc_cutoff)
    sampling.check_ops_setting()
    if args.batch < 1:
        raise UserError("--batch must be >= 1")
    grid = None if projected else grid_shape(args.grid, len(seeds))
    outdir = ensure_writable_dir(args.outdir)
    options = dict(
        noise_mode=args.noise_mode, batch_size=args.batch, device=sampling.resolve_device(args.device)
    )
    G = sampling.load_generator(args.network, args.which, args.base)
    if projected:
        ws = torch.from_numpy(read_projected_w(args.projected_w, G.num_ws, G.w_dim, args.max_images))
        grid, count, what = grid_shape(args.grid, len(ws)), len(ws), "projections"
        images = ((f"proj{i:02d}.png", arr) for i, arr in enumerate(sampling.synthesize_ws(G, ws, **options)))
    else:
        count, what = len(seeds), "images"
        generated = sampling.generate_images(
            G, seeds, args.trunc, args.trunc_cutoff, args.class_idx, progress=True, **options
        )
        images = ((f"seed{seed:04d}.png", arr) for seed, arr in generated)
    check_grid_pixels(grid, G.img_resolution)
    path = write_images(images, outdir, grid)
    if grid is None:
        print(f"wrote {count} images{' (proj00.png ...)' if projected else ''} to {outdir}")
    else:
        print(f"wrote a {grid[0]}x{grid[1]} grid of {count} {what} to {path}")
    return 0
