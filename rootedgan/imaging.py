"""Image conventions shared by `generate`, sample grids and the data pipeline, and image files.

Network images are NCHW float in [-1, 1]; files are uint8 HWC via NVIDIA's rule
``clamp(img * 127.5 + 128, 0, 255)``.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from rootedgan.errors import UserError
from rootedgan.fileio import atomic_open

MAX_GRID_PIXELS = 1 << 28  # e.g. 16x16 images of 1024 px; a grid is one image held in memory


def to_uint8(img: torch.Tensor) -> np.ndarray:
    """``[N, C, H, W]`` float in [-1, 1] -> ``[N, H, W, C]`` uint8 (NVIDIA's rounding rule)."""
    arr = (img.detach().to(torch.float32) * 127.5 + 128).clamp(0, 255).to(torch.uint8)
    return arr.permute(0, 2, 3, 1).cpu().numpy()


def parse_grid(spec: str, count: int) -> tuple[int, int]:
    """``'ROWSxCOLS'`` -> (rows, cols); ``'auto'`` -> a near-square grid holding ``count`` images,
    exactly filled when ``count`` has a factor up to twice its square root (32 -> 4x8), else with a
    partial last row."""
    if spec == "auto":
        side = max(1, math.ceil(math.sqrt(count)))
        cols = next((c for c in range(side, 2 * side + 1) if count % c == 0), side)
        return max(1, math.ceil(count / cols)), cols
    try:
        rows, cols = (int(v) for v in spec.lower().split("x"))
    except ValueError:
        raise UserError(f"--grid must look like 8x8 or be 'auto', got {spec!r}") from None
    if rows < 1 or cols < 1:
        raise UserError(f"--grid needs positive rows and columns, got {spec!r}")
    return rows, cols


def grid_shape(spec: str | None, count: int) -> tuple[int, int] | None:
    """``--grid`` (``ROWSxCOLS`` or ``auto``; None or empty: no grid) for ``count`` images, checked to hold
    them (:func:`parse_grid`)."""
    if not spec:
        return None
    rows, cols = parse_grid(spec, count)
    if rows * cols < count:
        raise UserError(f"{count} images do not fit a {rows}x{cols} grid")
    return rows, cols


def check_grid_pixels(grid: tuple[int, int] | None, resolution: int) -> None:
    """A grid of ``resolution``-pixel images is held in memory: at most :data:`MAX_GRID_PIXELS` pixels."""
    if grid is None:
        return
    rows, cols = grid
    pixels = rows * cols * int(resolution) ** 2
    if pixels > MAX_GRID_PIXELS:
        raise UserError(
            f"a {rows}x{cols} grid of {resolution}px images has {pixels} pixels, more than "
            f"{MAX_GRID_PIXELS}; use fewer images or a smaller grid (or write single images)"
        )


def make_grid(images: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Tile ``[N, H, W, C]`` uint8 images row-major into ``[rows*H, cols*W, C]`` (empty cells black)."""
    n, h, w, c = images.shape
    if n > rows * cols:
        raise UserError(f"{n} images do not fit a {rows}x{cols} grid")
    grid = np.zeros([rows * cols, h, w, c], dtype=images.dtype)
    grid[:n] = images
    return grid.reshape(rows, cols, h, w, c).transpose(0, 2, 1, 3, 4).reshape(rows * h, cols * w, c)


def ensure_writable_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` if needed and check that files can be written there."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as err:
        raise UserError(f"cannot write to output directory {path}: {err.strerror or err}") from None
    return path


def save_image_atomic(array: np.ndarray, path: str | os.PathLike) -> None:
    """Write an ``[H, W, C]`` (C = 1 or 3) uint8 image; the file appears complete or not at all."""
    path = Path(path)
    arr = array[..., 0] if array.shape[-1] == 1 else array
    with atomic_open(path, "wb") as fh:
        Image.fromarray(arr).save(fh, format=path.suffix.lstrip(".").upper().replace("JPG", "JPEG") or "PNG")


def write_images(
    images: Iterable[tuple[str, np.ndarray]], outdir: Path, grid: tuple[int, int] | None
) -> Path:
    """Write ``(file name, image)`` pairs into ``outdir``, or (``grid = (rows, cols)``) all of them tiled
    into ``outdir/grid.png``; returns ``outdir`` or the grid's path."""
    if grid is None:
        for name, arr in images:
            save_image_atomic(arr, outdir / name)
        return outdir
    path = outdir / "grid.png"
    save_image_atomic(make_grid(np.stack([arr for _, arr in images]), *grid), path)
    return path
