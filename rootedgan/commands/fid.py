"""``rootedgan fid``: FID / KID of a network or an image folder against a reference data set.

``rootedgan fid --data REF (--network X | --images DIR) --metrics fid50k_full,kid50k_full``

* ``--data``: the reference images, or statistics (``.npz`` with ``mu``/``sigma``: ours or clean-fid's;
  refused in one line when they record another protocol or another Inception file). With ``--network``
  the images are read with the training data rules at the network's resolution; with ``--images`` they
  are read as they are, any size, like ``cleanfid.compute_fid(A, B)`` (``--resolution`` brings back the
  training rules);
* ``--network``: any checkpoint ``load_network`` reads; ``fid50k_full`` generates 50,000 images
  (``--num-gen`` overrides the count, and the name follows it);
* ``--images``: a folder or zip of images of any size, all used (``--num-gen`` caps the count).

The protocol is ``--mode``: ``legacy_tensorflow`` (the default; NVIDIA's, whose numbers are the published
StyleGAN ones, under NVIDIA's names ``fid50k_full``/``kid50k_full``), ``clean`` (clean-fid's default
protocol, under ``clean_fid50k_full``/``clean_kid50k_full``) or ``fast`` (our approximation of ``clean``
on the device, ``approx_clean_*``). A prefixed metric name selects its protocol (``--metrics
clean_fid50k_full``). Why the default is NVIDIA's: :mod:`rootedgan.metrics.evaluator`.

Before any work the protocol and the Inception file (path, sha256, where it was found) are printed.
Values are printed and appended as JSON lines to ``metric-<name>.jsonl`` (NVIDIA's format, plus the
protocol and the Inception file) in ``--outdir`` (default: the network's folder, else the current one).
Reference statistics are cached (``$ROOTEDGAN_CACHE/fid-stats``). NVIDIA's Inception file is needed:
``--inception PATH`` or ``$ROOTEDGAN_INCEPTION``, else it is looked for in the caches and downloaded.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from rootedgan.errors import UserError
from rootedgan.runs import append_metric_record

HELP = "FID/KID of a network or an image folder against a data set (NVIDIA's or clean-fid's protocol)."
MODES = ("legacy_tensorflow", "clean", "fast")  # rootedgan.metrics.MODES, without importing it for --help


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="reference images (folder or zip) or statistics (.npz)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--network", help="checkpoint path, URL or shortcut name of the generator")
    source.add_argument("--images", help="folder or zip of images to score instead of a network")
    parser.add_argument(
        "--metrics",
        default="fid50k_full",
        help="comma-separated: fidNk_full, kidNk_full, optionally prefixed by the protocol "
        "(clean_fid50k_full); default fid50k_full",
    )
    parser.add_argument("--mirror", action="store_true", help="add x-flipped copies of the reference images")
    parser.add_argument("--num-gen", type=int, default=None, help="generated (or used) images, overrides N")
    parser.add_argument("--inception", default=None, help="NVIDIA's inception-2015-12-05.pt (offline use)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    parser.add_argument(
        "--mode",
        choices=MODES,
        default=None,
        help="FID protocol: legacy_tensorflow = NVIDIA's (default; comparable with published StyleGAN "
        "FIDs; names fid50k_full...), clean = clean-fid's (clean_fid50k_full...), fast = an approximation "
        "of clean on the device (approx_clean_fid50k_full...); default: the protocol the metric names "
        "state, else legacy_tensorflow",
    )
    parser.add_argument("--bf16", action="store_true", help="Inception in bf16 (fast mode only)")
    parser.add_argument("--resolution", type=int, default=None, help="reference resolution (default: G's)")
    parser.add_argument("--which", choices=["G_ema", "G"], default="G_ema", help="network in the checkpoint")
    parser.add_argument("--trunc", type=float, default=1.0, help="truncation psi (default 1)")
    parser.add_argument(
        "--base", default=None, help="base checkpoint of an orthogonal-finetuning adapter --network"
    )
    parser.add_argument("--noise-mode", choices=["random", "const", "none"], default="random")
    parser.add_argument("--seed", type=int, default=0, help="seed of the latents and of the KID subsets")
    parser.add_argument("--batch", type=int, default=64, help="images per generator/Inception batch")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="CPU workers for decoding and resizing (default: min(4, usable cores))",
    )
    parser.add_argument(
        "--outdir", default=None, help="where metric-*.jsonl go (default: the network's folder)"
    )
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write cached statistics")
    parser.add_argument("--no-download", action="store_true", help="never download the Inception file")


def _outdir(args: argparse.Namespace) -> Path:
    from rootedgan.imaging import ensure_writable_dir

    if args.outdir is not None:
        return ensure_writable_dir(args.outdir)
    if args.network is not None and Path(args.network).expanduser().is_file():
        return ensure_writable_dir(Path(args.network).expanduser().resolve().parent)
    return ensure_writable_dir(".")


def run(args: argparse.Namespace) -> int:
    from rootedgan.data import ImageDataset
    from rootedgan.metrics.evaluator import (
        DEFAULT_MODE,
        Evaluator,
        format_time,
        metric_mode,
        metric_name,
        parse_metric,
    )
    from rootedgan.metrics.features import DatasetImages, FolderImages, default_workers
    from rootedgan.sampling import check_ops_setting, check_truncation, resolve_device

    start = time.time()
    names = [m for m in (s.strip() for s in args.metrics.split(",")) if m]
    if not names:
        raise UserError("--metrics is empty: give e.g. fid50k_full,kid50k_full")
    if args.num_gen is not None and args.num_gen < 2:
        raise UserError(f"--num-gen must be >= 2, got {args.num_gen}")
    workers = default_workers() if args.workers is None else args.workers
    if args.batch < 1 or workers < 0:
        raise UserError("--batch must be >= 1 and --workers >= 0")
    check_truncation(args.trunc)
    check_ops_setting()
    stated = sorted({m for m in map(metric_mode, names) if m is not None})
    if args.mode is None and len(stated) > 1:
        raise UserError(f"--metrics {args.metrics} mixes protocols ({', '.join(stated)}): one per run")
    mode = args.mode or (stated[0] if stated else DEFAULT_MODE)
    if args.bf16 and mode != "fast":
        raise UserError(f"--bf16 needs --mode fast (the {mode} protocol runs Inception in float32)")
    specs = [parse_metric(n, args.num_gen, mode) for n in names]
    need_feats = any(s.kind == "kid" for s in specs)
    outdir = _outdir(args)
    device = resolve_device(args.device)
    images = FolderImages(args.images) if args.images is not None else None
    if images is not None and len(images) < 2:
        raise UserError(f"{args.images} has {len(images)} image: FID and KID need at least 2 (a covariance)")
    evaluator = Evaluator(
        inception=args.inception,
        device=device,
        mode=mode,
        dtype=torch.bfloat16 if args.bf16 else torch.float32,
        batch_size=args.batch,
        num_workers=workers,
        progress=True,
        download=not args.no_download,
        use_cache=not args.no_cache,
        announce=True,
    )
    # load Inception first: a missing file fails before any work, and the file is named before any work
    evaluator.extractor  # noqa: B018

    G = None
    if args.network is not None:
        from rootedgan.checkpoints import load_network

        nets = load_network(args.network, base=args.base)
        G = nets.get(args.which) or nets.get("G_ema") or nets.get("G")
        if G is None:
            raise UserError(f"{args.network} holds no generator")
        G = G.eval().requires_grad_(False).to(device)

    # the reference
    stats_file = Path(args.data).expanduser()
    labels = None
    if stats_file.is_file() and stats_file.suffix == ".npz":
        if args.mirror or args.resolution:
            raise UserError("--mirror/--resolution do not apply to precomputed statistics (--data *.npz)")
        reference = evaluator.load_reference_file(stats_file, need_features=need_feats)
        ref_desc = str(stats_file)
    elif images is not None and args.resolution is None:
        # folder against folder: every image as it is, any size, as cleanfid.compute_fid(A, B) reads them
        source = FolderImages(args.data, xflip=args.mirror)
        ref_desc = source.describe()
        print(f"reference: {ref_desc}")
        reference = evaluator.reference_stats(source, keep_features=need_feats)
    else:
        resolution = args.resolution or (G.img_resolution if G is not None else None)
        dataset = ImageDataset(
            args.data,
            resolution=resolution,
            channels=G.img_channels if G is not None else 3,
            xflip=args.mirror,
            use_labels=G is not None and G.c_dim > 0,
        )
        labels = dataset.labels if dataset.has_labels else None
        source = DatasetImages(dataset)
        ref_desc = source.describe()
        print(f"reference: {ref_desc}")
        reference = evaluator.reference_stats(source, keep_features=need_feats)

    # the scored set
    if G is not None:
        results = evaluator.evaluate_generator(
            G,
            reference,
            specs,
            seed=args.seed,
            labels=labels,
            truncation_psi=args.trunc,
            noise_mode=args.noise_mode,
        )
        counts = {s.name: s.num_gen for s in specs}
        scored = args.network
    else:
        assert images is not None
        count = len(images) if args.num_gen is None else min(len(images), args.num_gen)
        renamed = [type(s)(metric_name(s.kind, count, mode), s.kind, count, mode) for s in specs]
        for old, new in zip(specs, renamed, strict=True):
            if old.name != new.name:
                print(f"note: {args.images} has {count} images: reporting {old.name} as {new.name}")
        stats = evaluator.images_stats(images, keep_features=need_feats, max_images=count, desc="features")
        results = evaluator.metrics(reference, stats, list(dict.fromkeys(renamed)), kid_seed=args.seed)
        counts = {s.name: count for s in renamed}
        scored = args.images

    seconds = time.time() - start
    protocol = evaluator.record_fields()
    for name, value in results.items():
        record = {
            "results": {name: value},
            "metric": name,
            "total_time": seconds,
            "total_time_str": format_time(seconds),
            "num_gpus": 1 if device.type == "cuda" else 0,
            "snapshot_pkl": scored,
            "timestamp": time.time(),
            "num_gen": counts[name],
            "reference": ref_desc,
            **protocol,
        }
        append_metric_record(outdir, name, record)
        print(f"{name}: {value:.6g}")
    print(f"({format_time(seconds)}; results appended to {outdir}/metric-*.jsonl)")
    return 0
