"""``rootedgan generate``: images or one sample grid from any supported checkpoint.

Seeds follow NVIDIA's generate.py (``z = RandomState(seed).randn(1, z_dim)``), so the same seed gives
the same image as NVIDIA's tool on the same network.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from tqdm import tqdm

from rootedgan.errors import UserError
from rootedgan.imaging import ensure_writable_dir, make_grid, parse_grid, save_image_atomic, to_uint8

HELP = "Generate images or a sample grid from a network (NVIDIA .pkl, rosinality .pt, native, URL)."


def parse_seeds(spec: str) -> list[int]:
    """``'0-3,10'`` -> ``[0, 1, 2, 3, 10]`` (ranges inclusive, order kept)."""
    seeds: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part:
                lo, hi = part.split("-", 1)
                lo_i, hi_i = int(lo), int(hi)
                if hi_i < lo_i:
                    raise ValueError
                seeds.extend(range(lo_i, hi_i + 1))
            else:
                seeds.append(int(part))
        except ValueError:
            raise UserError(f"cannot parse seeds {spec!r}: use numbers and ranges like 0-63,100") from None
    if not seeds:
        raise UserError("no seeds given")
    if max(seeds) >= 2**32:
        raise UserError("seeds must be in [0, 2**32)")
    return seeds


def seed_latents(seeds: Sequence[int], z_dim: int) -> np.ndarray:
    """``[len(seeds), z_dim]`` float32 latents, one ``RandomState(seed).randn(1, z_dim)`` per seed."""
    return np.concatenate([np.random.RandomState(s).randn(1, z_dim) for s in seeds]).astype(np.float32)


def class_labels(c_dim: int, class_idx: int | None, count: int) -> torch.Tensor:
    """One-hot ``[count, c_dim]`` labels (``[count, 0]`` for unconditional networks)."""
    if c_dim == 0:
        if class_idx is not None:
            raise UserError("--class was given but the network is unconditional")
        return torch.zeros([count, 0])
    if class_idx is None:
        raise UserError(f"the network is conditional ({c_dim} classes): pass --class N")
    if not 0 <= class_idx < c_dim:
        raise UserError(f"--class must be in [0, {c_dim}), got {class_idx}")
    c = torch.zeros([count, c_dim])
    c[:, class_idx] = 1
    return c


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
    G = G.eval().to(device)
    z_all = seed_latents(seeds, G.z_dim)
    bar = tqdm(total=len(seeds), desc="generate", unit="img", disable=not progress)
    for start in range(0, len(seeds), batch_size):
        z = torch.from_numpy(z_all[start : start + batch_size]).to(device)
        c = class_labels(G.c_dim, class_idx, len(z)).to(device)
        img = G(
            z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff, noise_mode=noise_mode
        )
        yield from zip(seeds[start : start + batch_size], to_uint8(img), strict=True)
        bar.update(len(z))
    bar.close()


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda`` without a GPU is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but torch sees no CUDA device")
    return torch.device(name)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--network", required=True, help="checkpoint path, URL or shortcut name (e.g. ffhq256)"
    )
    parser.add_argument("--seeds", required=True, help="seeds, e.g. 0-63,100")
    parser.add_argument("--trunc", type=float, default=1.0, help="truncation psi (default 1)")
    parser.add_argument("--trunc-cutoff", type=int, default=None, help="truncate only the first N ws")
    parser.add_argument("--class", dest="class_idx", type=int, default=None, help="class index (conditional)")
    parser.add_argument("--noise-mode", choices=["const", "random", "none"], default="const")
    parser.add_argument("--outdir", required=True, help="output directory (created if needed)")
    parser.add_argument("--grid", default=None, help="write one grid PNG instead: ROWSxCOLS or 'auto'")
    parser.add_argument("--batch", type=int, default=16, help="images per forward pass")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--which", choices=["G_ema", "G"], default="G_ema", help="network in the checkpoint")


def run(args: argparse.Namespace) -> int:
    from rootedgan.checkpoints import load_network

    seeds = parse_seeds(args.seeds)
    if args.batch < 1:
        raise UserError("--batch must be >= 1")
    rows_cols = parse_grid(args.grid, len(seeds)) if args.grid else None
    outdir = ensure_writable_dir(args.outdir)
    device = resolve_device(args.device)
    nets = load_network(args.network)
    G = nets.get(args.which) or nets.get("G_ema") or nets.get("G")
    if G is None:
        raise UserError(f"{args.network} holds no generator")
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
