"""Build the digits data sets from scikit-learn's copy of the UCI handwritten digits.

The 1,797 UCI "Optical Recognition of Handwritten Digits" test images (8x8 pixels, 16 grey levels) are
scaled to 8 bits (``v * 255 / 16``), upsampled to 32x32 (PIL bicubic), replicated to RGB and stored as PNG
in zips with NVIDIA's ``dataset.json`` class labels: ``digits-source.zip`` (digits 0-4, the pretraining
domain) and ``digits-target.zip`` (5-9, the finetuning target). ``python -m rootedgan.digits.data
[OUT_DIR]`` (needs scikit-learn) writes them, by default into the package's ``assets/``; the decoded
pixels are reproducible, the zip bytes for the same Pillow/zlib versions (fixed timestamps and order).
"""

from __future__ import annotations

import argparse
import io
import json
import zipfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from rootedgan.digits import ASSETS
from rootedgan.errors import UserError
from rootedgan.fileio import atomic_open

__all__ = ["DOMAINS", "RESOLUTION", "load_uci_digits", "upsample_digit", "write_domain_zip", "main"]

RESOLUTION = 32
DOMAINS: dict[str, tuple[int, ...]] = {"source": (0, 1, 2, 3, 4), "target": (5, 6, 7, 8, 9)}
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def load_uci_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 UCI digits as ``images [N, 8, 8]`` float64 in [0, 16] and ``labels [N]`` int64."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise UserError(
            "building the digits data needs scikit-learn (it ships the UCI digits): pip install scikit-learn"
        ) from None
    digits = load_digits()
    return np.asarray(digits.images, dtype=np.float64), np.asarray(digits.target, dtype=np.int64)


def upsample_digit(image: np.ndarray, resolution: int = RESOLUTION) -> np.ndarray:
    """One ``[8, 8]`` digit with values in [0, 16] -> ``[resolution, resolution, 3]`` uint8 RGB."""
    grey = np.clip(np.rint(image * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    big = Image.fromarray(grey, mode="L").resize((resolution, resolution), Image.Resampling.BICUBIC)
    return np.repeat(np.asarray(big)[:, :, None], 3, axis=2)


def _png_bytes(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb, mode="RGB").save(buf, format="PNG", optimize=False, compress_level=9)
    return buf.getvalue()


def write_domain_zip(
    path: Path, images: np.ndarray, labels: np.ndarray, digits: Iterable[int], resolution: int = RESOLUTION
) -> int:
    """Write the images whose label is in ``digits`` to a zip (atomically); returns how many."""
    digits = set(digits)
    keep = [i for i in range(len(labels)) if int(labels[i]) in digits]
    if not keep:
        raise UserError(f"no digits with labels {sorted(digits)}")
    names = {i: f"{int(labels[i])}/img{i:04d}.png" for i in keep}
    entries = [(names[i], _png_bytes(upsample_digit(images[i], resolution))) for i in keep]
    names_labels = [[names[i], int(labels[i])] for i in keep]
    entries.append(("dataset.json", json.dumps({"labels": names_labels}).encode()))
    with atomic_open(path, "wb") as fh, zipfile.ZipFile(fh, "w", zipfile.ZIP_STORED) as zf:
        for name, data in entries:
            info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
            info.external_attr = 0o644 << 16
            zf.writestr(info, data)
    return len(keep)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", nargs="?", default=str(ASSETS), help="output folder (default: package assets)")
    parser.add_argument("--resolution", type=int, default=RESOLUTION)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    images, labels = load_uci_digits()
    for domain, digits in DOMAINS.items():
        path = out / f"digits-{domain}.zip"
        count = write_domain_zip(path, images, labels, digits, args.resolution)
        print(f"{path}: {count} images of digits {digits[0]}-{digits[-1]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
