"""``rootedgan project``: GAN inversion of an image into W (NVIDIA's ``projector.py``).

    rootedgan project --network ffhq256 --target face.png --outdir out [--num-steps 1000] [--seed 303]
        [--save-video]

Writes ``target.png`` (the target as the network sees it: center-cropped and resized), ``proj.png`` (the
projection rendered by the unmodified network, noise ``const``), ``projected_w.npz`` (``w`` of
``[1, num_ws, w_dim]``, NVIDIA's file, read by ``rootedgan generate --projected-w``) and with
``--save-video`` ``proj.mp4`` (or ``proj.gif``): target and projection side by side, step by step.
See :mod:`rootedgan.tools.projector` for the method and the VGG16 file it downloads.
"""

from __future__ import annotations

import argparse
import time

import torch
from tqdm import tqdm

from rootedgan.errors import UserError
from rootedgan.imaging import ensure_writable_dir, save_image_atomic, to_uint8
from rootedgan.sampling import class_labels, resolve_device

HELP = "Project an image into W (NVIDIA's projector: LPIPS-VGG16 distance, noise regularization)."

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def parse_bool(text: str) -> bool:
    """``--save-video=true|false|1|0|yes|no`` (NVIDIA's spelling takes a value)."""
    value = str(text).strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--network", required=True, help="checkpoint path, URL or shortcut name (e.g. ffhq256)"
    )
    parser.add_argument(
        "--target", required=True, help="image to project (center-cropped, resized to G's size)"
    )
    parser.add_argument("--outdir", required=True, help="output directory (created if needed)")
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
        default=None,
        help="NVIDIA's VGG16 LPIPS torchscript (vgg16.pt; default: $ROOTEDGAN_VGG16, the network cache, "
        "else downloaded into it)",
    )
    parser.add_argument("--class", dest="class_idx", type=int, default=None, help="class index (conditional)")
    parser.add_argument("--which", choices=["G_ema", "G"], default="G_ema", help="network in the checkpoint")
    parser.add_argument(
        "--w-avg-samples", type=int, default=10000, help="latents for W's mean (default 10000)"
    )
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    parser.add_argument(
        "--base",
        default=None,
        help="base checkpoint of an orthogonal-finetuning adapter --network (checked by sha256)",
    )


def run(args: argparse.Namespace) -> int:
    from rootedgan.sampling import check_ops_setting
    from rootedgan.tools import projector

    if args.num_steps < 1:
        raise UserError(f"--num-steps must be >= 1, got {args.num_steps}")
    if args.w_avg_samples < 1:
        raise UserError(f"--w-avg-samples must be >= 1, got {args.w_avg_samples}")
    check_ops_setting()
    outdir = ensure_writable_dir(args.outdir)
    video = projector.open_video(outdir) if args.save_video else None  # a missing imageio: say so first
    done = False
    try:
        _project(args, outdir, video)
        done = True
    finally:
        if video is not None:
            writer, path = video
            writer.close()
            if done:
                print(f"wrote {path}")
            else:
                path.unlink(missing_ok=True)  # no half-written video left behind
    return 0


def _project(args: argparse.Namespace, outdir, video) -> None:
    from rootedgan.checkpoints import load_network
    from rootedgan.checkpoints.download import sha256_of
    from rootedgan.tools import projector

    device = resolve_device(args.device)
    nets = load_network(args.network, base=args.base)
    G = nets.get(args.which) or nets.get("G_ema") or nets.get("G")
    if G is None:
        raise UserError(f"{args.network} holds no generator")
    G = G.eval().requires_grad_(False).to(device)
    c = class_labels(G.c_dim, args.class_idx, 1) if G.c_dim else None
    if G.img_channels != 3:
        raise UserError(
            f"the projector's VGG16 distance needs RGB images; {args.network} has {G.img_channels}"
        )
    target = projector.load_target(args.target, G.img_resolution)
    vgg_file = projector.resolve_vgg16(args.vgg16)
    print(f"VGG16 LPIPS network: {vgg_file} (sha256 {sha256_of(vgg_file)})")
    vgg = projector.load_vgg16(vgg_file, device=device)

    start = time.perf_counter()
    with tqdm(total=args.num_steps, desc="project", unit="step", leave=False) as bar:

        def progress(step: int, dist: float, loss: float) -> None:
            bar.set_postfix(dist=f"{dist:.4g}", loss=f"{loss:.4g}", refresh=False)
            bar.update(1)

        result = projector.project(
            G,
            torch.from_numpy(target).permute(2, 0, 1),
            vgg,
            num_steps=args.num_steps,
            w_avg_samples=args.w_avg_samples,
            seed=args.seed,
            c=c,
            device=device,
            callback=progress,
        )
    print(
        f"projected in {time.perf_counter() - start:.1f} s: LPIPS distance {result.dist[0]:.4g} -> "
        f"{result.dist[-1]:.4g} over {args.num_steps} steps"
    )
    save_image_atomic(target, outdir / "target.png")
    with torch.no_grad():
        proj = to_uint8(G.synthesis(result.w.to(device), noise_mode="const"))[0]
    save_image_atomic(proj, outdir / "proj.png")
    projector.write_projected_w(outdir / "projected_w.npz", result.w)
    print(f"wrote {outdir / 'target.png'}, {outdir / 'proj.png'} and {outdir / 'projected_w.npz'}")
    if video is not None:
        writer, path = video
        limit = projector.GIF_MAX_FRAMES if path.suffix == ".gif" else None
        for frame in projector.video_frames(G, result.w_steps, target, max_frames=limit):
            writer.append_data(frame)
