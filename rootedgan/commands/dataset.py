"""``rootedgan dataset``: a training zip in NVIDIA's layout (``00000/img00000000.png``, ``dataset.json``)
from a folder or zip of images, read by the rules of ``rootedgan finetune`` (README "Data"); the work is
:func:`rootedgan.data.write_dataset_zip`. A zip is faster to read and to move than a folder.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rootedgan.errors import UserError, printable

HELP = "Make a training zip (NVIDIA's layout, dataset.json labels) from a folder of images."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", nargs="?", help="folder (searched recursively) or zip of images")
    parser.add_argument("dest", nargs="?", help="zip file to write")
    parser.add_argument("--source", dest="source_flag", metavar="SOURCE", help="the same (NVIDIA's name)")
    parser.add_argument("--dest", dest="dest_flag", metavar="DEST", help="the same (NVIDIA's name)")
    parser.add_argument("--resolution", help="output size N (or NxN), a power of two", metavar="N")
    parser.add_argument("--width", type=int, help="NVIDIA's: output width (equal to --height)")
    parser.add_argument("--height", type=int, help="NVIDIA's: output height (equal to --width)")
    parser.add_argument("--channels", type=int, choices=(1, 3), default=3, help="3: RGB, 1: grayscale")
    parser.add_argument("--labels", action="store_true", help="copy the labels of the source's dataset.json")
    parser.add_argument("--max-images", type=int, help="keep this many (NVIDIA's seeded subset)")
    parser.add_argument("--strict", action="store_true", help="stop at the first unreadable image")
    parser.add_argument("--transform", choices=["center-crop"], help="NVIDIA's: always center-crop here")
    parser.add_argument("--resize-filter", choices=["lanczos"], help="NVIDIA's: always lanczos here")


def _resolution(args: argparse.Namespace) -> int:
    """One size from ``--resolution N``/``NxN`` or NVIDIA's ``--width``/``--height`` (square only)."""
    sizes = {args.width, args.height} - {None}
    if args.resolution:
        parts = args.resolution.lower().split("x")
        if not all(part.strip().isdigit() for part in parts):
            raise UserError(f"--resolution {args.resolution}: give N or NxN, e.g. 256 or 256x256")
        sizes |= {int(part) for part in parts}
    if len(sizes) != 1:
        raise UserError("give one square size: --resolution N (or NxN, or --width N --height N)")
    return sizes.pop()


def run(args: argparse.Namespace) -> int:
    from rootedgan.data import write_dataset_zip  # Lightning: loaded here, not for `rootedgan --help`

    source, dest = args.source or args.source_flag, args.dest or args.dest_flag
    if not source or not dest:
        raise UserError("give the source images and the zip to write: rootedgan dataset SOURCE DEST.zip")
    options = (_resolution(args), args.channels, args.labels, args.max_images, args.strict)
    ds = write_dataset_zip(source, dest, *options)
    names = printable(", ".join(ds.skipped[:5]))
    skipped = f", skipped {len(ds.skipped)} unreadable: {names}" if ds.skipped else ""
    with_labels = ", with labels" if ds.has_labels else ""
    size = f"{ds.resolution}x{ds.resolution}"
    print(f"wrote {printable(Path(dest))}: {ds.num_images} images at {size}{with_labels}{skipped}")
    return 0
