"""Training images: a folder or zip of image files as uint8 tensors, and the LightningDataModule.

The rules are the README's "Data" section; in more detail: a folder is searched recursively (hidden names
and ``__MACOSX/`` skipped), a zip is recognised by content, images (first frame only) are ordered by
relative path. Channels are converted first (alpha dropped without compositing, as PIL's ``convert("RGB")``
and NVIDIA's tool do; 16-bit grey ``>> 8`` where PIL would clip it to white; float clipped to [0, 255];
``channels=1`` is PIL's L), then the center crop (NVIDIA's offsets ``(size - short) // 2``). Anything but a
regular file is never opened; ``dataset.json`` must be plain JSON with class indices below 65,536. Each
error is one line that starts with the file, also from a DataLoader worker.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import os
import reprlib
import stat
import threading
import warnings
import zipfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from rootedgan.distributed import rank_world
from rootedgan.errors import UserError, one_line, printable
from rootedgan.fileio import atomic_open
from rootedgan.imaging import ensure_writable_dir
from rootedgan.sampling import derive_seed

__all__ = ["IMAGE_EXTENSIONS", "DatasetError", "ImageDataModule", "ImageDataset", "uint8_to_float"]

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif")
_EXT_LIST = ", ".join(ext.lstrip(".") for ext in IMAGE_EXTENSIONS)
# Bumped whenever decoding/geometry changes, so that cached reference statistics are recomputed.
_PREPROCESS_VERSION = "rootedgan-images-v1"
_MAX_NAMES_SHOWN = 5
DEFAULT_MAX_IMAGE_MB = 256.0
DEFAULT_MAX_IMAGE_PIXELS = 1024 * 1024 * 1024 // 4 // 3  # PIL's Image.MAX_IMAGE_PIXELS default
MAX_CLASSES = 1 << 16  # class indices must be below this (c_dim = max + 1)
MAX_LABEL_BYTES = 8 << 30  # the float32 label table of the whole data set
# ImageDataModule settings passed on to ImageDataset as they are
_DATASET_OPTIONS = "use_labels xflip max_images on_error seed max_image_mb max_image_pixels".split()


class DatasetError(UserError):
    """A training data set that cannot be used: missing path, no images, bad file, bad labels. Raised in a
    DataLoader worker, torch rebuilds it from "Caught DatasetError in DataLoader worker process N" and the
    worker's traceback; the original one-line message is recovered, so it still starts with the file."""

    def __init__(self, *args: Any) -> None:
        if len(args) == 1 and isinstance(args[0], str):
            args = (_worker_message(args[0], type(self).__name__),)
        super().__init__(*args)


def _worker_message(text: str, name: str) -> str:
    """The original message inside torch's "Caught X in DataLoader worker ..." text (else ``text``)."""
    if not text.startswith(f"Caught {name} in DataLoader worker"):
        return text
    lines = text.rstrip().splitlines()
    for i in range(len(lines) - 1, -1, -1):
        head, sep, rest = lines[i].partition(f"{name}: ")
        if sep and not lines[i].startswith(" ") and (head == "" or head.endswith(".")):
            return "\n".join([rest, *lines[i + 1 :]]).strip() or text
    return text


def uint8_to_float(img: torch.Tensor) -> torch.Tensor:
    """uint8 images ``[..., C, H, W]`` in [0, 255] -> float32 in [-1, 1] (``img / 127.5 - 1``)."""
    return img.to(torch.float32) / 127.5 - 1


def _is_power_of_two(n: int) -> bool:
    return n >= 4 and n & (n - 1) == 0


def is_image_name(rel_name: str) -> bool:
    """Whether a relative name (``a/b.png``) is an image file rootedgan reads: a known extension, no part
    starting with ``.`` and not macOS resource-fork litter (``__MACOSX/``)."""
    parts = rel_name.split("/")
    hidden = any(p.startswith(".") for p in parts) or parts[0] == "__MACOSX"
    return not hidden and os.path.splitext(rel_name)[1].lower() in IMAGE_EXTENSIONS


def list_files(path: str, error: type[UserError], what: str) -> tuple[bool, list[str]]:
    """``(is_zip, names)`` of a folder (searched recursively, hidden folders skipped) or a zip file
    (detected by content): every file's name relative to it with ``/`` separators, sorted. Anything else
    (a missing path, a FIFO or device, another file, an unreadable zip) raises ``error`` in one line."""
    p = Path(path)
    if not p.exists():
        raise error(f"{what} {path} does not exist")
    if p.is_dir():
        names = []
        for dirpath, dirnames, filenames in os.walk(p):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            names += [os.path.relpath(os.path.join(dirpath, f), p).replace(os.sep, "/") for f in filenames]
        return False, sorted(names)
    if not p.is_file():
        raise error(f"{what} {path} is not a folder or a regular file (a FIFO or device?)")
    if zipfile.is_zipfile(p):
        try:
            with zipfile.ZipFile(p) as zf:
                return True, sorted(i.filename for i in zf.infolist() if not i.is_dir())
        except (zipfile.BadZipFile, OSError) as err:
            raise error(f"cannot read zip file {path}: {err}") from None
    raise error(f"{what} {path} is neither a folder nor a zip file")


class ZipHandle:
    """A per-process handle on the zip file ``self.path`` (for classes with ``path`` and ``is_zip``): a handle
    inherited through fork shares its file offset with the parent, so each DataLoader worker opens its own;
    the handle is never pickled."""

    path: str
    is_zip: bool
    _zip: zipfile.ZipFile | None = None
    _zip_pid: int | None = None

    def _get_zip(self) -> zipfile.ZipFile | None:
        if not self.is_zip:
            return None
        if self._zip is None or self._zip_pid != os.getpid():
            self._zip = zipfile.ZipFile(self.path)
            self._zip_pid = os.getpid()
        return self._zip

    def close(self) -> None:
        """Close the zip handle of this process (it is reopened on the next access)."""
        if self._zip is not None and self._zip_pid == os.getpid():
            self._zip.close()
        self._zip = self._zip_pid = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_zip": None, "_zip_pid": None}


def _shorten(names: Sequence[str]) -> str:
    shown = printable(", ".join(names[:_MAX_NAMES_SHOWN]))
    return shown + (f", ... ({len(names) - _MAX_NAMES_SHOWN} more)" if len(names) > _MAX_NAMES_SHOWN else "")


def _short_repr(value: Any, limit: int = 80) -> str:
    r = reprlib.Repr()
    r.maxlevel, r.maxlist, r.maxstring, r.maxother = 3, 6, limit, limit
    return r.repr(value)


def max_bytes_of(max_image_mb: float | None) -> int | None:
    """``max_image_mb`` (MiB; None = no limit) as a byte count, checked."""
    if max_image_mb is None:
        return None
    if isinstance(max_image_mb, bool) or not isinstance(max_image_mb, int | float) or not max_image_mb > 0:
        raise DatasetError(f"max_image_mb must be a positive number of MiB or None, got {max_image_mb!r}")
    return int(max_image_mb * (1 << 20))


def read_image_bytes(root: str, name: str, zf: zipfile.ZipFile | None, max_bytes: int | None) -> bytes:
    """The bytes of image ``name`` under folder ``root`` or in the zip ``zf`` (the file ``root``). A file
    (it must be a regular one) or member over ``max_bytes`` is refused before it is read, and the limit is
    enforced while reading too, whatever a zip's directory says; errors name the member and the file."""
    where = f"{name!r} in {root}"

    def too_big(size: int | str) -> DatasetError:
        return DatasetError(
            f"{where}: the file is {size} bytes (uncompressed), more than the limit of {max_bytes} bytes "
            "(max_image_mb); refused"
        )

    if zf is not None:
        info = zf.getinfo(name)
        size, opener = info.file_size, lambda: zf.open(info)
    else:
        path = os.path.join(root, name)
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise DatasetError(f"{where}: not a regular file (a folder, FIFO, device or socket); refused")
        size, opener = st.st_size, lambda: open(path, "rb")
    if max_bytes is not None and size > max_bytes:
        raise too_big(size)
    with opener() as fh:
        data = fh.read(-1 if max_bytes is None else max_bytes + 1)
    if max_bytes is not None and len(data) > max_bytes:
        raise too_big(f"more than {max_bytes}")
    return data


def open_image(data: bytes, max_pixels: int | None) -> Image.Image:
    """``Image.open`` on bytes, refusing (before decoding) an image of more than ``max_pixels`` pixels."""
    img = Image.open(io.BytesIO(data))
    w, h = img.size
    if max_pixels is not None and w * h > max_pixels:
        img.close()
        raise Image.DecompressionBombError(
            f"the image is {w}x{h} = {w * h} pixels, more than the limit of {max_pixels} (max_image_pixels); "
            "refused as a possible decompression bomb"
        )
    return img


def _to_channels(img: Image.Image, channels: int) -> Image.Image:
    """Convert a PIL image to mode ``RGB`` (channels=3) or ``L`` (channels=1); see the channel rule."""
    mode = img.mode
    if mode == "I" or mode.startswith("I;16"):
        arr = np.asarray(img).astype(np.int64)
        img = Image.fromarray((np.clip(arr, 0, 65535) >> 8).astype(np.uint8))
    elif mode in ("1", "LA", "La", "F"):
        img = img.convert("L")
    elif mode in ("P", "PA"):
        # Through RGBA so that palette transparency is honoured (PIL warns otherwise), then drop alpha.
        img = img.convert("RGBA").convert("RGB")
    elif mode not in ("L", "RGB"):
        img = img.convert("RGB")  # RGBA, RGBa, CMYK, YCbCr, LAB, HSV, ...
    target = "RGB" if channels == 3 else "L"
    return img if img.mode == target else img.convert(target)


def fit_square(img: Image.Image, resolution: int) -> Image.Image:
    """Center-crop to the shorter side, then LANCZOS-resize to ``resolution`` if the size differs."""
    w, h = img.size
    if w != h:
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        img = img.crop((left, top, left + s, top + s))
    if img.size != (resolution, resolution):
        img = img.resize((resolution, resolution), Image.Resampling.LANCZOS)
    return img


def _label_table(meta: Any, where: str) -> dict[str, Any]:
    """``{file name: label}`` from dataset.json's ``{"labels": [[name, label], ...]}``."""
    entries = meta.get("labels") if isinstance(meta, dict) else None
    if entries is None:
        raise DatasetError(f"{where} has no labels ('labels' is missing or null); set use_labels: false")
    pairs_error = f"{where}: 'labels' must be a list of [file name, label] pairs"
    if not isinstance(entries, list):
        raise DatasetError(pairs_error)
    table: dict[str, Any] = {}
    for entry in entries:
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)):
            raise DatasetError(f"{pairs_error}; got {_short_repr(entry)}")
        table[entry[0].replace("\\", "/")] = entry[1]
    return table


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_vector(v: Any) -> bool:
    return isinstance(v, list) and all(_is_int(x) or isinstance(x, float) for x in v)


def _check_label_size(where: str, count: int, width: int, what: str) -> None:
    if width > MAX_CLASSES:
        raise DatasetError(f"{where}: {what}; at most {MAX_CLASSES} label dimensions are supported")
    if count * width * 4 > MAX_LABEL_BYTES:
        raise DatasetError(
            f"{where}: {what}: the labels of {count} images would take {count * width * 4 / 2**30:.1f} GiB "
            f"(limit {MAX_LABEL_BYTES / 2**30:.0f} GiB)"
        )


def _label_array(names: list[str], values: list[Any], where: str) -> np.ndarray:
    """float32 ``[len(names), c_dim]``: one-hot class indices, or the label vectors."""
    n = len(names)
    if all(_is_int(v) for v in values):
        bad = next((i for i, v in enumerate(values) if v < 0), None)
        if bad is not None:
            raise DatasetError(f"{where}: class labels must be >= 0, got {values[bad]} for {names[bad]!r}")
        top = max(range(n), key=values.__getitem__)
        width = values[top] + 1
        _check_label_size(where, n, width, f"class index {values[top]} for {names[top]!r} is too large")
        onehot = np.zeros([n, width], dtype=np.float32)
        onehot[np.arange(n), values] = 1
        return onehot
    if all(_is_vector(v) for v in values):
        lengths = {len(v) for v in values}
        if len(lengths) != 1:
            raise DatasetError(f"{where}: label vectors have different lengths {sorted(lengths)[:8]}")
        _check_label_size(where, n, lengths.pop(), "the label vectors are too long")
        # NaN and inf fail the comparison; so do ints beyond float32
        f32_max = float(np.finfo(np.float32).max)
        bad = next((i for i, v in enumerate(values) if not all(-f32_max <= x <= f32_max for x in v)), None)
        if bad is None:
            return np.asarray(values, dtype=np.float32).reshape(n, -1)
        label = _short_repr(values[bad])
        raise DatasetError(f"{where}: the label of {names[bad]!r} is not a finite float32 vector ({label})")
    kind = _is_int if _is_int(values[0]) else _is_vector
    bad = next((i for i, v in enumerate(values) if not kind(v)), 0)
    raise DatasetError(
        f"{where}: labels must be all class indices (ints) or all lists of numbers; "
        f"got {_short_repr(values[bad])} for {names[bad]!r} "
        f"(first label: {_short_repr(values[0])} for {names[0]!r})"
    )


def _no_constant(token: str) -> Any:
    raise ValueError(f"{token} is not a valid label value (plain JSON numbers only)")


class ImageDataset(ZipHandle, torch.utils.data.Dataset):
    """Images from a folder or zip as ``(img uint8 [C, R, R], label float32 [c_dim])``.

    The arguments are :class:`ImageDataModule`'s (``resolution`` None: the first image's size, no model
    here); index ``i >= N`` is image ``i - N`` mirrored when ``xflip``. ``on_error="skip"`` decodes every
    image once here and drops the unreadable ones (listed in ``skipped``) with one warning.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        resolution: int | None = None,
        channels: int = 3,
        use_labels: bool = False,
        xflip: bool = False,
        max_images: int | None = None,
        on_error: Literal["raise", "skip"] = "raise",
        seed: int = 0,
        max_image_mb: float | None = DEFAULT_MAX_IMAGE_MB,
        max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    ) -> None:
        if resolution is not None and not _is_power_of_two(int(resolution)):
            raise DatasetError(f"resolution must be a power of two >= 4 (e.g. 256), got {resolution}")
        if channels not in (1, 3):
            raise DatasetError(f"channels must be 1 or 3, got {channels}")
        if on_error not in ("raise", "skip"):
            raise DatasetError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if max_images is not None and max_images < 1:
            raise DatasetError(f"max_images must be a positive number or None, got {max_images}")
        if max_image_pixels is not None and (isinstance(max_image_pixels, bool) or max_image_pixels < 1):
            raise DatasetError(
                f"max_image_pixels must be a positive number or None, got {max_image_pixels!r}"
            )
        self.path, self.channels, self.seed, self.on_error = str(path), int(channels), int(seed), on_error
        self.use_labels, self.xflip = bool(use_labels), bool(xflip)
        self.max_images = None if max_images is None else int(max_images)
        self.max_bytes = max_bytes_of(max_image_mb)
        self.max_pixels = None if max_image_pixels is None else int(max_image_pixels)
        self.skipped: list[str] = []

        self.is_zip, all_names = list_files(self.path, DatasetError, "data path")
        names = [n for n in all_names if is_image_name(n)]
        if not names:
            raise DatasetError(f"no images ({_EXT_LIST}) found under {self.path}")
        sizes: dict[str, tuple[int, int]] = {}
        if on_error == "skip":
            names, sizes = self._drop_unreadable(names)
        labels = self._load_labels(names, all_names) if self.use_labels else np.zeros([len(names), 0])
        idx = np.arange(len(names))
        if self.max_images is not None and idx.size > self.max_images:
            np.random.RandomState(self.seed % (1 << 31)).shuffle(idx)
            idx = np.sort(idx[: self.max_images])
        self.names: list[str] = [names[i] for i in idx]
        self.num_images = len(self.names)  # N distinct images (without the mirrored copies)
        self.labels: np.ndarray = labels.astype(np.float32)[idx]  # float32 [N, c_dim]
        self.c_dim: int = self.labels.shape[1]  # 0 without labels
        self.label_shape, self.has_labels = (self.c_dim,), self.c_dim > 0
        self.resolution: int = int(resolution) if resolution is not None else self._native_resolution(sizes)
        self.image_shape = (self.channels, self.resolution, self.resolution)
        self._check_sizes = resolution is None

    def __len__(self) -> int:
        return self.num_images * (2 if self.xflip else 1)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(path={self.path!r}, images={self.num_images}, "
            f"shape={list(self.image_shape)}, c_dim={self.c_dim}, xflip={self.xflip})"
        )

    def with_xflip(self, xflip: bool) -> ImageDataset:
        """A copy of this data set with x-flipped copies on or off (same files, labels and checks; its own
        zip handle). ``self`` is unchanged."""
        other = copy.copy(self)
        other.__dict__.update(self.__getstate__())
        other.xflip = bool(xflip)
        return other

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def _read_bytes(self, name: str) -> bytes:
        """The file's bytes, within ``max_image_mb`` (a :class:`DatasetError` naming it otherwise)."""
        return read_image_bytes(self.path, name, self._get_zip(), self.max_bytes)

    def _bad_image(self, name: str, err: BaseException) -> DatasetError:
        if isinstance(err, DatasetError):
            return err
        return DatasetError(f"{name!r} in {self.path}: cannot read image: {one_line(err)}")

    def _drop_unreadable(self, names: list[str]) -> tuple[list[str], dict[str, tuple[int, int]]]:
        """Decode every image once; drop the ones PIL cannot read. Returns (good names, sizes)."""
        lock = threading.Lock()

        def check(name: str) -> tuple[int, int] | None:
            try:
                with lock:  # one reader of the shared zip handle at a time; decoding runs in parallel
                    data = self._read_bytes(name)
                with open_image(data, self.max_pixels) as img:
                    img.verify()
                with open_image(data, self.max_pixels) as img:
                    img.load()
                    return img.size
            except Exception:
                return None

        with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
            results = list(pool.map(check, names))
        self.close()
        sizes = {n: r for n, r in zip(names, results, strict=True) if r is not None}
        self.skipped = [n for n in names if n not in sizes]
        if not sizes:
            raise DatasetError(
                f"none of the {len(names)} images under {self.path} could be read "
                f"(e.g. {_shorten(self.skipped)})"
            )
        if self.skipped:
            warnings.warn(
                f"skipped {len(self.skipped)} unreadable image(s) of {len(names)} under {self.path}: "
                f"{_shorten(self.skipped)}",
                stacklevel=3,
            )
        return list(sizes), sizes

    def _load_labels(self, names: list[str], all_names: list[str]) -> np.ndarray:
        """Labels of ``names`` from dataset.json: float32 ``[len(names), c_dim]``."""
        if "dataset.json" not in all_names:
            raise DatasetError(
                f"use_labels is set but {self.path} has no dataset.json "
                '(expected {"labels": [["path/img.png", class_index], ...]} at its top level)'
            )
        where = f"dataset.json in {self.path}"
        try:
            meta = json.loads(self._read_bytes("dataset.json").decode("utf-8"), parse_constant=_no_constant)
        except RecursionError:
            raise DatasetError(f"{where}: the JSON is nested too deeply; refused") from None
        except DatasetError:
            raise
        except (OSError, UnicodeDecodeError, ValueError) as err:  # JSONDecodeError is a ValueError
            raise DatasetError(f"cannot parse {where}: {one_line(err)}") from None
        finally:
            self.close()
        table = _label_table(meta, where)
        missing = [n for n in names if n not in table]
        if missing:
            raise DatasetError(f"{where} has no label for {len(missing)} image(s): {_shorten(missing)}")
        return _label_array(names, [table[n] for n in names], where)

    def _image_size(self, name: str) -> tuple[int, int]:
        try:
            with open_image(self._read_bytes(name), self.max_pixels) as img:
                return img.size
        except Exception as err:
            raise self._bad_image(name, err) from None

    def _native_resolution(self, sizes: dict[str, tuple[int, int]]) -> int:
        """resolution=None: the first image's size; every image must be square with that size."""
        try:
            first = self.names[0]
            w, h = sizes.get(first) or self._image_size(first)
            if w != h or not _is_power_of_two(w):
                raise DatasetError(
                    f"image {first!r} in {self.path} is {w}x{h}; without a resolution every image must be "
                    "square with a power-of-two size. Set the resolution (data.resolution) to "
                    "center-crop and resize the images"
                )
            for name in self.names[1:]:
                size = sizes.get(name) or self._image_size(name)
                if size != (w, w):
                    raise DatasetError(
                        f"image {name!r} in {self.path} is {size[0]}x{size[1]} but the first image "
                        f"{first!r} is {w}x{w}; without a resolution every image must have the same "
                        "square size. Set the resolution (data.resolution) to center-crop and resize them"
                    )
            return w
        finally:
            self.close()

    def load_image(self, raw_index: int) -> np.ndarray:
        """Decode image ``raw_index`` (0 <= raw_index < N) as uint8 ``[R, R, C]`` (not mirrored)."""
        name = self.names[raw_index]
        try:
            with open_image(self._read_bytes(name), self.max_pixels) as img:
                img.load()
                if self._check_sizes and img.size != (self.resolution, self.resolution):
                    raise DatasetError(
                        f"image {name!r} in {self.path} is {img.size[0]}x{img.size[1]}, expected "
                        f"{self.resolution}x{self.resolution}; set data.resolution to resize images"
                    )
                out = fit_square(_to_channels(img, self.channels), self.resolution)
                arr = np.array(out, dtype=np.uint8)  # a writable copy (torch wants writable arrays)
        except Exception as err:
            raise self._bad_image(name, err) from None
        return arr[:, :, None] if arr.ndim == 2 else arr

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """-> ``(img uint8 [C, R, R], label float32 [c_dim])``; ``index >= N`` is mirrored."""
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a data set of length {len(self)}")
        raw = index % self.num_images
        arr = self.load_image(raw) if index == raw else self.load_image(raw)[:, ::-1]
        img = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
        return img, torch.from_numpy(self.labels[raw].copy())

    def content_key(self, progress: Callable[[int, int], None] | None = None) -> str:
        """sha256 hex digest of the images this data set yields (for caching statistics): the names, sizes and
        bytes of its files in order, its geometry and xflip, max_images and the preprocessing version, not
        the labels. Reads every file once; ``progress(done, total)`` is called after each file if given."""
        h = hashlib.sha256()
        config = {k: getattr(self, k) for k in ("resolution", "channels", "xflip", "max_images")}
        config.update(version=_PREPROCESS_VERSION, count=self.num_images)
        h.update(json.dumps(config, sort_keys=True).encode() + b"\0")
        try:
            for i, name in enumerate(self.names):
                try:
                    data = self._read_bytes(name)
                except (OSError, KeyError, zipfile.BadZipFile, EOFError) as err:
                    raise self._bad_image(name, err) from None
                h.update(name.encode("utf-8") + b"\0" + str(len(data)).encode() + b"\0")
                h.update(data)
                if progress is not None:
                    progress(i + 1, self.num_images)
        finally:
            self.close()
        return h.hexdigest()


class ResumableShuffleSampler(torch.utils.data.Sampler[int]):
    """Endless shuffled indices for one rank, resumable at any position: a fresh permutation of
    ``range(size)`` per pass, seeded by ``(seed, pass)``, of which rank ``r`` of ``world`` takes positions
    ``r, r + world, ...``. A position is a pure function of ``(seed, p)``, so a run resumed after ``start``
    samples per rank sees exactly the batches the uninterrupted run would have seen."""

    def __init__(self, size: int, seed: int = 0, rank: int = 0, world: int = 1, start: int = 0) -> None:
        if size < 1:
            raise ValueError("cannot sample from an empty data set")
        self.size, self.seed, self.rank, self.world, self.start = size, seed, rank, world, start

    def __iter__(self):
        position = self.start * self.world + self.rank
        epoch, perm = -1, None
        while True:
            if position // self.size != epoch:
                epoch = position // self.size
                generator = torch.Generator().manual_seed(derive_seed(self.seed, 0, epoch))
                perm = torch.randperm(self.size, generator=generator)
            yield int(perm[position % self.size])
            position += self.world


class ImageDataModule(L.LightningDataModule):
    """Training images for finetuning, configured from YAML (``data:``) by LightningCLI.

    When the trainer's LightningModule declares ``img_resolution`` / ``img_channels`` / ``c_dim``,
    ``setup`` takes the resolution and channels from it and checks the labels against ``c_dim``.

    Args:
        path: Folder (searched recursively) or zip file of training images (png, jpg, jpeg, bmp,
            webp, tif, tiff, gif).
        resolution: Training resolution (power of two >= 4); images are center-cropped to a square
            and resized (LANCZOS) to it. None: the model's img_resolution, or without a model the
            size of the first image (then every image must be square with that size).
        batch_size: Images per training batch (per device).
        num_workers: DataLoader worker processes (0 = load in the main process).
        xflip: Add horizontally mirrored copies of every image (doubles the data set).
        max_images: Use only this many images, chosen with NVIDIA's seeded rule (None = all).
        use_labels: Read class labels from dataset.json (needed for conditional models).
        on_error: What to do with unreadable images: 'raise' (error when loaded) or 'skip'
            (check every image before training and leave out the bad ones, with a warning).
        seed: Seed of the max_images subset and of the shuffling order.
        channels: 3 (RGB) or 1 (grayscale); the model's img_channels wins when it declares one.
        max_image_mb: Largest image file or zip member (uncompressed) that is read, in MiB (null: no limit).
        max_image_pixels: Largest image that is decoded, in pixels (null: PIL's own limit only).
    """

    def __init__(
        self,
        path: str,
        resolution: int | None = None,
        batch_size: int = 32,
        num_workers: int = 2,
        xflip: bool = False,
        max_images: int | None = None,
        use_labels: bool = False,
        on_error: Literal["raise", "skip"] = "raise",
        seed: int = 0,
        channels: int = 3,
        max_image_mb: float | None = DEFAULT_MAX_IMAGE_MB,
        max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise DatasetError(f"data.batch_size must be >= 1, got {batch_size}")
        if num_workers < 0:
            raise DatasetError(f"data.num_workers must be >= 0, got {num_workers}")
        self.save_hyperparameters(logger=False)  # in config.yaml; not merged with the model's (two seeds)
        self.path, self.resolution, self.channels, self.seed = path, resolution, channels, seed
        self.batch_size, self.num_workers, self.xflip = batch_size, num_workers, xflip
        self.max_images, self.use_labels, self.on_error = max_images, use_labels, on_error
        self.max_image_mb, self.max_image_pixels = max_image_mb, max_image_pixels
        self.dataset: ImageDataset | None = None

    def _model(self) -> Any:
        return getattr(getattr(self, "trainer", None), "lightning_module", None)

    def setup(self, stage: str | None = None) -> None:
        """Build the data set (once) and check it against the model's resolution, channels and c_dim."""
        if self.dataset is not None:
            return
        model = self._model()
        resolution, channels = self.resolution, self.channels
        model_res, model_ch = getattr(model, "img_resolution", None), getattr(model, "img_channels", None)
        if model_res is not None:
            if resolution is None:
                resolution = int(model_res)
            elif int(resolution) != int(model_res):
                raise DatasetError(
                    f"data.resolution is {resolution} but the model generates {model_res}x{model_res} "
                    f"images; set data.resolution to {model_res} or leave it unset"
                )
        if model_ch is not None and int(model_ch) != channels:
            warnings.warn(
                f"data.channels is {channels} but the model has {model_ch} image channel(s); "
                f"loading images with {model_ch} channel(s)",
                stacklevel=2,
            )
            channels = int(model_ch)
        options = {name: getattr(self, name) for name in _DATASET_OPTIONS}
        self.dataset = _check_labels(ImageDataset(self.path, resolution, channels, **options), model)

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        """Shuffled (seeded) batches of ``(img uint8 [B, C, R, R], label float32 [B, c_dim])``."""
        self.setup("fit")  # a no-op when set up already
        assert self.dataset is not None
        n = len(self.dataset)
        if n < self.batch_size:
            flip = f" ({self.dataset.num_images} images x2 with xflip)" if self.xflip else ""
            raise DatasetError(
                f"the data set has only {n} training image(s){flip} under {self.path}, fewer than "
                f"data.batch_size={self.batch_size}; set data.batch_size to at most {n} "
                "(or add images / enable data.xflip)"
            )
        # Endless and resumable: a finetune is measured in images (kimg), not epochs. The start
        # position comes from the model's image counter, restored before the loader is built.
        rank, world = rank_world()
        consumed = int(getattr(self._model(), "cur_nimg", 0)) // world
        sampler = ResumableShuffleSampler(n, seed=self.seed, rank=rank, world=world, start=consumed)
        return torch.utils.data.DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            drop_last=True,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
        )


def _check_labels(dataset: ImageDataset, model: Any) -> ImageDataset:
    """``dataset``, checked to have the labels of a model that declares ``c_dim``."""
    model_c = getattr(model, "c_dim", None)
    if model_c is None:
        return dataset
    model_c = int(model_c)
    if model_c > 0 and not dataset.has_labels:
        raise DatasetError(
            f"the model is conditional (c_dim={model_c}) but the data set has no labels; set "
            "`data.use_labels: true` and provide a dataset.json with a label for every image"
        )
    if dataset.has_labels and dataset.c_dim != model_c:
        raise DatasetError(
            f"the data set's labels have c_dim={dataset.c_dim} but the model expects c_dim={model_c}"
            + ("; set `data.use_labels: false` for an unconditional model" if model_c == 0 else "")
        )
    return dataset


def _dataset_json_label(value: np.ndarray) -> int | list[float]:
    """NVIDIA's dataset.json label: a class index for one-hot rows, else the vector."""
    if value.size and np.count_nonzero(value) == 1 and value.max() == 1:
        return int(np.argmax(value))
    return [float(v) for v in value]


def write_dataset_zip(
    source: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    resolution: int,
    channels: int = 3,
    labels: bool = False,
    max_images: int | None = None,
    strict: bool = False,
    progress: bool = True,
) -> ImageDataset:
    """A training zip in NVIDIA's layout (``00000/img00000000.png``, 1000 per folder, ``dataset.json``
    with the labels of ``source`` when ``labels``) of every image of ``source`` read by the training rules
    (:class:`ImageDataset`); an unreadable image is skipped (``strict``: an error). Written atomically;
    returns the data set read (``skipped`` names the images left out)."""
    dest = Path(dest)
    if dest.suffix.lower() != ".zip":
        raise UserError(f"{dest}: the output must be a .zip file")
    if Path(source).resolve() == dest.resolve():
        raise UserError("the output zip cannot be the source")
    if dest.is_dir():
        raise UserError(f"{dest} is a folder: give the zip file to write, e.g. {dest / 'data.zip'}")
    ensure_writable_dir(dest.parent)  # before the images are read, not after
    on_error: Literal["raise", "skip"] = "raise" if strict else "skip"
    ds = ImageDataset(source, resolution, channels, labels, max_images=max_images, on_error=on_error)
    names = []
    try:
        with atomic_open(dest, "wb") as fh, zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_STORED) as zf:
            for i in tqdm(range(ds.num_images), desc="dataset", unit="img", disable=not progress):
                arr, buf = ds.load_image(i), io.BytesIO()
                Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr).save(buf, "PNG", compress_level=6)
                name = f"{i // 1000:05d}/img{i:08d}.png"
                zf.writestr(name, buf.getvalue())
                names.append([name, _dataset_json_label(ds.labels[i])])
            zf.writestr("dataset.json", json.dumps({"labels": names if ds.has_labels else None}))
    except OSError as err:  # the disk filled up, or the folder went away: the temp file is gone too
        raise UserError(f"cannot write {dest} ({err.strerror or err}); nothing was written") from None
    return ds
