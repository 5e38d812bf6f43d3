"""``rootedgan dataset``: a training zip in NVIDIA's layout from a folder (or zip) of images.

    rootedgan dataset SOURCE DEST.zip --resolution 256 [--labels] [--max-images N]

Every image goes through the rules ``rootedgan finetune`` applies when it reads a folder (center-crop to
square, Lanczos resize to the resolution, RGB or grayscale, see README "Data") and is stored as
``00000/img00000000.png`` (1000 per folder); with ``--labels`` the source's ``dataset.json`` labels come
along as NVIDIA's ``{"labels": [[name, label], ...]}``. A corrupt image is skipped with a warning that
names it (``--strict`` stops instead). The zip is written to a temp file next to DEST and renamed when
complete (:func:`rootedgan.data.write_dataset_zip`). ``rootedgan finetune`` reads folders directly too:
a zip is faster to read and to move.
"""

from __future__ import annotations

import argparse
from pathlib import Path

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


def run(args: argparse.Namespace) -> int:
    from rootedgan.data import write_dataset_zip  # Lightning: loaded here, not for `rootedgan --help`

    options = (args.resolution, args.channels, args.labels, args.max_images, args.strict)
    ds = write_dataset_zip(args.source, args.dest, *options)
    skipped = f", skipped {len(ds.skipped)} unreadable: {', '.join(ds.skipped[:5])}" if ds.skipped else ""
    with_labels = ", with labels" if ds.has_labels else ""
    size = f"{ds.resolution}x{ds.resolution}"
    print(f"wrote {Path(args.dest)}: {ds.num_images} images at {size}{with_labels}{skipped}")
    return 0
