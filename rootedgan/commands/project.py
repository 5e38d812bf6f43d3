"""``rootedgan project``: GAN inversion of an image into W (NVIDIA's ``projector.py``), writing
``target.png``, ``proj.png``, ``projected_w.npz`` (read by ``rootedgan generate --projected-w``) and with
``--save-video`` ``proj.mp4`` or ``proj.gif``. The method: :mod:`rootedgan.tools.projector`.
"""

from __future__ import annotations

import argparse

from rootedgan.commands import add_options, options_from
from rootedgan.tools.projector import ProjectOptions, project_to_folder

HELP = "Project an image into W (NVIDIA's projector: LPIPS-VGG16 distance, noise regularization)."


def parse_bool(text: str) -> bool:
    """``--save-video=true|false|1|0|yes|no|on|off`` (NVIDIA's spelling takes a value)."""
    value = str(text).strip().lower()
    if value not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return value in ("1", "true", "yes", "on")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_options(parser, "--network")
    parser.add_argument(
        "--target", required=True, help="image to project (center-cropped, resized to G's size)"
    )
    add_options(parser, "--outdir")
    parser.add_argument("--num-steps", type=int, default=1000, help="optimization steps (default 1000)")
    parser.add_argument("--seed", type=int, default=303, help="random seed (default 303, NVIDIA's)")
    parser.add_argument(
        "--save-video",
        type=parse_bool,
        nargs="?",
        const=True,
        default=False,
        metavar="BOOL",
        help="also write the optimization as proj.mp4 (imageio + imageio-ffmpeg) or proj.gif (imageio only); "
        "default off",
    )
    parser.add_argument(
        "--vgg16",
        help="NVIDIA's VGG16 LPIPS torchscript (vgg16.pt; default: $ROOTEDGAN_VGG16, the network cache, "
        "else downloaded into it)",
    )
    add_options(parser, "--class", "--which")
    parser.add_argument(
        "--w-avg-samples", type=int, default=10000, help="latents for W's mean (default 10000)"
    )
    add_options(parser, "--device", "--base")


def run(args: argparse.Namespace) -> int:
    project_to_folder(options_from(args, ProjectOptions))
    return 0
