"""``rootedgan fid`` as a function (:func:`score`): FID / KID of a network or an image folder against a
reference set, one record per metric appended to ``metric-<name>.jsonl``; errors name the option.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rootedgan.data import ImageDataset
from rootedgan.errors import UserError
from rootedgan.imaging import ensure_writable_dir
from rootedgan.metrics.evaluator import (
    Evaluator,
    MetricSpec,
    check_image_count,
    metric_mode,
    metric_name,
    parse_metric,
)
from rootedgan.metrics.features import DEFAULT_MODE, DatasetImages, FolderImages, Mode, check_mode
from rootedgan.metrics.stats import GaussianStats
from rootedgan.runs import append_metric_record
from rootedgan.sampling import check_ops_setting, check_truncation, load_generator, resolve_device


@dataclass
class ScoreOptions:
    """What ``rootedgan fid`` takes (its options, same names and defaults). ``data``: reference images
    (folder or zip) or statistics (``.npz``); exactly one of ``network`` and ``images`` is scored."""

    data: str
    network: str | None = None
    images: str | None = None
    metrics: str = "fid50k_full"
    mirror: bool = False
    num_gen: int | None = None
    inception: str | None = None
    device: str = "auto"
    mode: str | None = None
    bf16: bool = False
    resolution: int | None = None
    which: str = "G_ema"
    trunc: float = 1.0
    base: str | None = None
    noise_mode: str = "random"
    seed: int = 0
    batch: int = 64
    workers: int | None = None
    outdir: str | None = None
    no_cache: bool = False
    no_download: bool = False


@dataclass
class Scores:
    """``results``: ``{metric name: value}``, appended to ``outdir/metric-<name>.jsonl``."""

    results: dict[str, float]
    outdir: Path
    seconds: float


def _specs(o: ScoreOptions) -> tuple[list[MetricSpec], Mode]:
    """The metrics asked for and the protocol, after the checks of the options that need no file."""
    names = [m for m in (s.strip() for s in o.metrics.split(",")) if m]
    if not names:
        raise UserError("--metrics is empty: give e.g. fid50k_full,kid50k_full")
    if o.num_gen is not None and o.num_gen < 2:
        raise UserError(f"--num-gen must be >= 2, got {o.num_gen}")
    if o.batch < 1 or (o.workers is not None and o.workers < 0):
        raise UserError("--batch must be >= 1 and --workers >= 0")
    check_truncation(o.trunc)
    check_ops_setting()
    stated = sorted({m for m in map(metric_mode, names) if m is not None})
    if o.mode is None and len(stated) > 1:
        raise UserError(f"--metrics {o.metrics} mixes protocols ({', '.join(stated)}): one per run")
    mode = check_mode(o.mode or (stated[0] if stated else DEFAULT_MODE))
    if o.bf16 and mode != "fast":
        raise UserError(f"--bf16 needs --mode fast (the {mode} protocol runs Inception in float32)")
    return [parse_metric(n, o.num_gen, mode) for n in names], mode


def _outdir(o: ScoreOptions) -> Path:
    network = Path(o.network).expanduser() if o.network is not None else None
    default = network.resolve().parent if network is not None and network.is_file() else "."
    return ensure_writable_dir(o.outdir if o.outdir is not None else default)


def _reference(
    o: ScoreOptions, evaluator: Evaluator, G: Any, need_feats: bool, say: Callable[[str], None]
) -> tuple[GaussianStats, np.ndarray | None, str]:
    """``(statistics, labels for a conditional G or None, description)`` of the reference ``o.data``."""
    stats_file = Path(o.data).expanduser()
    if stats_file.is_file() and stats_file.suffix == ".npz":
        if o.mirror or o.resolution:
            raise UserError("--mirror/--resolution do not apply to precomputed statistics (--data *.npz)")
        return evaluator.load_reference_file(stats_file, need_features=need_feats), None, str(stats_file)
    labels = None
    if o.images is not None and o.resolution is None:
        # folder against folder: every image as it is, any size, as cleanfid.compute_fid(A, B) reads them
        source: FolderImages | DatasetImages = FolderImages(o.data, xflip=o.mirror)
    else:
        res, channels, cond = (
            (G.img_resolution, G.img_channels, G.c_dim > 0) if G is not None else (None, 3, False)
        )
        dataset = ImageDataset(
            o.data, resolution=o.resolution or res, channels=channels, xflip=o.mirror, use_labels=cond
        )
        labels = dataset.labels if dataset.has_labels else None
        source = DatasetImages(dataset)
    described = source.describe()
    say(f"reference: {described}")
    return evaluator.reference_stats(source, keep_features=need_feats), labels, described


def _score_images(
    o: ScoreOptions,
    evaluator: Evaluator,
    images: FolderImages,
    reference: GaussianStats,
    specs: list[MetricSpec],
    say: Callable[[str], None],
) -> tuple[dict[str, float], dict[str, int]]:
    """The metrics of (the first ``num_gen`` of) a folder, renamed for the count it has."""
    count = len(images) if o.num_gen is None else min(len(images), o.num_gen)
    renamed = [MetricSpec(metric_name(s.kind, count, s.mode), s.kind, count, s.mode) for s in specs]
    for old, new in zip(specs, renamed, strict=True):
        if old.name != new.name:
            say(f"note: {o.images} has {count} images: reporting {old.name} as {new.name}")
    need_feats = any(s.kind == "kid" for s in specs)
    stats = evaluator.images_stats(images, keep_features=need_feats, max_images=count, desc="features")
    results = evaluator.metrics(reference, stats, list(dict.fromkeys(renamed)), kid_seed=o.seed)
    return results, {s.name: count for s in renamed}


def score(options: ScoreOptions, say: Callable[[str], None] = print) -> Scores:
    """Check the options, announce the protocol and the Inception file (before any work), score, and
    append the records; ``say`` gets the progress lines (the reference read, renamed metrics)."""
    o, start = options, time.time()
    specs, mode = _specs(o)
    need_feats = any(s.kind == "kid" for s in specs)
    outdir = _outdir(o)
    device = resolve_device(o.device)
    images = FolderImages(o.images) if o.images is not None else None
    if images is not None:
        check_image_count(images)
    dtype = torch.bfloat16 if o.bf16 else torch.float32
    flags = dict(download=not o.no_download, use_cache=not o.no_cache)
    evaluator = Evaluator(o.inception, device, mode, dtype, o.batch, o.workers, **flags)
    # load Inception first: a missing file fails before any work, and the file is named before any work
    evaluator.extractor  # noqa: B018
    G = None
    if o.network is not None:
        G = load_generator(o.network, o.which, o.base).eval().requires_grad_(False).to(device)
    reference, labels, ref_desc = _reference(o, evaluator, G, need_feats, say)
    if G is not None:
        kw = dict(seed=o.seed, labels=labels, truncation_psi=o.trunc, noise_mode=o.noise_mode)
        results = evaluator.evaluate_generator(G, reference, specs, **kw)
        counts, scored = {s.name: s.num_gen for s in specs}, o.network
    else:
        assert images is not None
        results, counts = _score_images(o, evaluator, images, reference, specs, say)
        scored = o.images
    seconds = time.time() - start
    num_gpus = 1 if device.type == "cuda" else 0
    for name, value in results.items():
        info = dict(num_gen=counts[name], reference=ref_desc)
        record = evaluator.metric_record(name, value, seconds, scored, num_gpus, **info)
        append_metric_record(outdir, name, record)
    return Scores(results, outdir, seconds)
