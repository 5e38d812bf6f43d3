"""Inception features of image sets and generators under the three FID protocols (``mode``).

NVIDIA's protocol (``mode="legacy_tensorflow"``, clean-fid's mode of that name; the default)
    Every uint8 image, at its own size, goes as float32 to the Inception file's own ``forward``, which
    resizes it to 299x299 inside (TensorFlow 1's bilinear resize, no antialiasing), exactly as NVIDIA's
    StyleGAN metric code and clean-fid's ``legacy_tensorflow`` mode call it. Features equal clean-fid's
    by construction. Nothing is resized on the CPU: images of one size are batched together and the whole
    path runs on ``device``. FIDs are comparable with those published with NVIDIA's code.

clean-fid's protocol (``mode="clean"``)
    clean-fid's own resize function (``cleanfid.resize.build_resizer("clean")``: PIL bicubic on each
    channel in float mode to 299x299, clipped to [0, 255]) on every uint8 image, then the Inception
    layers as clean-fid calls them. Features equal clean-fid's by construction. The resize runs on
    the CPU: in DataLoader workers for image sets, in a thread pool for generated images. FIDs are
    comparable with clean-fid's ``clean`` numbers, not with NVIDIA's.

Our approximation of the clean protocol (``mode="fast"``)
    Everything on ``device``: generation, the uint8 rounding, the resize (``F.interpolate(bicubic,
    antialias=True)``, the same filter as PIL's, computed in float32) and Inception, optionally in
    bf16 (``dtype``). Its deviation from the clean path is measured by ``bench/fid.py`` (float32:
    about 1e-7 relative in FID with the stand-in network; bf16: about 1e-4). Not exact, so its metrics
    carry their own names (``approx_clean_fid50k_full``, :mod:`rootedgan.metrics.evaluator`).

Generated images are rounded to uint8 as if saved to PNG (NVIDIA's rule ``clamp(x * 127.5 + 128)``),
so a generator scores what its saved images would score. Grayscale images are repeated to RGB.

Latents of generated sample ``i`` depend only on ``(seed, i)``: sample ``i`` belongs to chunk
``i // LATENT_CHUNK``, whose latents are ``randn([LATENT_CHUNK, z_dim])`` from a generator seeded with
``(seed, chunk)``. Under several ranks, rank ``r`` of ``W`` takes chunks ``r, r + W, ...``, so the
generated set does not depend on the number of ranks. ``noise_mode="random"`` (NVIDIA's metric
setting) draws the noise from a torch generator seeded per chunk and batch.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from rootedgan import data
from rootedgan.data import ZipHandle
from rootedgan.errors import UserError
from rootedgan.metrics.inception import INPUT_SIZE, InceptionFeatures
from rootedgan.metrics.stats import FeatureStats
from rootedgan.sampling import derive_seed

__all__ = [
    "LATENT_CHUNK",
    "DEFAULT_MODE",
    "MODES",
    "DatasetImages",
    "FeatureExtractor",
    "FolderImages",
    "ImageSource",
    "chunk_latents",
    "clean_resize",
    "default_workers",
    "fast_resize",
    "usable_cores",
]

LATENT_CHUNK = 256
Mode = Literal["legacy_tensorflow", "clean", "fast"]
MODES: tuple[str, ...] = ("legacy_tensorflow", "clean", "fast")
DEFAULT_MODE: Mode = "legacy_tensorflow"  # why: rootedgan.metrics.evaluator's module docstring
MAX_DEFAULT_WORKERS = 4


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
    return min(MAX_DEFAULT_WORKERS, usable_cores())


# --------------------------------------------------------------------------------------------------
# Resizing


@functools.cache
def _clean_resizer() -> Callable[[np.ndarray], np.ndarray]:
    from rootedgan.metrics._cleanfid_import import import_cleanfid

    import_cleanfid()
    from cleanfid.resize import build_resizer

    return build_resizer("clean")


def clean_resize(image: np.ndarray) -> np.ndarray:
    """clean-fid's "clean" resize: ``[H, W, 3]`` uint8 (or float in [0, 255]) -> ``[299, 299, 3]`` float32."""
    return _clean_resizer()(image)


def fast_resize(images: torch.Tensor) -> torch.Tensor:
    """``[N, 3, H, W]`` values in [0, 255] -> ``[N, 3, 299, 299]`` float32: antialiased bicubic, clipped."""
    x = images.to(torch.float32)
    if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
        x = F.interpolate(
            x, size=(INPUT_SIZE, INPUT_SIZE), mode="bicubic", align_corners=False, antialias=True
        )
    return x.clamp(0, 255)


def _rgb(images: torch.Tensor) -> torch.Tensor:
    """``[N, C, H, W]`` with C = 1 or 3 -> 3 channels."""
    return images.repeat(1, 3, 1, 1) if images.shape[1] == 1 else images


def to_uint8_nchw(images: torch.Tensor) -> torch.Tensor:
    """Network images ``[N, C, H, W]`` in [-1, 1] -> uint8 on the same device (NVIDIA's rounding)."""
    return (images.detach().to(torch.float32) * 127.5 + 128).clamp(0, 255).to(torch.uint8)


# --------------------------------------------------------------------------------------------------
# Image sets


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
    """Every image file under a folder or in a zip, any size, decoded as clean-fid does (``convert("RGB")``).

    Files are ordered by relative path; hidden files and folders are skipped. A file or zip member larger
    than ``max_image_mb`` (uncompressed) is refused before it is read, and an image of more than
    ``max_image_pixels`` pixels before it is decoded (the limits of :mod:`rootedgan.data`). ``xflip``
    appends a mirrored copy of every image (index ``i >= N`` is image ``i - N`` flipped left-right).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        max_image_mb: float | None = None,
        max_image_pixels: int | None = None,
        xflip: bool = False,
    ) -> None:
        self.path = str(path)
        self.xflip = bool(xflip)
        self.max_bytes = data.max_bytes_of(
            data.DEFAULT_MAX_IMAGE_MB if max_image_mb is None else max_image_mb
        )
        self.max_pixels = data.DEFAULT_MAX_IMAGE_PIXELS if max_image_pixels is None else int(max_image_pixels)
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
            with data.open_image(self._read(name), self.max_pixels) as img:
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


class _Resized(torch.utils.data.Dataset):
    """Images ``indices`` of a source, as ``[3, 299, 299]`` float32 (clean resize) or ``[3, H, W]`` uint8
    (at their own size: the legacy_tensorflow and fast paths resize on the device)."""

    def __init__(self, source: ImageSource, indices: Sequence[int], resize: bool) -> None:
        self.source, self.indices, self.resize = source, list(indices), resize

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> torch.Tensor:
        img = self.source.image(self.indices[i])
        if self.resize:
            return torch.from_numpy(np.ascontiguousarray(clean_resize(img).transpose(2, 0, 1)))
        return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))


def _collate_list(batch: list[torch.Tensor]) -> list[torch.Tensor]:
    return batch


# --------------------------------------------------------------------------------------------------
# Latents


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


# --------------------------------------------------------------------------------------------------
# Extraction


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
    seeded samples: latents in chunks of ``LATENT_CHUNK`` (:func:`chunk_latents`), chunk ``i`` on rank
    ``i % world``, noise seeded per batch, so the images do not depend on the batch size or world size
    (up to the noise draw) and every evaluation sees the same latents."""
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
            yield _rgb(to_uint8_nchw(img))


class FeatureExtractor:
    """Inception features of image sets and generators into :class:`FeatureStats`.

    Args:
        inception: the loaded network (:func:`rootedgan.metrics.inception.load_inception`), with
            ``resize_inside`` exactly when ``mode`` is ``"legacy_tensorflow"``.
        mode: ``"legacy_tensorflow"`` (NVIDIA's protocol, all on ``device``), ``"clean"`` (clean-fid's
            resize on the CPU) or ``"fast"`` (an approximation of ``clean``, all on ``device``).
        batch_size: images per Inception (and generator) batch.
        num_workers: DataLoader workers for image sets; threads for resizing generated images in the
            clean mode (0: in the calling thread). None: :func:`default_workers`.
        progress: show progress bars (on rank 0 only).
    """

    def __init__(
        self,
        inception: InceptionFeatures,
        mode: Mode = DEFAULT_MODE,
        batch_size: int = 64,
        num_workers: int | None = None,
        progress: bool = True,
    ) -> None:
        if mode not in MODES:
            raise UserError(f"FID mode must be one of {', '.join(MODES)}; got {mode!r}")
        if batch_size < 1:
            raise UserError(f"the FID batch size must be >= 1, got {batch_size}")
        if bool(getattr(inception, "resize_inside", False)) != (mode == "legacy_tensorflow"):
            raise ValueError(
                f"mode {mode!r} needs the Inception network loaded with resize_inside="
                f"{mode == 'legacy_tensorflow'} (load_inception(..., resize_inside=...))"
            )
        self.inception = inception
        self.mode: Mode = mode
        self.batch_size = int(batch_size)
        self.num_workers = default_workers() if num_workers is None else max(0, int(num_workers))
        self.progress = progress

    @property
    def device(self) -> torch.device:
        return next(self.inception.parameters()).device

    def _bar(self, total: int, desc: str, rank: int) -> tqdm:
        return tqdm(total=total, desc=desc, unit="img", disable=not self.progress or rank != 0, leave=False)

    def _pool(self) -> ThreadPoolExecutor | _NoPool:
        return ThreadPoolExecutor(self.num_workers) if self.num_workers > 0 else _NoPool()

    # -- image sets ----------------------------------------------------------------------------

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
        indices = range(rank, count, world)
        data = _Resized(source, indices, resize=self.mode == "clean")
        loader = torch.utils.data.DataLoader(
            data,
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=None if self.mode == "clean" else _collate_list,
        )
        bar = self._bar(count, desc, rank)
        for batch in loader:
            if self.mode == "clean":
                feats = self.inception(batch.to(self.device))
            elif self.mode == "fast":
                feats = torch.cat(
                    [self.inception(fast_resize(group)) for group in _same_size_groups(batch, self.device)]
                )
            else:  # legacy_tensorflow: the Inception file resizes each same-size group itself
                feats = torch.cat(
                    [
                        self.inception(group.to(torch.float32))
                        for group in _same_size_groups(batch, self.device)
                    ]
                )
            stats.update(feats)
            bar.update(len(feats) * world)
        bar.close()
        return stats

    # -- generators ----------------------------------------------------------------------------

    @torch.no_grad()
    def generator_stats(
        self,
        G: torch.nn.Module,
        num_gen: int,
        stats: FeatureStats,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        labels: np.ndarray | None = None,
        truncation_psi: float = 1.0,
        noise_mode: str = "random",
        latents: torch.Tensor | None = None,
        desc: str = "generate",
    ) -> FeatureStats:
        """Add the features of rank ``rank``'s share of ``num_gen`` samples of ``G`` to ``stats``.

        ``latents [num_gen, z_dim]`` replaces the seeded latents (e.g. to match another tool's draw).
        ``labels [L, c_dim]``: the classes of a conditional ``G`` are drawn from these rows.
        """
        if num_gen < 1:
            raise UserError(f"the number of generated images must be >= 1, got {num_gen}")
        if latents is not None and len(latents) < num_gen:
            raise ValueError(f"{len(latents)} latents given for {num_gen} images")
        was_training = G.training
        G.eval()
        bar = self._bar(num_gen, desc, rank)
        try:
            batches = generated_uint8(
                G, num_gen, seed, self.batch_size, rank, world, labels, truncation_psi, noise_mode, latents
            )
            if self.mode != "clean":  # everything on the device
                for images in batches:
                    x = images.to(self.device)
                    x = fast_resize(x) if self.mode == "fast" else x.to(torch.float32)
                    feats = self.inception(x)
                    stats.update(feats)
                    bar.update(len(feats) * world)
                return stats
            # clean: resize batch i in the pool while G produces batch i + 1 (a one-batch pipeline)
            with self._pool() as pool:
                pending: list[Any] | None = None

                def finish(resized: list[Any]) -> None:
                    arrays = [r.result() for r in resized] if pool is not None else resized
                    x = torch.from_numpy(np.stack(arrays).transpose(0, 3, 1, 2))
                    feats = self.inception(x.to(self.device))
                    stats.update(feats)
                    bar.update(len(feats) * world)

                for images in batches:
                    arr = images.permute(0, 2, 3, 1).cpu().numpy()
                    if pool is None:
                        finish([clean_resize(a) for a in arr])
                        continue
                    submitted = [pool.submit(clean_resize, a) for a in arr]
                    if pending is not None:
                        finish(pending)
                    pending = submitted
                if pending is not None:
                    finish(pending)
        finally:
            bar.close()
            G.train(was_training)
        return stats


class _NoPool:
    """Stands in for a thread pool when resizing runs in the calling thread."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _same_size_groups(batch: list[torch.Tensor], device: torch.device) -> Iterator[torch.Tensor]:
    """Stack consecutive same-size ``[3, H, W]`` images into batches on ``device``."""
    group: list[torch.Tensor] = []
    for img in batch:
        if group and img.shape != group[0].shape:
            yield torch.stack(group).to(device)
            group = []
        group.append(img)
    if group:
        yield torch.stack(group).to(device)
