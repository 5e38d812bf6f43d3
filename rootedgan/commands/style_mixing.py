"""``rootedgan style-mixing``: NVIDIA's style-mixing figure from any supported checkpoint.

Cell (row r, column c) is row r's ``w`` with the ``--styles`` layers of column c's (coarse layers 0-3 carry
pose and shape, middle 4-7 features, fine 8+ colour); the column seeds' images run along the top and the
row seeds' down the left, as in NVIDIA's ``style_mixing.py``.
"""

from __future__ import annotations

import argparse

from rootedgan import sampling
from rootedgan.commands import add_options
from rootedgan.errors import UserError
from rootedgan.imaging import check_grid_pixels, ensure_writable_dir, save_image_atomic, write_images

HELP = "NVIDIA's style-mixing figure: row seeds x column seeds, with --styles layers from the columns."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_options(parser, "--network", network={"help": "checkpoint path, URL or shortcut name"})
    parser.add_argument("--rows", required=True, help="row seeds (they give everything but --styles)")
    parser.add_argument("--cols", required=True, help="column seeds (they give the --styles layers)")
    parser.add_argument("--styles", default="0-6", help="layers taken from the columns (default 0-6)")
    add_options(parser, "--trunc", "--noise-mode", "--class", "--outdir")
    parser.add_argument("--save-cells", action="store_true", help="also write every image as R-C.png")
    parser.add_argument("--max-cells", type=int, default=1024, help="most rows x columns (default 1024)")
    add_options(parser, "--device")


def run(args: argparse.Namespace) -> int:
    sampling.check_truncation(args.trunc)
    rows, cols = sampling.parse_seeds(args.rows), sampling.parse_seeds(args.cols)
    if len(rows) * len(cols) > args.max_cells:
        raise UserError(f"{len(rows)} rows x {len(cols)} columns is more than --max-cells {args.max_cells}")
    outdir = ensure_writable_dir(args.outdir)
    G = sampling.load_generator(args.network)
    styles = sampling.parse_layers(args.styles, G.num_ws)
    check_grid_pixels((len(rows) + 1, len(cols) + 1), G.img_resolution)  # the figure is held in memory
    settings = (args.trunc, args.noise_mode, args.class_idx, sampling.resolve_device(args.device))
    figure, images = sampling.style_mixing_grid(G, rows, cols, styles, *settings)
    path = outdir / "grid.png"
    save_image_atomic(figure, path)
    if args.save_cells:
        write_images(
            ((f"{r}-{c}.png", img) for (r, c), img in images.items() if r >= 0 and c >= 0), outdir, None
        )
    print(f"wrote {path}: {len(rows)} rows x {len(cols)} columns, styles {args.styles} from the columns")
    return 0
