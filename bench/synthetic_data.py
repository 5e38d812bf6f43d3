"""A small deterministic image set (coloured discs and squares on tinted backgrounds).

Test and benchmark scaffolding (not part of the package): the smoke configs' data, the tests and
``bench/``. ``python bench/synthetic_data.py OUTDIR [--count N] [--resolution R]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from rootedgan.imaging import ensure_writable_dir


def shape_image(rng: np.random.RandomState, resolution: int) -> Image.Image:
    """One RGB image: a tinted background with 1-3 discs or squares of random colour, place and size."""
    background = tuple(int(v) for v in rng.randint(0, 96, size=3))
    img = Image.new("RGB", (resolution, resolution), background)
    draw = ImageDraw.Draw(img)
    for _ in range(rng.randint(1, 4)):
        colour = tuple(int(v) for v in rng.randint(96, 256, size=3))
        size = rng.uniform(0.2, 0.5) * resolution
        cx, cy = rng.uniform(size / 2, resolution - size / 2, size=2)
        box = [cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2]
        (draw.ellipse if rng.rand() < 0.5 else draw.rectangle)(box, fill=colour)
    return img


def make_shapes_dataset(outdir: str | Path, count: int = 256, resolution: int = 32, seed: int = 0) -> Path:
    """Write ``count`` PNGs ``img00000.png...`` into ``outdir`` (skipped if already complete)."""
    outdir = ensure_writable_dir(outdir)
    names = [outdir / f"img{i:05d}.png" for i in range(count)]
    if all(p.exists() for p in names):
        return outdir
    rng = np.random.RandomState(seed)
    for path in names:
        shape_image(rng, resolution).save(path)
    return outdir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir")
    parser.add_argument("--count", type=int, default=256)
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = make_shapes_dataset(args.outdir, args.count, args.resolution, args.seed)
    print(f"{args.count} images of {args.resolution}x{args.resolution} in {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
