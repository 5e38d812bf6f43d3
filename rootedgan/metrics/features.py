"""Inception features of image sets and generators under the three FID protocols (``mode``).

``legacy_tensorflow`` (NVIDIA's): each uint8 image, at its own size, goes as float32 to the Inception file's
``forward``, which resizes it inside as TensorFlow 1 did, exactly as NVIDIA's code and clean-fid call it; all
on ``device``. ``clean``: clean-fid's own resize (``build_resizer("clean")``, PIL bicubic) on the CPU, then
the Inception layers as clean-fid calls them. In both, features equal clean-fid's by construction.
``fast``: resize (``F.interpolate(bicubic, antialias=True)``, PIL's filter) and Inception (float32 or bf16)
on ``device``; its deviation from ``clean`` is measured by ``bench/fid.py``.

Generated images are rounded to uint8 as if saved to PNG (NVIDIA's ``clamp(x * 127.5 + 128)``), so a
generator scores what its saved images would. The latents of sample ``i`` depend only on ``(seed, i)``: it
belongs to chunk ``i // LATENT_CHUNK``, whose latents are ``randn([LATENT_CHUNK, z_dim])`` seeded with
``(seed, chunk)``; rank ``r`` of ``W`` takes chunks ``r, r + W, ...``, so the set does not depend on the
number of ranks. ``noise_mode="random"`` (NVIDIA's setting) draws noise seeded per chunk and batch.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from rootedgan import data
from rootedgan.data import ZipHandle
from rootedgan.errors import UserError
from rootedgan.metrics._cleanfid_import import import_cleanfid
from rootedgan.metrics.inception import INPUT_SIZE, InceptionFeatures
from rootedgan.metrics.stats import FeatureStats
from rootedgan.sampling import derive_seed

LATENT_CHUNK = 256
Mode = Literal["legacy_tensorflow", "clean", "fast"]
MODES: tuple[str, ...] = ("legacy_tensorflow", "clean", "fast")
DEFAULT_MODE: Mode = "legacy_tensorflow"  # why: README, "FID / KID"


def check_mode(mode: str) -> Mode:
    """``mode`` if it is a protocol (:data:`MODES`), else a :class:`UserError`."""
    if mode not in MODES:
        raise UserError(f"unknown FID protocol (mode) {mode!r}: use one of {', '.join(MODES)}")
    return mode  # type: ignore[return-value]


def usable_cores() -> int:
    """CPU cores this process may use: its affinity mask, capped by a cgroup v2 CPU quota (containers)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, int(int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def default_workers() -> int:
    """The default number of CPU workers: ``min(4, usable cores)``."""
    return min(4, usable_cores())


@functools.cache
def _clean_resizer() -> Callable[[np.ndarray], np.ndarray]:
    import_cleanfid()  # clean-fid is optional: imported on first use
    from cleanfid.resize import build_resizer

    return build_resizer("clean")


def clean_resize(image: np.ndarray) -> np.ndarray:
    """clean-fid's "clean" resize: ``[H, W, 3]`` uint8 (or float in [0, 255]) -> ``[299, 299, 3]`` float32."""
    return _clean_resizer()(image)


def fast_resize(images: torch.Tensor) -> torch.Tensor:
    """``[N, 3, H, W]`` values in [0, 255] -> ``[N, 3, 299, 299]`` float32: antialiased bicubic, clipped."""
    x = images.to(torch.float32)
    if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
        x = F.interpolate(x, size=(INPUT_SIZE,) * 2, mode="bicubic", align_corners=False, antialias=True)
    return x.clamp(0, 255)


def to_uint8_nchw(images: torch.Tensor) -> torch.Tensor:
    """Network images ``[N, C, H, W]`` in [-1, 1] -> uint8 on the same device (NVIDIA's rounding)."""
    return (images.detach().to(torch.float32) * 127.5 + 128).clamp(0, 255).to(torch.uint8)


class ImageSource:
    """An indexable set of uint8 RGB images ``[H, W, 3]`` with a content key for caching."""

    path: str

    def __len__(self) -> int:
        raise NotImplementedError

    def image(self, index: int) -> np.ndarray:
        """Image ``index`` as uint8 ``[H, W, 3]``."""
        raise NotImplementedError

    def content_key(self) -> str:
        """A digest of everything that determines the images (names, bytes, processing)."""
        raise NotImplementedError

    def describe(self) -> str:
        return f"{len(self)} images in {self.path}"


class DatasetImages(ImageSource):
    """A :class:`rootedgan.data.ImageDataset` (its crop/resize/channel rules and xflip) as RGB images."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset
        self.path = str(dataset.path)

    def __len__(self) -> int:
        return len(self.dataset)

    def image(self, index: int) -> np.ndarray:
        img = self.dataset[index][0].numpy().transpose(1, 2, 0)
        return np.repeat(img, 3, axis=2) if img.shape[2] == 1 else np.ascontiguousarray(img)

    def content_key(self) -> str:
        return "dataset:" + self.dataset.content_key()

    def describe(self) -> str:
        d = self.dataset
        flip = " x2 mirrored" if d.xflip else ""
        return f"{d.num_images} images{flip} at {d.resolution}x{d.resolution} in {self.path}"


class FolderImages(ZipHandle, ImageSource):
    """Every image file under a folder or in a zip (by relative path, hidden ones skipped), any size, decoded
    as clean-fid does (``convert("RGB")``), with the size limits of :mod:`rootedgan.data`. ``xflip`` appends
    a mirrored copy of every image (index ``i >= N`` is image ``i - N`` flipped left-right)."""

    def __init__(self, path: str | os.PathLike[str], xflip: bool = False) -> None:
        self.path = str(path)
        self.xflip = bool(xflip)
        self.max_bytes = data.max_bytes_of(data.DEFAULT_MAX_IMAGE_MB)
        self.is_zip, names = data.list_files(self.path, UserError, "image path")
        self.names = [n for n in names if data.is_image_name(n)]
        if not self.names:
            raise UserError(f"no images found under {self.path}")

    def __len__(self) -> int:
        return len(self.names) * (2 if self.xflip else 1)

    def _read(self, name: str) -> bytes:
        return data.read_image_bytes(self.path, name, self._get_zip(), self.max_bytes)

    def image(self, index: int) -> np.ndarray:
        flip = index >= len(self.names)
        name = self.names[index - len(self.names) if flip else index]
        try:
            with data.open_image(self._read(name), data.DEFAULT_MAX_IMAGE_PIXELS) as img:
                arr = np.array(img.convert("RGB"))
            return np.ascontiguousarray(arr[:, ::-1]) if flip else arr
        except UserError:
            raise
        except Exception as err:
            reason = " ".join(str(err).split())[:300] or type(err).__name__
            raise UserError(f"{name!r} in {self.path}: cannot read image: {reason}") from None

    def content_key(self) -> str:
        h = hashlib.sha256(b"folder-images-v1\0")
        for name in self.names:
            data = self._read(name)
            h.update(name.encode() + b"\0" + str(len(data)).encode() + b"\0" + data)
        return "folder:" + h.hexdigest() + (":xflip" if self.xflip else "")

    def describe(self) -> str:
        flip = f" + {len(self.names)} mirrored" if self.xflip else ""
        return f"{len(self.names)} images{flip} in {self.path} (as they are, any size)"


class _Resized(Dataset):
    """Images ``indices`` of a source, as ``[3, 299, 299]`` float32 (clean resize) or uint8 at their size."""

    def __init__(self, source: ImageSource, indices: Sequence[int], resize: bool) -> None:
        self.source, self.indices, self.resize = source, list(indices), resize

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> torch.Tensor:
        img = self.source.image(self.indices[i])
        img = clean_resize(img) if self.resize else img
        return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))


def chunk_latents(seed: int, chunk: int, z_dim: int) -> torch.Tensor:
    """Latents ``[LATENT_CHUNK, z_dim]`` of chunk ``chunk`` (samples ``chunk * LATENT_CHUNK ...``)."""
    gen = torch.Generator().manual_seed(derive_seed(seed, 0, chunk))
    return torch.randn([LATENT_CHUNK, z_dim], generator=gen)


def _chunk_labels(labels: np.ndarray | None, seed: int, chunk: int, c_dim: int) -> torch.Tensor:
    if c_dim == 0:
        return torch.zeros([LATENT_CHUNK, 0])
    if labels is None or len(labels) == 0:
        raise UserError(
            f"the generator is conditional (c_dim={c_dim}): FID needs the data set's labels to draw "
            "classes from (a dataset.json; use_labels)"
        )
    rng = np.random.RandomState(derive_seed(seed, 0, chunk) % (2**32))
    return torch.from_numpy(np.asarray(labels, np.float32)[rng.randint(len(labels), size=LATENT_CHUNK)])


def generated_uint8(
    G: torch.nn.Module,
    num_gen: int,
    seed: int = 0,
    batch_size: int = 64,
    rank: int = 0,
    world: int = 1,
    labels: np.ndarray | None = None,
    truncation_psi: float = 1.0,
    noise_mode: str = "random",
    latents: torch.Tensor | None = None,
) -> Iterator[torch.Tensor]:
    """Yield uint8 RGB batches ``[B, 3, H, W]`` (on G's device) of rank ``rank``'s share of ``num_gen``
    seeded samples (module docstring): every evaluation sees the same latents, whatever the batch size."""
    device = next(G.parameters()).device
    num_chunks = (num_gen + LATENT_CHUNK - 1) // LATENT_CHUNK
    for chunk in range(rank, num_chunks, world):
        start = chunk * LATENT_CHUNK
        size = min(LATENT_CHUNK, num_gen - start)
        if latents is not None:
            z_chunk = latents[start : start + size].to(torch.float32)
        else:
            z_chunk = chunk_latents(seed, chunk, G.z_dim)[:size]
        c_chunk = _chunk_labels(labels, seed, chunk, G.c_dim)[:size]
        for offset in range(0, size, batch_size):
            z = z_chunk[offset : offset + batch_size].to(device)
            c = c_chunk[offset : offset + batch_size].to(device)
            noise_seed = (int(seed) * 7_919 + chunk * 65_537 + offset) % (2**63 - 1)
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.default_generator.manual_seed(noise_seed)
                if device.type == "cuda":
                    with torch.cuda.device(device):
                        torch.cuda.manual_seed(noise_seed)
                img = G(z, c, truncation_psi=truncation_psi, noise_mode=noise_mode)
            img = to_uint8_nchw(img)
            yield img.repeat(1, 3, 1, 1) if img.shape[1] == 1 else img  # grayscale as RGB


class FeatureExtractor:
    """Inception features of image sets and generators into :class:`FeatureStats`, for the
    :class:`~rootedgan.metrics.evaluator.Evaluator`. ``num_workers`` (None: :func:`default_workers`):
    DataLoader workers for image sets, threads resizing generated images in the clean mode (0: none)."""

    def __init__(
        self,
        inception: InceptionFeatures,
        mode: Mode = DEFAULT_MODE,
        batch_size: int = 64,
        num_workers: int | None = None,
        progress: bool = True,
    ) -> None:
        if batch_size < 1:
            raise UserError(f"the FID batch size must be >= 1, got {batch_size}")
        self.inception, self.batch_size, self.progress = inception, int(batch_size), progress
        self.mode = check_mode(mode)
        self.num_workers = default_workers() if num_workers is None else max(0, int(num_workers))

    @property
    def device(self) -> torch.device:
        return next(self.inception.parameters()).device

    def _bar(self, total: int, desc: str, rank: int) -> tqdm:
        return tqdm(total=total, desc=desc, unit="img", disable=not self.progress or rank != 0, leave=False)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        """Features of uint8 ``[N, 3, H, W]`` on the device: resized by us (fast) or inside Inception."""
        return self.inception(fast_resize(x) if self.mode == "fast" else x.to(torch.float32))

    def images_stats(
        self,
        source: ImageSource,
        stats: FeatureStats,
        rank: int = 0,
        world: int = 1,
        desc: str = "features",
        max_images: int | None = None,
    ) -> FeatureStats:
        """Add the features of rank ``rank``'s share (``i % world == rank``) of ``source`` to ``stats``."""
        count = len(source) if max_images is None else min(len(source), max_images)
        clean = self.mode == "clean"
        data = _Resized(source, range(rank, count, world), resize=clean)
        collate = None if clean else list  # images of any size stay a list
        loader = DataLoader(data, self.batch_size, num_workers=self.num_workers, collate_fn=collate)
        bar = self._bar(count, desc, rank)
        for batch in loader:
            if clean:
                feats = self.inception(batch.to(self.device))
            else:  # images of any size: one Inception call per run of same-size images
                groups = itertools.groupby(batch, key=lambda img: img.shape)
                feats = torch.cat([self._features(torch.stack(list(g)).to(self.device)) for _, g in groups])
            stats.update(feats)
            bar.update(len(feats) * world)
        bar.close()
        return stats

    @torch.no_grad()
    def generator_stats(
        self,
        G: torch.nn.Module,
        num_gen: int,
        stats: FeatureStats,
        rank: int = 0,
        world: int = 1,
        desc: str = "generate",
        **generate: Any,
    ) -> FeatureStats:
        """Add the features of rank ``rank``'s share of ``num_gen`` samples of ``G`` to ``stats``.
        ``generate``: ``seed``, ``labels [L, c_dim]`` (a conditional ``G``'s classes are drawn from these
        rows), ``truncation_psi``, ``noise_mode``, ``latents [num_gen, z_dim]`` (instead of seeded ones)."""
        if num_gen < 1:
            raise UserError(f"the number of generated images must be >= 1, got {num_gen}")
        latents = generate.get("latents")
        if latents is not None and len(latents) < num_gen:
            raise ValueError(f"{len(latents)} latents given for {num_gen} images")
        was_training = G.training
        G.eval()
        bar = self._bar(num_gen, desc, rank)
        batches = generated_uint8(G, num_gen, batch_size=self.batch_size, rank=rank, world=world, **generate)

        def add(feats: torch.Tensor) -> None:
            stats.update(feats)
            bar.update(len(feats) * world)

        try:
            if self.mode != "clean":  # everything on the device
                for images in batches:
                    add(self._features(images.to(self.device)))
                return stats
            # clean: batch i is resized in the pool while G produces batch i + 1
            threads = ThreadPoolExecutor(self.num_workers) if self.num_workers else contextlib.nullcontext()
            with threads as pool:
                resize_all = pool.map if pool is not None else map
                pending: Iterable[np.ndarray] | None = None
                for images in batches:
                    resized = resize_all(clean_resize, images.permute(0, 2, 3, 1).cpu().numpy())
                    if pending is not None:
                        add(self._resized_features(pending))
                    pending = resized
                if pending is not None:
                    add(self._resized_features(pending))
        finally:
            bar.close()
            G.train(was_training)
        return stats

    def _resized_features(self, resized: Iterable[np.ndarray]) -> torch.Tensor:
        """Features of clean-resized ``[299, 299, 3]`` arrays, as a contiguous NCHW batch like clean-fid's (a
        channels-last view makes oneDNN pick other kernels: features differ by ~1e-6 on AVX2 CPUs)."""
        batch = np.ascontiguousarray(np.stack(list(resized)).transpose(0, 3, 1, 2))
        return self.inception(torch.from_numpy(batch).to(self.device))
