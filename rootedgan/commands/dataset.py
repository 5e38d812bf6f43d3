"""``rootedgan dataset``: a training zip in NVIDIA's layout from a folder (or zip) of images.

    rootedgan dataset SOURCE DEST.zip --resolution 256 [--labels] [--max-images N]

Every image goes through the rules ``rootedgan finetune`` applies when it reads a folder (center-crop to
square, Lanczos resize to the resolution, RGB or grayscale, see README "Data") and is stored as
``00000/img00000000.png`` (1000 per folder); with ``--labels`` the source's ``dataset.json`` labels come
along as NVIDIA's ``{"labels": [[name, label], ...]}``. A corrupt image is skipped with a warning that
names it (``--strict`` stops instead). The zip is written to a temp file next to DEST and renamed when
complete. ``rootedgan finetune`` reads folders directly too: a zip is faster to read and to move.
"""

from __future__ import annotations

import argparse
import io
import json
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from rootedgan.errors import UserError
from rootedgan.fileio import atomic_open

HELP = "Make a training zip (NVIDIA's layout, dataset.json labels) from a folder of images."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="folder (searched recursively) or zip of images")
    parser.add_argument("dest", help="zip file to write")
    parser.add_argument("--resolution", type=int, required=True, help="output size, a power of two")
    parser.add_argument("--channels", type=int, choices=(1, 3), default=3, help="3: RGB, 1: grayscale")
    parser.add_argument("--labels", action="store_true", help="copy the labels of the source's dataset.json")
    parser.add_argument(
        "--max-images", type=int, default=None, help="keep this many (NVIDIA's seeded subset)"
    )
    parser.add_argument("--strict", action="store_true", help="stop at the first unreadable image")


def _label(value: np.ndarray) -> int | list[float]:
    """NVIDIA's dataset.json label: a class index for one-hot rows, else the vector."""
    if value.size and np.count_nonzero(value) == 1 and value.max() == 1:
        return int(np.argmax(value))
    return [float(v) for v in value]


def run(args: argparse.Namespace) -> int:
    from rootedgan.data import ImageDataset

    dest = Path(args.dest)
    if dest.suffix.lower() != ".zip":
        raise UserError(f"{dest}: the output must be a .zip file")
    if Path(args.source).resolve() == dest.resolve():
        raise UserError("the output zip cannot be the source")
    on_error = "raise" if args.strict else "skip"
    ds = ImageDataset(
        args.source,
        resolution=args.resolution,
        channels=args.channels,
        use_labels=args.labels,
        max_images=args.max_images,
        on_error=on_error,
    )
    labels = []
    with atomic_open(dest, "wb") as fh, zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_STORED) as zf:
        for i in tqdm(range(ds.num_images), desc="dataset", unit="img"):
            arr = ds.load_image(i)
            name = f"{i // 1000:05d}/img{i:08d}.png"
            buf = io.BytesIO()
            Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr).save(
                buf, format="PNG", compress_level=6
            )
            zf.writestr(name, buf.getvalue())
            if ds.has_labels:
                labels.append([name, _label(ds.labels[i])])
        zf.writestr("dataset.json", json.dumps({"labels": labels if ds.has_labels else None}))
    skipped = f", skipped {len(ds.skipped)} unreadable: {', '.join(ds.skipped[:5])}" if ds.skipped else ""
    print(f"wrote {dest}: {ds.num_images} images at {ds.resolution}x{ds.resolution}"
          f"{', with labels' if ds.has_labels else ''}{skipped}")  # fmt: skip
    return 0
