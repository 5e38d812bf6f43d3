"""NVIDIA's Inception torchscript (the network of every FID protocol): finding, loading, calling.

Its path, sha256 and origin are printed before every evaluation (:meth:`InceptionFeatures.describe`).

:class:`InceptionFeatures` calls the file as clean-fid's ``InceptionV3W`` does: images resized to 299x299
beforehand (``clean``, ``fast``) are mapped with ``(x - 128) / 128`` and go to ``model.layers``; with
``resize_inside`` (``legacy_tensorflow``, as NVIDIA's metric code) images of any size go to the file's
``forward(x, return_features=True)``, which resizes them as TensorFlow's FID graph did.
"""

from __future__ import annotations

import os
import stat
import warnings
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F

import rootedgan.checkpoints.download as downloads
from rootedgan.errors import UserError

INCEPTION_URL = (
    "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
)
INCEPTION_FILENAME = "inception-2015-12-05.pt"
INCEPTION_ENV = "ROOTEDGAN_INCEPTION"
CLEANFID_INCEPTION_PATH = Path("/tmp") / INCEPTION_FILENAME
FEATURE_DIM = 2048
INPUT_SIZE = 299

_digests: dict[tuple[str, int, int], str] = {}


def _missing_message(reason: str) -> str:
    return (
        f"{reason}. FID uses NVIDIA's Inception torchscript ({INCEPTION_FILENAME}, 95 MB). On a machine "
        f"without internet, download it elsewhere from {INCEPTION_URL} and either pass --inception PATH "
        f"(FIDCallback(inception=PATH)), set {INCEPTION_ENV}=PATH, or put it at "
        f"{downloads.cache_path(INCEPTION_URL)} (rootedgan's cache) or {CLEANFID_INCEPTION_PATH} "
        "(clean-fid's cache)"
    )


class InceptionFile(NamedTuple):
    """A local Inception file and where it came from (for the line printed before an evaluation)."""

    path: Path
    origin: str


def _check_shared_folder(path: Path) -> None:
    """A file found (not given) in a folder anyone may write to, such as clean-fid's ``/tmp``, must be the
    user's own: anyone could have planted it there."""
    st, folder = path.stat(), path.parent.stat()
    if folder.st_mode & stat.S_IWOTH and st.st_uid != os.getuid():
        raise UserError(
            f"{path} is in a folder anyone can write to and belongs to user id {st.st_uid}, not to you: it "
            "is not used (anyone could have planted it). Check it and pass --inception PATH, or set "
            f"{INCEPTION_ENV}"
        )


def locate_inception(path: str | os.PathLike[str] | None = None, download: bool = True) -> InceptionFile:
    """The local Inception torchscript file and its origin: ``path``, else ``$ROOTEDGAN_INCEPTION``, else in
    rootedgan's cache or clean-fid's ``/tmp``, else downloaded; else a :class:`UserError` naming them all."""
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
        (downloads.cache_path(INCEPTION_URL), "found in rootedgan's cache"),
        (CLEANFID_INCEPTION_PATH, "found in clean-fid's cache"),
    ):
        if candidate.is_file():
            _check_shared_folder(candidate)
            return InceptionFile(candidate, origin)
    if not download:
        raise UserError(_missing_message("the Inception network was not found and downloading is off"))
    try:
        return InceptionFile(downloads.download(INCEPTION_URL), f"downloaded from {INCEPTION_URL}")
    except Exception as err:  # a DownloadError, or anything else urllib/http may raise: no traceback
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
        _digests[key] = downloads.sha256_of(p)
    return _digests[key]


class InceptionFeatures(torch.nn.Module):
    """The torchscript called as clean-fid calls it (module docstring): ``[N, 3, H, W]`` in [0, 255] ->
    ``[N, 2048]`` float32. ``dtype`` other than float32 (bf16, fast mode only) casts the network and its
    input; ``path``, ``digest`` (sha256) and ``origin`` identify the file."""

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
        self.base, self.layers, self.digest, self.origin = script, script.layers, digest, origin
        self.not_nvidia = not_nvidias(script)  # why this is not NVIDIA's file ("" when it is)
        self.dtype, self.resize_inside = dtype, bool(resize_inside)
        self.path = None if path is None else str(path)
        if dtype != torch.float32:
            self.base.to(dtype)

    def describe(self) -> str:
        """``'PATH (sha256 HEX, ORIGIN)'``, the line printed before an evaluation; a file that is not NVIDIA's
        says so loudly."""
        origin = f", {self.origin}" if self.origin else ""
        text = f"{self.path or '(in memory)'} (sha256 {self.digest}{origin})"
        if self.not_nvidia:
            text += f"\nWARNING: NOT NVIDIA's Inception ({self.not_nvidia}): these FIDs are NOT comparable"
        return text

    @property
    def label(self) -> str:
        """How the FIDs it gives are named in summaries."""
        return "not NVIDIA's Inception: not comparable" if self.not_nvidia else "Inception"

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
        x2 = (x - 128) / 128  # the same two operations as clean-fid's InceptionV3W
        if self.dtype == torch.float32:
            return self.layers.forward(x2).view((n, FEATURE_DIM))
        try:
            return self.layers.forward(x2.to(self.dtype)).view((n, FEATURE_DIM)).float()
        except RuntimeError as err:
            raise UserError(
                f"the Inception network does not run in {self.dtype} here ({err}); use float32 (no --bf16)"
            ) from None


def not_nvidias(script: torch.nn.Module) -> str:
    """Why a torchscript is not NVIDIA's Inception file, or "" when its structure is. No sha256 of the
    file is published, so its structure is checked: the TensorFlow graph's 1008-class ``output`` layer on
    2048 features, about 24 M parameters, and a ``forward`` that takes ``return_features`` and
    ``no_output_bias`` (NVIDIA's metrics call both)."""
    output = getattr(script, "output", None)
    weight = getattr(output, "weight", None)
    params = sum(p.numel() for p in script.parameters())
    forward = getattr(script, "forward", None)
    schema = getattr(forward, "schema", None)
    arguments = {a.name for a in schema.arguments} if schema is not None else set()
    if weight is None or tuple(weight.shape) != (1008, FEATURE_DIM):
        return "no 1008 x 2048 output layer"
    if not 20_000_000 < params < 30_000_000:
        return f"{params:,} parameters, not Inception-v3's about 24 M"
    if not {"return_features", "no_output_bias"} <= arguments:
        return "its forward does not take return_features and no_output_bias"
    return ""


def load_inception(
    path: str | os.PathLike[str] | InceptionFile | None = None,
    device: torch.device | str = "cpu",
    download: bool = True,
    dtype: torch.dtype = torch.float32,
    resize_inside: bool = False,
) -> InceptionFeatures:
    """Find (:func:`locate_inception`, unless ``path`` is an :class:`InceptionFile` already), load and wrap
    the Inception torchscript on ``device``."""
    file, origin = path if isinstance(path, InceptionFile) else locate_inception(path, download=download)
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
    shift = [[1.0, 0.0, 1.0 / w - 1.0 / size], [0.0, 1.0, 1.0 / h - 1.0 / size]]
    theta = torch.tensor(shift, dtype=x.dtype, device=x.device).repeat(n, 1, 1)
    grid = F.affine_grid(theta, [n, c, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
