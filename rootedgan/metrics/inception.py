"""NVIDIA's Inception torchscript (the network of both FID protocols): finding, loading, calling.

Where the file is looked for, in order:

1. an explicit path (``--inception PATH``, ``FIDCallback(inception=...)``);
2. ``$ROOTEDGAN_INCEPTION``;
3. ``$ROOTEDGAN_CACHE/networks/inception-2015-12-05.pt`` (default ``~/.cache/rootedgan/networks/``),
   where rootedgan downloads it;
4. ``/tmp/inception-2015-12-05.pt``, where clean-fid caches it.

When none exists it is downloaded into 3. (unless downloading is switched off); a machine without
internet gets a :class:`UserError` naming the URL and the places to put the file, never a traceback.
:func:`locate_inception` also says which of these places the file came from, and
:meth:`InceptionFeatures.describe` names the file, its sha256 and that origin (printed before every
evaluation: statistics made with another Inception file give meaningless FIDs).

:class:`InceptionFeatures` calls the file as clean-fid's ``InceptionV3W`` does, in one of two ways:

* ``resize_inside=False`` (clean-fid's ``clean`` mode and our ``fast`` mode): images already resized
  to 299x299, in [0, 255], are mapped with ``(x - 128) / 128`` and passed to ``model.layers``;
* ``resize_inside=True`` (clean-fid's ``legacy_tensorflow`` mode, which is what NVIDIA's own metric code
  does): images of any size, in [0, 255], go to the file's ``forward(x, return_features=True)``, which
  resizes them to 299x299 itself the way TensorFlow's original FID graph did (bilinear, no antialiasing).

Either way the output is viewed as ``[N, 2048]``.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F

from rootedgan.errors import DownloadError, UserError

__all__ = [
    "INCEPTION_ENV",
    "INCEPTION_FILENAME",
    "INCEPTION_URL",
    "InceptionFeatures",
    "InceptionFile",
    "file_digest",
    "inception_candidates",
    "load_inception",
    "locate_inception",
    "resolve_inception",
    "tf1_bilinear_resize",
]

INCEPTION_URL = (
    "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
)
INCEPTION_FILENAME = "inception-2015-12-05.pt"
INCEPTION_ENV = "ROOTEDGAN_INCEPTION"
CLEANFID_INCEPTION_PATH = Path("/tmp") / INCEPTION_FILENAME
FEATURE_DIM = 2048
INPUT_SIZE = 299

_digests: dict[tuple[str, int, int], str] = {}


def _cache_location() -> Path:
    from rootedgan.checkpoints.download import cache_path

    return cache_path(INCEPTION_URL)


def inception_candidates() -> list[Path]:
    """Where the file is looked for when no path is given (env var, rootedgan cache, clean-fid's /tmp)."""
    places = []
    env = os.environ.get(INCEPTION_ENV)
    if env:
        places.append(Path(env).expanduser())
    places += [_cache_location(), CLEANFID_INCEPTION_PATH]
    return places


def _missing_message(reason: str) -> str:
    return (
        f"{reason}. FID uses NVIDIA's Inception torchscript ({INCEPTION_FILENAME}, 95 MB). On a machine "
        f"without internet, download it elsewhere from {INCEPTION_URL} and either pass --inception PATH "
        f"(FIDCallback(inception=PATH)), set {INCEPTION_ENV}=PATH, or put it at {_cache_location()} "
        f"(rootedgan's cache) or {CLEANFID_INCEPTION_PATH} (clean-fid's cache)"
    )


class InceptionFile(NamedTuple):
    """A local Inception file and where it came from (for the line printed before an evaluation)."""

    path: Path
    origin: str


def locate_inception(path: str | os.PathLike[str] | None = None, download: bool = True) -> InceptionFile:
    """The local Inception torchscript file and its origin: ``path``, else the first existing candidate
    (module docstring), else downloaded. Raises :class:`UserError` (never a urllib traceback) when there is
    none and it cannot be fetched."""
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise UserError(_missing_message(f"the Inception file {p} does not exist"))
        return InceptionFile(p, "given explicitly")
    env = os.environ.get(INCEPTION_ENV)
    if env and not Path(env).expanduser().is_file():
        raise UserError(_missing_message(f"{INCEPTION_ENV}={env} does not exist"))
    if env:
        return InceptionFile(Path(env).expanduser(), f"from ${INCEPTION_ENV}")
    for candidate, origin in (
        (_cache_location(), "found in rootedgan's cache"),
        (CLEANFID_INCEPTION_PATH, "found in clean-fid's cache"),
    ):
        if candidate.is_file():
            return InceptionFile(candidate, origin)
    if not download:
        raise UserError(_missing_message("the Inception network was not found and downloading is off"))
    from rootedgan.checkpoints.download import download as fetch

    try:
        return InceptionFile(fetch(INCEPTION_URL), f"downloaded from {INCEPTION_URL}")
    except DownloadError as err:
        raise UserError(_missing_message(f"the Inception network could not be downloaded ({err})")) from None
    except Exception as err:  # anything else urllib/http may raise: still no traceback
        raise UserError(_missing_message(f"the Inception network could not be downloaded ({err})")) from None


def resolve_inception(path: str | os.PathLike[str] | None = None, download: bool = True) -> Path:
    """The local Inception torchscript file (:func:`locate_inception`, without the origin)."""
    return locate_inception(path, download).path


def file_digest(path: str | os.PathLike[str]) -> str:
    """sha256 of a file, remembered per (path, size, mtime) for this process."""
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _digests:
        h = hashlib.sha256()
        with open(p, "rb") as fh:
            while block := fh.read(1 << 20):
                h.update(block)
        _digests[key] = h.hexdigest()
    return _digests[key]


class InceptionFeatures(torch.nn.Module):
    """The torchscript called as clean-fid calls it: ``[N, 3, H, W]`` in [0, 255] -> ``[N, 2048]`` float32.

    ``resize_inside=False``: inputs must be 299x299 (resized beforehand) and go to ``layers``.
    ``resize_inside=True``: inputs of any size go (as float32) to the file's ``forward(x,
    return_features=True)``, which resizes them (NVIDIA's / TensorFlow's protocol). ``dtype`` other than
    float32 (bf16 for the fast path; not with ``resize_inside``) casts the network and its input.
    ``path``, ``digest`` (sha256) and ``origin`` identify the file (:meth:`describe`).
    """

    def __init__(
        self,
        script: torch.jit.ScriptModule,
        digest: str,
        dtype: torch.dtype = torch.float32,
        resize_inside: bool = False,
        path: str | os.PathLike[str] | None = None,
        origin: str = "",
    ) -> None:
        super().__init__()
        if resize_inside and dtype != torch.float32:
            raise UserError(
                "the Inception file's own resize (legacy_tensorflow protocol) runs in float32 only"
            )
        self.base = script
        self.layers = script.layers
        self.digest = digest
        self.dtype = dtype
        self.resize_inside = bool(resize_inside)
        self.path = None if path is None else str(path)
        self.origin = origin
        if dtype != torch.float32:
            self.base.to(dtype)

    def describe(self) -> str:
        """``'PATH (sha256 HEX, ORIGIN)'``, the line printed before an evaluation."""
        origin = f", {self.origin}" if self.origin else ""
        return f"{self.path or '(in memory)'} (sha256 {self.digest}{origin})"

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if self.resize_inside:
            if x.ndim != 4 or x.shape[1] != 3:
                raise ValueError(f"expected [N, 3, H, W] inputs, got {list(x.shape)}")
            # clean-fid's InceptionV3W(resize_inside=True): the file's own forward with its own resize
            return self.base(x.to(torch.float32), return_features=True).view((n, FEATURE_DIM))
        if tuple(x.shape[1:]) != (3, INPUT_SIZE, INPUT_SIZE):
            raise ValueError(f"expected [N, 3, {INPUT_SIZE}, {INPUT_SIZE}] inputs, got {list(x.shape)}")
        x1 = x - 128  # the same two operations as clean-fid's InceptionV3W
        x2 = x1 / 128
        if self.dtype == torch.float32:
            return self.layers.forward(x2).view((n, FEATURE_DIM))
        try:
            return self.layers.forward(x2.to(self.dtype)).view((n, FEATURE_DIM)).float()
        except RuntimeError as err:
            raise UserError(
                f"the Inception network does not run in {self.dtype} here ({err}); use float32 (no --bf16)"
            ) from None


def load_inception(
    path: str | os.PathLike[str] | None = None,
    device: torch.device | str = "cpu",
    download: bool = True,
    dtype: torch.dtype = torch.float32,
    resize_inside: bool = False,
) -> InceptionFeatures:
    """Find (:func:`locate_inception`), load and wrap the Inception torchscript on ``device``."""
    file, origin = locate_inception(path, download=download)
    try:
        with warnings.catch_warnings():  # NVIDIA's file is TorchScript, whatever torch thinks of it
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.* is deprecated")
            script = torch.jit.load(str(file), map_location=torch.device(device)).eval()
    except Exception as err:
        raise UserError(
            f"cannot load the Inception torchscript {file}: {err}. It should be {INCEPTION_FILENAME} "
            f"from {INCEPTION_URL}; delete a damaged copy and fetch it again"
        ) from None
    if not hasattr(script, "layers"):
        raise UserError(f"{file} is not NVIDIA's Inception torchscript (it has no `layers` sub-network)")
    return InceptionFeatures(
        script, file_digest(file), dtype=dtype, resize_inside=resize_inside, path=file, origin=origin
    )


def tf1_bilinear_resize(x: torch.Tensor, size: int = INPUT_SIZE) -> torch.Tensor:
    """TensorFlow 1's ``resize_bilinear`` (``align_corners=False``, no half-pixel centres) of ``[N, C, H, W]``
    float images to ``size x size``, with ``grid_sample``, as NVIDIA's Inception file resizes inside.

    Output pixel ``i`` reads the input at ``i * H / size`` (not at ``(i + 0.5) * H / size - 0.5`` as
    ``F.interpolate`` does), bilinearly, clamped at the border; no antialiasing, so downscaling aliases.
    With ``grid_sample(align_corners=False)`` a normalised coordinate ``g`` is the pixel ``((g + 1) W -
    1) / 2``; an identity ``affine_grid`` gives ``g_i = (2 i + 1) / size - 1``, so shifting it by
    ``1 / W - 1 / size`` lands exactly on ``i W / size``.
    """
    n, c, h, w = x.shape
    theta = torch.zeros([n, 2, 3], dtype=x.dtype, device=x.device)
    theta[:, 0, 0] = 1.0
    theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = 1.0 / w - 1.0 / size
    theta[:, 1, 2] = 1.0 / h - 1.0 / size
    grid = F.affine_grid(theta, [n, c, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
