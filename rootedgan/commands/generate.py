"""``rootedgan generate``: images or one sample grid from any supported checkpoint.

Seeds follow NVIDIA's generate.py (``z = RandomState(seed).randn(1, z_dim)``), so the same seed gives
the same image as NVIDIA's tool on the same network. ``--projected-w projected_w.npz`` renders the ``w``
vectors of a projection (``rootedgan project``, NVIDIA's projector) instead: ``proj00.png``, ...
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from tqdm import tqdm

from rootedgan.errors import UserError
from rootedgan.imaging import ensure_writable_dir, make_grid, parse_grid, save_image_atomic, to_uint8
from rootedgan.sampling import (  # noqa: F401 - re-exported: the names commands and scripts know
    MAX_SEEDS,
    check_ops_setting,
    check_truncation,
    class_labels,
    parse_seeds,
    resolve_device,
    seed_latents,
)

HELP = "Generate images or a sample grid from a network (NVIDIA .pkl, rosinality .pt, native, URL)."


MAX_GRID_PIXELS = 1 << 28  # e.g. 16x16 images of 1024 px; a grid is one image held in memory


@torch.no_grad()
def generate_images(
    G: torch.nn.Module,
    seeds: Sequence[int],
    truncation_psi: float = 1.0,
    truncation_cutoff: int | None = None,
    class_idx: int | None = None,
    noise_mode: str = "const",
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(seed, [H, W, C] uint8 image)`` for each seed, in order, computed in batches."""
    check_truncation(truncation_psi, truncation_cutoff)
    G = G.eval().to(device)
    with tqdm(total=len(seeds), desc="generate", unit="img", disable=not progress, leave=False) as bar:
        for start in range(0, len(seeds), batch_size):
            z = torch.from_numpy(seed_latents(seeds[start : start + batch_size], G.z_dim)).to(device)
            c = class_labels(G.c_dim, class_idx, len(z)).to(device)
            img = G(
                z,
                c,
                truncation_psi=truncation_psi,
                truncation_cutoff=truncation_cutoff,
                noise_mode=noise_mode,
            )
            yield from zip(seeds[start : start + batch_size], to_uint8(img), strict=True)
            bar.update(len(z))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--network", required=True, help="checkpoint path, URL or shortcut name (e.g. ffhq256)"
    )
    parser.add_argument("--seeds", default=None, help="seeds, e.g. 0-63,100")
    parser.add_argument(
        "--projected-w",
        default=None,
        metavar="NPZ",
        help="render the w vectors of a projected_w.npz (`rootedgan project`, NVIDIA's projector) instead of "
        "seeds: proj00.png, proj01.png, ... (--trunc and --class do not apply)",
    )
    parser.add_argument("--trunc", type=float, default=1.0, help="truncation psi (default 1)")
    parser.add_argument("--trunc-cutoff", type=int, default=None, help="truncate only the first N ws")
    parser.add_argument("--class", dest="class_idx", type=int, default=None, help="class index (conditional)")
    parser.add_argument("--noise-mode", choices=["const", "random", "none"], default="const")
    parser.add_argument("--outdir", required=True, help="output directory (created if needed)")
    parser.add_argument("--grid", default=None, help="write one grid PNG instead: ROWSxCOLS or 'auto'")
    parser.add_argument("--batch", type=int, default=16, help="images per forward pass")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--which", choices=["G_ema", "G"], default="G_ema", help="network in the checkpoint")
    parser.add_argument(
        "--base",
        default=None,
        help="base checkpoint of an orthogonal-finetuning adapter --network (default: the file of the same "
        "name next to the adapter; checked by sha256)",
    )


def _load_generator(args: argparse.Namespace) -> torch.nn.Module:
    from rootedgan.checkpoints import load_network

    nets = load_network(args.network, base=args.base)
    G = nets.get(args.which) or nets.get("G_ema") or nets.get("G")
    if G is None:
        raise UserError(f"{args.network} holds no generator")
    return G


def _check_grid_pixels(rows: int, cols: int, resolution: int) -> None:
    pixels = rows * cols * int(resolution) ** 2
    if pixels > MAX_GRID_PIXELS:
        raise UserError(
            f"a {rows}x{cols} grid of {resolution}px images has {pixels} pixels, more than "
            f"{MAX_GRID_PIXELS}; use fewer images or a smaller grid (or write single images)"
        )


@torch.no_grad()
def synthesize_ws(
    G: torch.nn.Module,
    ws: torch.Tensor,
    noise_mode: str = "const",
    batch_size: int = 16,
    device: torch.device | str = "cpu",
) -> Iterator[np.ndarray]:
    """``[H, W, C]`` uint8 images of ``G.synthesis`` for ``ws [N, num_ws, w_dim]``, in batches."""
    G = G.eval().to(device)
    for start in range(0, len(ws), batch_size):
        yield from to_uint8(G.synthesis(ws[start : start + batch_size].to(device), noise_mode=noise_mode))


def run_projected(args: argparse.Namespace) -> int:
    """``--projected-w``: render each ``w`` of the file, as NVIDIA's generate.py does (``projNN.png``)."""
    from rootedgan.tools.projector import read_projected_w

    if args.seeds is not None:
        print("note: --seeds is ignored with --projected-w (as in NVIDIA's generate.py)")
    if args.trunc != 1.0 or args.trunc_cutoff is not None or args.class_idx is not None:
        print("note: --trunc, --trunc-cutoff and --class do not apply to projected w vectors (ignored)")
    check_ops_setting()
    if args.batch < 1:
        raise UserError("--batch must be >= 1")
    outdir = ensure_writable_dir(args.outdir)
    device = resolve_device(args.device)
    G = _load_generator(args)
    ws = torch.from_numpy(read_projected_w(args.projected_w, G.num_ws, G.w_dim))
    rows_cols = parse_grid(args.grid, len(ws)) if args.grid else None
    if rows_cols is not None:
        if rows_cols[0] * rows_cols[1] < len(ws):
            raise UserError(f"{len(ws)} images do not fit a {rows_cols[0]}x{rows_cols[1]} grid")
        _check_grid_pixels(*rows_cols, G.img_resolution)
    images = synthesize_ws(G, ws, noise_mode=args.noise_mode, batch_size=args.batch, device=device)
    if rows_cols is None:
        for idx, arr in enumerate(images):
            save_image_atomic(arr, outdir / f"proj{idx:02d}.png")
        print(f"wrote {len(ws)} images (proj00.png ...) to {outdir}")
        return 0
    grid = make_grid(np.stack(list(images)), *rows_cols)
    save_image_atomic(grid, outdir / "grid.png")
    print(f"wrote a {rows_cols[0]}x{rows_cols[1]} grid of {len(ws)} projections to {outdir / 'grid.png'}")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.projected_w is not None:
        return run_projected(args)
    if args.seeds is None:
        raise UserError("give --seeds (e.g. 0-63,100) or --projected-w projected_w.npz")
    seeds = parse_seeds(args.seeds)
    check_truncation(args.trunc, args.trunc_cutoff)
    check_ops_setting()
    if args.batch < 1:
        raise UserError("--batch must be >= 1")
    rows_cols = parse_grid(args.grid, len(seeds)) if args.grid else None
    if rows_cols is not None and rows_cols[0] * rows_cols[1] < len(seeds):
        raise UserError(f"{len(seeds)} images do not fit a {rows_cols[0]}x{rows_cols[1]} grid")
    outdir = ensure_writable_dir(args.outdir)
    device = resolve_device(args.device)
    G = _load_generator(args)
    if rows_cols is not None:
        _check_grid_pixels(*rows_cols, G.img_resolution)
    images = generate_images(
        G,
        seeds,
        truncation_psi=args.trunc,
        truncation_cutoff=args.trunc_cutoff,
        class_idx=args.class_idx,
        noise_mode=args.noise_mode,
        batch_size=args.batch,
        device=device,
        progress=True,
    )
    if rows_cols is None:
        for seed, arr in images:
            save_image_atomic(arr, outdir / f"seed{seed:04d}.png")
        print(f"wrote {len(seeds)} images to {outdir}")
        return 0
    rows, cols = rows_cols
    grid = make_grid(np.stack([arr for _, arr in images]), rows, cols)
    path = outdir / "grid.png"
    save_image_atomic(grid, path)
    print(f"wrote a {rows}x{cols} grid of {len(seeds)} images to {path}")
    return 0
