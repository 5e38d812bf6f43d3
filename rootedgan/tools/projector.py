"""GAN inversion into W, as NVIDIA's stylegan2-ada-pytorch ``projector.py`` does it (``rootedgan project``).

NVIDIA's method and settings: one ``w`` (the same for every layer), started at the mean of 10000 mapped
latents of ``RandomState(123)``, and the generator's noise maps (renormalised after every step) are
optimised with Adam against the LPIPS distance of NVIDIA's VGG16 torchscript plus 1e5 times the noise
autocorrelation penalty; lr 0.1, ramped up over the first 5 % of the steps and down (cosine) over the last
25 %; ``w`` jitter 0.05 times the spread of W, decaying (squared) to zero over the first 75 %. All
randomness comes from one CPU generator seeded with ``seed``, so a seed gives the same projection on any
device up to floating-point differences. ``python bench/standins.py vgg16 PATH`` writes a tiny VGG16
stand-in for tests.
"""

from __future__ import annotations

import copy
import math
import os
import time
import warnings
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from rootedgan.checkpoints.download import VGG16_URL, cache_path, sha256_of
from rootedgan.checkpoints.download import download as fetch
from rootedgan.errors import UserError, one_line
from rootedgan.fileio import atomic_open
from rootedgan.imaging import ensure_writable_dir, save_image_atomic, to_uint8
from rootedgan.sampling import check_ops_setting, class_labels, load_generator, resolve_device

VGG16_FILENAME = "vgg16.pt"
VGG16_ENV = "ROOTEDGAN_VGG16"
LPIPS_MAX_RESOLUTION = 256  # larger images are area-downsampled to 256x256 first (VGG was trained on 224)
MAX_PROJECTED = 1000  # w vectors rendered from one projected_w.npz by default (generate --max-images)
MAX_W_AVG_SAMPLES = 1_000_000  # latents held at once for w's mean and spread


def _missing_message(reason: str) -> str:
    return (
        f"{reason}. The projector measures distance with NVIDIA's VGG16 LPIPS torchscript "
        f"({VGG16_FILENAME}). On a machine without internet, download it elsewhere from {VGG16_URL} and "
        f"either pass --vgg16 PATH, set {VGG16_ENV}=PATH, or put it at {cache_path(VGG16_URL)} (rootedgan's "
        "cache)"
    )


def resolve_vgg16(path: str | os.PathLike[str] | None = None) -> Path:
    """The local VGG16 file: ``path``, else ``$ROOTEDGAN_VGG16``, else the cache, else downloaded into it; a
    one-line :class:`UserError` (never a urllib traceback) when it is missing and cannot be fetched."""
    env = os.environ.get(VGG16_ENV)
    if path is not None or env:
        p = Path(path if path is not None else env).expanduser()
        if not p.is_file():
            named = f"the VGG16 file {p}" if path is not None else f"{VGG16_ENV}={env}"
            raise UserError(_missing_message(f"{named} does not exist"))
        return p
    cached = cache_path(VGG16_URL)
    if cached.is_file():
        return cached
    try:
        return fetch(VGG16_URL)
    except Exception as err:  # DownloadError, or anything else urllib/http may raise: still one line
        raise UserError(_missing_message(f"the VGG16 network could not be downloaded ({err})")) from None


def load_vgg16(
    path: str | os.PathLike[str] | None = None, device: torch.device | str = "cpu"
) -> torch.jit.ScriptModule:
    """Find (:func:`resolve_vgg16`) and load the VGG16 torchscript on ``device``, in eval mode."""
    file = resolve_vgg16(path)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.* is deprecated")
            return torch.jit.load(str(file), map_location=torch.device(device)).eval()
    except Exception as err:
        raise UserError(
            f"cannot load the VGG16 torchscript {file}: {one_line(err, 200)}. It should be {VGG16_FILENAME} "
            f"from {VGG16_URL}; delete a damaged copy and fetch it again"
        ) from None


def lpips_features(vgg: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """LPIPS features of ``[N, 3, H, W]`` images in [0, 255] (area-downsampled to 256 when larger)."""
    if images.shape[2] > LPIPS_MAX_RESOLUTION:
        images = F.interpolate(images, size=(LPIPS_MAX_RESOLUTION, LPIPS_MAX_RESOLUTION), mode="area")
    try:
        return vgg(images, resize_images=False, return_lpips=True)
    except RuntimeError as err:
        raise UserError(
            "the VGG16 torchscript does not take images as NVIDIA's vgg16.pt does "
            f"({one_line(err, 200)}); use {VGG16_FILENAME} from {VGG16_URL}"
        ) from None


def lpips_distance(vgg: torch.nn.Module, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """LPIPS distance per image pair of ``[N, 3, H, W]`` images in [0, 255]."""
    return (lpips_features(vgg, a) - lpips_features(vgg, b)).square().sum(dim=1)


@torch.no_grad()
def w_statistics(G: torch.nn.Module, c: torch.Tensor | None, num_samples: int) -> tuple[torch.Tensor, float]:
    """``(w_avg [1, 1, w_dim], w_std)``: the mean of ``num_samples`` mapped latents (NVIDIA's
    ``RandomState(123)``) and their root-mean-square distance from it."""
    device = next(G.parameters()).device
    z = torch.from_numpy(np.random.RandomState(123).randn(num_samples, G.z_dim).astype(np.float32))
    ws = []
    for start in range(0, num_samples, 1000):
        zz = z[start : start + 1000].to(device)
        cc = None if c is None else c.expand(len(zz), -1)
        ws.append(G.mapping(zz, cc)[:, :1, :].float().cpu())
    w = torch.cat(ws)  # [N, 1, C]
    w_avg = w.mean(dim=0, keepdim=True)
    w_std = float(((w - w_avg).square().sum() / num_samples) ** 0.5)
    return w_avg, w_std


def noise_regularization(noise_maps: list[torch.Tensor]) -> torch.Tensor:
    """Squared autocorrelation of each noise map with itself shifted by one pixel (both axes), summed over
    the map and its 2x average-pooled versions down to 8x8: large when a map carries image structure."""
    total = torch.zeros([], device=noise_maps[0].device) if noise_maps else torch.zeros([])
    for noise in noise_maps:
        x = noise[None, None]
        while True:
            total = total + (x * torch.roll(x, shifts=1, dims=3)).mean().square()
            total = total + (x * torch.roll(x, shifts=1, dims=2)).mean().square()
            if x.shape[2] <= 8:
                break
            x = F.avg_pool2d(x, kernel_size=2)
    return total


def _learning_rate(step: int, num_steps: int, initial: float, rampdown: float, rampup: float) -> float:
    t = step / num_steps
    down = min(1.0, (1.0 - t) / rampdown)
    down = 0.5 - 0.5 * math.cos(down * math.pi)
    return initial * down * min(1.0, t / rampup)


@dataclass
class ProjectionResult:
    """``w_steps [num_steps, num_ws, w_dim]`` (float32, CPU): ``w`` after every step, on all layers (the last
    is the projection); ``dist`` and ``loss``: the LPIPS distance and total loss per step."""

    w_steps: torch.Tensor
    dist: list[float] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)

    @property
    def w(self) -> torch.Tensor:
        """The projection: ``[1, num_ws, w_dim]``."""
        return self.w_steps[-1:].clone()


def project(
    G: torch.nn.Module,
    target: torch.Tensor,
    vgg: torch.nn.Module,
    *,
    num_steps: int = 1000,
    w_avg_samples: int = 10000,
    seed: int = 303,
    c: torch.Tensor | None = None,
    device: torch.device | str = "cpu",
    callback: Callable[[int, float, float], None] | None = None,
) -> ProjectionResult:
    """Project ``target`` (``[C, H, W]`` in [0, 255], H = W = ``G.img_resolution``) into W with NVIDIA's
    settings (module docstring).

    ``G`` is not modified (a copy is optimised); ``c``: ``[1, c_dim]`` label of a conditional generator;
    ``callback(step, dist, loss)`` is called after every step (1-based)."""
    _check_counts(num_steps, w_avg_samples)
    expected = (G.img_channels, G.img_resolution, G.img_resolution)
    if tuple(target.shape) != expected:
        raise UserError(f"the target must be {list(expected)} (C, H, W), got {list(target.shape)}")
    _check_rgb(G)
    device = torch.device(device)
    G = copy.deepcopy(G).eval().requires_grad_(False).to(device)
    c = None if c is None else c.to(device)
    gen = torch.Generator().manual_seed(seed)

    w_avg, w_std = w_statistics(G, c, w_avg_samples)
    noise_maps = [buf for name, buf in G.synthesis.named_buffers() if name.endswith("noise_const")]

    target_features = lpips_features(vgg, target[None].to(device, torch.float32)).detach()

    w_opt = w_avg.clone().to(device).requires_grad_(True)
    for buf in noise_maps:
        buf.copy_(torch.randn(buf.shape, generator=gen)).requires_grad_(True)
    optimizer = torch.optim.Adam([w_opt, *noise_maps], betas=(0.9, 0.999), lr=0.1)

    w_steps = torch.zeros([num_steps, G.w_dim], dtype=torch.float32)
    result = ProjectionResult(w_steps=w_steps)
    for step in range(num_steps):
        t = step / num_steps
        w_noise_scale = w_std * 0.05 * max(0.0, 1.0 - t / 0.75) ** 2
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(step, num_steps, 0.1, 0.25, 0.05)

        w_noise = torch.randn(w_opt.shape, generator=gen).to(device) * w_noise_scale
        ws = (w_opt + w_noise).repeat([1, G.num_ws, 1])
        images = (G.synthesis(ws, noise_mode="const") + 1) * (255 / 2)
        dist = (target_features - lpips_features(vgg, images)).square().sum()
        loss = dist + noise_regularization(noise_maps) * 1e5

        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        w_steps[step] = w_opt.detach()[0, 0].float().cpu()
        result.dist.append(float(dist.detach()))
        result.loss.append(float(loss.detach()))
        with torch.no_grad():
            for buf in noise_maps:
                buf -= buf.mean()
                buf *= buf.square().mean().rsqrt()
        if callback is not None:
            callback(step + 1, result.dist[-1], result.loss[-1])
    result.w_steps = w_steps[:, None, :].repeat([1, G.num_ws, 1])
    return result


def _check_counts(num_steps: int, w_avg_samples: int) -> None:
    if num_steps < 1:
        raise UserError(f"--num-steps must be >= 1, got {num_steps}")
    if not 1 <= w_avg_samples <= MAX_W_AVG_SAMPLES:
        raise UserError(f"--w-avg-samples must be in [1, {MAX_W_AVG_SAMPLES}], got {w_avg_samples}")


def _check_rgb(G: torch.nn.Module, name: str = "the network") -> None:
    if G.img_channels != 3:
        raise UserError(f"the projector's VGG16 distance needs RGB images; {name} has {G.img_channels}")


def load_target(path: str | os.PathLike[str], resolution: int) -> np.ndarray:
    """The target image as NVIDIA's projector prepares it: RGB, center-cropped to a square, LANCZOS-resized
    to ``resolution``; ``[H, W, 3]`` uint8. The file is read under the data pipeline's size limits."""
    from rootedgan import data as pipeline  # imports Lightning: not for `rootedgan --help` (generate)

    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"--target {p}: no such file")
    try:
        max_bytes = pipeline.max_bytes_of(pipeline.DEFAULT_MAX_IMAGE_MB)
        data = pipeline.read_image_bytes(str(p.parent), p.name, None, max_bytes)
        with pipeline.open_image(data, pipeline.DEFAULT_MAX_IMAGE_PIXELS) as img:
            img.load()
            return np.asarray(pipeline.fit_square(img.convert("RGB"), resolution), dtype=np.uint8).copy()
    except UserError:
        raise
    except Image.UnidentifiedImageError:
        raise UserError(f"--target {p}: not an image file (PIL cannot identify it)") from None
    except Exception as err:  # PIL's DecompressionBombError, OSError for a truncated file, ...
        raise UserError(f"--target {p}: not a readable image ({type(err).__name__}: {err})") from None


def write_projected_w(path: str | os.PathLike[str], w: torch.Tensor | np.ndarray) -> Path:
    """Write ``projected_w.npz`` as NVIDIA's projector does: one array ``w`` of ``[N, num_ws, w_dim]``."""
    arr = np.asarray(w.detach().cpu().numpy() if isinstance(w, torch.Tensor) else w, dtype=np.float32)
    path = Path(path)
    with atomic_open(path, "wb") as fh:
        np.savez(fh, w=arr)
    return path


def read_projected_w(
    path: str | os.PathLike[str], num_ws: int, w_dim: int, max_count: int = MAX_PROJECTED
) -> np.ndarray:
    """``w`` of a ``projected_w.npz`` (NVIDIA's or ours) as float32 ``[N, num_ws, w_dim]``, checked against
    the network (``[num_ws, w_dim]`` is taken as N = 1). Never unpickles; the array's header (shape and
    dtype) is checked before its data is read, so a small file cannot make it allocate gigabytes."""
    p = Path(path).expanduser()
    what = f"--projected-w {p}"
    if not p.is_file():
        raise UserError(f"{what}: no such file (or not a regular file)")
    try:
        with zipfile.ZipFile(p) as archive:
            shape = _w_shape(archive, what, num_ws, w_dim, max_count)
            with archive.open("w.npy") as fh:
                arr = np.lib.format.read_array(fh, allow_pickle=False)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as err:
        raise UserError(f"{what}: not a readable .npz file ({type(err).__name__}: {err})") from None
    arr = np.asarray(arr, dtype=np.float32).reshape(shape)
    if not np.isfinite(arr).all():
        raise UserError(f"{what}: `w` holds NaN or infinite values")
    return arr


def _w_shape(
    archive: zipfile.ZipFile, what: str, num_ws: int, w_dim: int, max_count: int
) -> tuple[int, int, int]:
    """The ``[N, num_ws, w_dim]`` shape of ``w.npy`` in ``archive``, checked from its header alone."""
    if "w.npy" not in archive.namelist():
        names = ", ".join(n.removesuffix(".npy") for n in archive.namelist()[:8])
        raise UserError(f"{what}: holds no array `w` (found: {names or 'nothing'})")
    with archive.open("w.npy") as fh:
        version = np.lib.format.read_magic(fh)
        header = (
            np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        )
        shape, _, dtype = header(fh)
    if dtype.kind != "f":
        raise UserError(f"{what}: `w` is {dtype}, not floating point")
    shape = (1, *shape) if len(shape) == 2 else tuple(shape)
    if len(shape) != 3 or shape[1:] != (num_ws, w_dim):
        raise UserError(
            f"{what}: `w` has shape {list(shape)}; this network needs [N, {num_ws}, {w_dim}] "
            "(N projections of num_ws x w_dim): was it projected with another network?"
        )
    if not 1 <= shape[0] <= max_count:
        raise UserError(
            f"{what}: `w` holds {shape[0]} vectors; at most {max_count} are rendered (--max-images)"
        )
    return shape


GIF_MAX_FRAMES = 100  # a GIF is assembled in memory: at most this many evenly spaced steps


def open_video(outdir: Path, fps: int = 10) -> tuple[object, Path]:
    """A frame writer for the progress video: ``proj.mp4`` (imageio with its ffmpeg plugin, NVIDIA's
    settings) or ``proj.gif`` (imageio alone). Without imageio: a :class:`UserError` saying what to
    install."""
    try:
        import imageio
        import imageio.v2 as iio
    except ImportError:
        raise UserError(
            "--save-video needs the imageio package (pip install imageio, plus imageio-ffmpeg for MP4; "
            "without imageio-ffmpeg a GIF is written). Install it or leave out --save-video: the projection "
            "itself does not need it"
        ) from None
    try:
        import imageio_ffmpeg  # noqa: F401

        path = outdir / "proj.mp4"
        return iio.get_writer(path, mode="I", fps=fps, codec="libx264", bitrate="16M"), path
    except ImportError:
        path = outdir / "proj.gif"
        version = tuple(int(p) for p in imageio.__version__.split(".")[:2] if p.isdigit())
        duration = 1000 / fps if version >= (2, 28) else 1 / fps  # imageio 2.28 moved GIFs to ms
        return iio.get_writer(path, mode="I", duration=duration, loop=0), path


def video_frames(
    G: torch.nn.Module, w_steps: torch.Tensor, target: np.ndarray, max_frames: int | None = None
) -> Iterator[np.ndarray]:
    """``[H, 2W, 3]`` uint8 frames, target beside the synthesis of each step's ``w`` (noise ``const``);
    every step, or ``max_frames`` evenly spaced ones ending at the last."""
    device, steps = next(G.parameters()).device, len(w_steps)
    picks = np.arange(steps)
    if max_frames is not None and steps > max_frames:
        picks = np.unique(np.linspace(0, steps - 1, max_frames).round().astype(int))
    with torch.no_grad():
        for i in picks:
            img = to_uint8(G.synthesis(w_steps[i : i + 1].to(device), noise_mode="const"))[0]
            yield np.concatenate([target, img], axis=1)


@dataclass
class ProjectOptions:
    """The options of ``rootedgan project`` (same names and defaults)."""

    network: str
    target: str
    outdir: str
    num_steps: int = 1000
    seed: int = 303
    save_video: bool = False
    vgg16: str | None = None
    class_idx: int | None = None
    which: str = "G_ema"
    w_avg_samples: int = 10000
    device: str = "auto"
    base: str | None = None


def project_to_folder(options: ProjectOptions, say: Callable[[str], None] = print) -> ProjectionResult:
    """Project ``options.target`` and write ``target.png``, ``proj.png``, ``projected_w.npz`` and, with
    ``save_video``, ``proj.mp4`` (or ``proj.gif``; removed again when the projection fails) into ``outdir``;
    ``say`` gets which VGG16 file is used, the distances and the files written."""
    o = options
    _check_counts(o.num_steps, o.w_avg_samples)
    check_ops_setting()
    outdir = ensure_writable_dir(o.outdir)
    video = open_video(outdir) if o.save_video else None  # a missing imageio: say so first
    done = False
    try:
        result = _project_to(o, outdir, video, say)
        done = True
    finally:
        if video is not None:
            writer, path = video
            writer.close()
            if done:
                say(f"wrote {path}")
            else:
                path.unlink(missing_ok=True)  # no half-written video left behind
    return result


def _project_to(
    o: ProjectOptions, outdir: Path, video: tuple[Any, Path] | None, say: Callable[[str], None]
) -> ProjectionResult:
    device = resolve_device(o.device)
    G = load_generator(o.network, o.which, o.base).eval().requires_grad_(False).to(device)
    c = class_labels(G.c_dim, o.class_idx, 1) if G.c_dim else None
    _check_rgb(G, o.network)
    target = load_target(o.target, G.img_resolution)
    vgg_file = resolve_vgg16(o.vgg16)
    say(f"VGG16 LPIPS network: {vgg_file} (sha256 {sha256_of(vgg_file)})")
    vgg = load_vgg16(vgg_file, device=device)
    start = time.perf_counter()
    with tqdm(total=o.num_steps, desc="project", unit="step", leave=False) as bar:

        def progress(step: int, dist: float, loss: float) -> None:
            bar.set_postfix(dist=f"{dist:.4g}", loss=f"{loss:.4g}", refresh=False)
            bar.update(1)

        image = torch.from_numpy(target).permute(2, 0, 1)
        kw = dict(num_steps=o.num_steps, w_avg_samples=o.w_avg_samples, seed=o.seed, c=c, device=device)
        result = project(G, image, vgg, callback=progress, **kw)
    say(
        f"projected in {time.perf_counter() - start:.1f} s: LPIPS distance {result.dist[0]:.4g} -> "
        f"{result.dist[-1]:.4g} over {o.num_steps} steps"
    )
    save_image_atomic(target, outdir / "target.png")
    with torch.no_grad():
        save_image_atomic(
            to_uint8(G.synthesis(result.w.to(device), noise_mode="const"))[0], outdir / "proj.png"
        )
    write_projected_w(outdir / "projected_w.npz", result.w)
    say(f"wrote {outdir / 'target.png'}, {outdir / 'proj.png'} and {outdir / 'projected_w.npz'}")
    if video is not None:
        writer, path = video
        limit = GIF_MAX_FRAMES if path.suffix == ".gif" else None
        for frame in video_frames(G, result.w_steps, target, max_frames=limit):
            writer.append_data(frame)
    return result
