"""``rootedgan style-mixing``: NVIDIA's style-mixing figure from any supported checkpoint.

    rootedgan style-mixing --network ffhq256 --rows 85,100,75 --cols 55,821,1789 --styles 0-6 --outdir out

Row and column seeds become ``w`` (``RandomState(seed).randn`` latents through the mapping, with
truncation toward ``w_avg``); the cell (row r, column c) keeps row r's ``w`` except at the ``--styles``
layers, which come from column c (coarse layers 0-3 carry pose and shape, middle 4-7 features, fine 8+
colour). The figure has the column seeds' images along the top and the row seeds' down the left, as in
NVIDIA's ``style_mixing.py``; ``--save-cells`` also writes every image as ``R-C.png``.
"""

from __future__ import annotations

import argparse

from rootedgan.commands import add_options
from rootedgan.imaging import ensure_writable_dir, save_image_atomic, write_images
from rootedgan.sampling import (
    check_truncation,
    load_generator,
    parse_layers,
    parse_seeds,
    resolve_device,
    style_mixing_grid,
)

HELP = "NVIDIA's style-mixing figure: row seeds x column seeds, with --styles layers from the columns."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_options(parser, "--network", network={"help": "checkpoint path, URL or shortcut name"})
    parser.add_argument("--rows", required=True, help="row seeds (they give everything but --styles)")
    parser.add_argument("--cols", required=True, help="column seeds (they give the --styles layers)")
    parser.add_argument("--styles", default="0-6", help="layers taken from the columns (default 0-6)")
    add_options(parser, "--trunc", "--noise-mode", "--class", "--outdir")
    parser.add_argument("--save-cells", action="store_true", help="also write every image as R-C.png")
    add_options(parser, "--device")


def run(args: argparse.Namespace) -> int:
    check_truncation(args.trunc)
    rows, cols = parse_seeds(args.rows), parse_seeds(args.cols)
    outdir = ensure_writable_dir(args.outdir)
    G = load_generator(args.network)
    styles = parse_layers(args.styles, G.num_ws)
    figure, images = style_mixing_grid(
        G, rows, cols, styles, args.trunc, args.noise_mode, args.class_idx, resolve_device(args.device)
    )
    path = outdir / "grid.png"
    save_image_atomic(figure, path)
    if args.save_cells:
        write_images(
            ((f"{r}-{c}.png", img) for (r, c), img in images.items() if r >= 0 and c >= 0), outdir, None
        )
    print(f"wrote {path}: {len(rows)} rows x {len(cols)} columns, styles {args.styles} from the columns")
    return 0
