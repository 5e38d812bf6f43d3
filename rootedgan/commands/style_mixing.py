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

import numpy as np
import torch

from rootedgan.errors import UserError
from rootedgan.imaging import ensure_writable_dir, make_grid, save_image_atomic, to_uint8
from rootedgan.sampling import class_labels, parse_seeds, resolve_device, seed_latents

HELP = "NVIDIA's style-mixing figure: row seeds x column seeds, with --styles layers from the columns."


def parse_layers(spec: str, num_ws: int) -> list[int]:
    """``'0-6'`` / ``'0,1,8-13'`` -> layer indices, each in ``[0, num_ws)``."""
    try:
        layers = parse_seeds(spec)
    except UserError:
        raise UserError(f"cannot parse --styles {spec!r}: use layer numbers and ranges like 0-6") from None
    bad = [i for i in layers if not 0 <= i < num_ws]
    if bad:
        raise UserError(f"--styles {spec!r}: the network has layers 0-{num_ws - 1}, not {bad}")
    return sorted(set(layers))


@torch.no_grad()
def style_mixing_grid(
    G: torch.nn.Module,
    row_seeds: list[int],
    col_seeds: list[int],
    styles: list[int],
    truncation_psi: float = 1.0,
    noise_mode: str = "const",
    class_idx: int | None = None,
    device: torch.device | str = "cpu",
) -> tuple[np.ndarray, dict[tuple[int, int], np.ndarray]]:
    """``(figure [H', W', C] uint8, {(row_seed, col_seed) or (seed, -1) / (-1, seed): image})``."""
    G = G.eval().to(device)
    seeds = list(dict.fromkeys(row_seeds + col_seeds))
    z = torch.from_numpy(seed_latents(seeds, G.z_dim)).to(device)
    c = class_labels(G.c_dim, class_idx, len(seeds)).to(device)
    ws = G.mapping(z, c, truncation_psi=truncation_psi)
    w_of = dict(zip(seeds, ws, strict=True))

    def render(w: torch.Tensor) -> np.ndarray:
        return to_uint8(G.synthesis(w[None], noise_mode=noise_mode))[0]

    images: dict[tuple[int, int], np.ndarray] = {}
    for s in col_seeds:
        images[(-1, s)] = render(w_of[s])
    for r in row_seeds:
        images[(r, -1)] = render(w_of[r])
        for s in col_seeds:
            w = w_of[r].clone()
            w[styles] = w_of[s][styles]
            images[(r, s)] = render(w)
    blank = np.zeros_like(images[(-1, col_seeds[0])])
    cells = [blank] + [images[(-1, s)] for s in col_seeds]
    for r in row_seeds:
        cells += [images[(r, -1)]] + [images[(r, s)] for s in col_seeds]
    figure = make_grid(np.stack(cells), len(row_seeds) + 1, len(col_seeds) + 1)
    return figure, images


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--network", required=True, help="checkpoint path, URL or shortcut name")
    parser.add_argument("--rows", required=True, help="row seeds (they give everything but --styles)")
    parser.add_argument("--cols", required=True, help="column seeds (they give the --styles layers)")
    parser.add_argument("--styles", default="0-6", help="layers taken from the columns (default 0-6)")
    parser.add_argument("--trunc", type=float, default=1.0, help="truncation psi (default 1)")
    parser.add_argument("--noise-mode", choices=["const", "random", "none"], default="const")
    parser.add_argument("--class", dest="class_idx", type=int, default=None, help="class index (conditional)")
    parser.add_argument("--outdir", required=True, help="output directory (created if needed)")
    parser.add_argument("--save-cells", action="store_true", help="also write every image as R-C.png")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")


def run(args: argparse.Namespace) -> int:
    from rootedgan.checkpoints import load_network

    if not np.isfinite(args.trunc):
        raise UserError(f"--trunc must be a finite number, got {args.trunc}")
    rows, cols = parse_seeds(args.rows), parse_seeds(args.cols)
    outdir = ensure_writable_dir(args.outdir)
    nets = load_network(args.network)
    G = nets.get("G_ema") or nets.get("G")
    if G is None:
        raise UserError(f"{args.network} holds no generator")
    styles = parse_layers(args.styles, G.num_ws)
    figure, images = style_mixing_grid(
        G, rows, cols, styles, args.trunc, args.noise_mode, args.class_idx, resolve_device(args.device)
    )
    path = outdir / "grid.png"
    save_image_atomic(figure, path)
    if args.save_cells:
        for (r, c), img in images.items():
            if r >= 0 and c >= 0:
                save_image_atomic(img, outdir / f"{r}-{c}.png")
    print(f"wrote {path}: {len(rows)} rows x {len(cols)} columns, styles {args.styles} from the columns")
    return 0
